"""Shared test set-up: a private kdnb cache and data folder per test session, no progress bars,
one thread (the CI machine has two cores shared with other jobs)."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread beats two that wait on each other


@pytest.fixture(autouse=True, scope="session")
def kdnb_env(tmp_path_factory):
    """Point $KDNB_CACHE and $KDNB_DATA at fresh folders so tests never read or write the user's
    cache or data sets; the cache is shared within the session so mnist1d is generated once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDNB_CACHE", str(tmp_path_factory.mktemp("kdnb-cache")))
        mp.setenv("KDNB_DATA", str(tmp_path_factory.mktemp("kdnb-data")))
        mp.setenv("KDNB_PROGRESS", "0")
        mp.delenv("KDNB_DEVICE", raising=False)
        mp.delenv("KDNB_PROFILE", raising=False)
        mp.delenv("KDNB_SEED_OFFSET", raising=False)  # the book's runs take them; unit tests state theirs
        mp.delenv("KDNB_THREADS", raising=False)
        yield


@pytest.fixture(scope="session")
def digits():
    from kdnb import data
    return data.load("digits")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder for tests that count what gets computed."""
    path = tmp_path / "cache"
    monkeypatch.setenv("KDNB_CACHE", str(path))
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_terminal_summary(terminalreporter):
    """The last lines of `make test` when a chapter failed under nbval: the chapter, the cell, the
    line and the error, and what it means (book/_ext/kdnb_failures.py), after pytest's own summary."""
    yield
    failed = [r for r in terminalreporter.stats.get("failed", []) if r.nodeid.endswith(tuple(
        f"Cell {i}" for i in range(1000)))]
    if not failed:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
    try:
        failures = importlib.import_module("kdnb_failures")
    finally:
        sys.path.pop(0)
    terminalreporter.write_sep("=", "chapters that failed")
    for r in failed:
        notebook, _, cell = r.nodeid.partition("::")
        chapter = "book/" + Path(notebook).with_suffix(".md").name
        f = failures.failure(r.longreprtext, chapter=f"{chapter} ({cell})") or {
            "chapter": chapter, "cell": None, "line": None, "error": None, "claim": False}
        terminalreporter.write_line(failures.explain(f, "make test"))
