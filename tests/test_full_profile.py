"""Every chapter's cells, run unchanged in the full profile on tiny MNIST and CIFAR-10 files in
their real on-disk formats, one epoch of everything (``KDNB_SMOKE=1``): the code path a GPU reader
takes runs here, without a GPU. The claims' asserts belong to the quick profile and are skipped."""
import importlib
from pathlib import Path

import matplotlib
import pytest

from test_data import existence_only, tiny_images, write_cifar10, write_mnist_like

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted(p for p in BOOK.glob("*.md") if p.read_text().startswith("---\njupytext:"))


@pytest.fixture
def full_profile(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_mnist_like(root, "MNIST", tiny_images(80, 1, 28, 28, 0, 250, seed=1), tiny_images(30, 1, 28, 28, 0, 250, seed=2))
    write_cifar10(root, tiny_images(40, 3, 32, 32, 0, 250, seed=3), tiny_images(12, 3, 32, 32, 0, 250, seed=4))
    existence_only(monkeypatch, importlib.import_module("torchvision.datasets.cifar"))  # tiny files, no MD5 match
    for k, v in {"KDNB_PROFILE": "full", "KDNB_SMOKE": "1", "KDNB_DATA": str(root), "KDNB_DEVICE": "cpu",
                 "KDNB_CACHE": str(tmp_path / "cache"), "KDNB_PROGRESS": "0"}.items():
        monkeypatch.setenv(k, v)
    matplotlib.use("Agg")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_in_the_full_profile(chapter, full_profile):
    import jupytext
    import matplotlib.pyplot as plt
    import torch
    threads = torch.get_num_threads()
    namespace = {}
    try:
        for i, cell in enumerate(c for c in jupytext.read(chapter).cells if c.cell_type == "code"):
            exec(compile(cell.source, f"{chapter.name}, code cell {i}", "exec"), namespace)
        assert namespace["profile"].name == "full"
    finally:
        plt.close("all")
        torch.set_num_threads(threads)  # the full profile asks for 8
