"""The install: pyproject.toml, environment.yml and the Makefile agree; the build settings the
issue relies on are in place; the `kdnb` console script runs."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def name_of(requirement):
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def pins(requirements):
    """{name: requirement} for the pinned (==) requirements."""
    return {name_of(r): r.replace(" ", "") for r in requirements if "==" in r}


def test_pyproject_declares_package_extras_and_script(pyproject):
    project = pyproject["project"]
    assert project["name"] == "kdnb"
    assert project["requires-python"] == ">=3.11"
    deps = {name_of(d): d.replace(" ", "") for d in project["dependencies"]}
    assert deps["torch"] == "torch==2.14.1" and deps["torchvision"] == "torchvision==0.29.1"
    extras = project["optional-dependencies"]
    book = {name_of(d): d.replace(" ", "") for d in extras["book"]}
    assert book["jupyter-book"] == "jupyter-book>=1.0.4,<2"
    assert {"jupyter-book", "jupyterlab", "jupytext", "ipywidgets", "matplotlib"} <= set(book)
    assert {"pytest", "nbval"} <= {name_of(d) for d in extras["test"]}
    assert project["scripts"]["kdnb"] == "kdnb.book.cli:main"


def test_environment_yml_matches_pyproject(environment, pyproject):
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "python=3.11" in conda and "pip" in conda
    # The project itself, editable, with the same extras the Makefile installs.
    editable = [p for p in pip if p.startswith("-e")]
    assert editable == ["-e .[book,test]"]
    assert set(re.search(r"\[(.*)\]", editable[0]).group(1).split(",")) <= set(pyproject["project"]["optional-dependencies"])
    # Every other pip line is a dependency of pyproject, pinned the same way (the torch pins).
    others = [p for p in pip if not p.startswith("-e")]
    project_deps = {name_of(d): d.replace(" ", "") for d in pyproject["project"]["dependencies"]}
    for requirement in others:
        assert project_deps.get(name_of(requirement)) == requirement.replace(" ", ""), requirement
    assert pins(others) == pins(pyproject["project"]["dependencies"])
    # conda's Python satisfies requires-python.
    from packaging.specifiers import SpecifierSet
    assert "3.11" in SpecifierSet(pyproject["project"]["requires-python"])


def test_makefile_installs_the_same_pins(pyproject):
    makefile = (ROOT / "Makefile").read_text()
    install = next(line for line in makefile.splitlines() if "pip install" in line and "-e" in line)
    for requirement in pins(pyproject["project"]["dependencies"]).values():
        assert requirement in install, requirement
    assert "'.[book,test]'" in install or ".[book,test]" in install


def test_book_build_settings():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["only_build_toc_files"] is True
    assert config["sphinx"]["config"]["nb_execution_raise_on_error"] is True
    assert (ROOT / "_toc.yml").exists()
    jupytext = tomllib.loads((ROOT / "jupytext.toml").read_text())
    assert jupytext["cell_metadata_filter"] == "tags,-all"
    makefile = (ROOT / "Makefile").read_text()
    assert "-W --keep-going" in makefile
    assert "--nbval-lax" in makefile and "--nbval-current-env" in makefile


@pytest.mark.parametrize("make_exit, ci_ok", [(0, True), (1, False), (2, False), (5, False)])
def test_ci_passes_only_when_make_test_passes(tmp_path, make_exit, ci_ok):
    # A stand-in `make` that exits like `make test` would (5: pytest collected no test).
    (tmp_path / "make").write_text(f"#!/bin/sh\necho \"make $*\"\nexit {make_exit}\n")
    (tmp_path / "make").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60)
    assert "make test" in done.stdout
    assert (done.returncode == 0) == ci_ok, done.stdout + done.stderr


def kdnb_command():
    script = Path(sys.executable).parent / "kdnb"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kdnb.book.cli"]


def test_kdnb_help_runs():
    done = subprocess.run(kdnb_command() + ["--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: kdnb" in done.stdout
    for command in ("list", "download", "cache"):
        assert command in done.stdout


def test_kdnb_cli_in_process(capsys, tmp_path, monkeypatch):
    from kdnb import data
    from kdnb.book import cli
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in data.NAMES) and "profile quick" in out
    monkeypatch.setenv("KDNB_CACHE", str(tmp_path))
    assert cli.main(["cache"]) == 0
    assert str(tmp_path) in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["download", "imagenet"])
    assert exit_.value.code == 2
    assert "name must be one of mnist" in capsys.readouterr().err
