"""A real rank of a ``torchrun`` run, for tests/test_distributed.py (also run as one process,
without torchrun, for the references).

    torchrun --nproc_per_node=2 tests/ddp_worker.py OUT MODE...

Modes: ``ce`` (cross-entropy, augmentation, cosine schedule), ``gan`` (GANKD: a player with its
own optimiser), ``wgan`` (WGANKD with a gradient penalty: random points per rank), ``hint`` (FitNets with a live teacher and a regressor), ``trained`` (the cached form, twice), ``bad`` (a global batch the world size does not divide), ``stall`` (``ce``
with a checkpoint in ``OUT/run.ckpt``: rank 0 stops mid-epoch 1, after steps the checkpoint does
not hold, notes it in ``OUT/notes`` and waits to be killed) and ``resume`` (``ce`` from that
checkpoint). Each rank saves what it ended with to ``OUT/MODE.rank{R}.pt``.
"""
import argparse
import os
import time
from pathlib import Path

import torch

from kdnb import cached, device, models, store, train
from kdnb.data import Data
from kdnb.methods import GANKD, WGANKD, CrossEntropy, Hint
from kdnb.teachers import TeacherCache

# 100 samples in global batches of 32: three full batches, then 4 (2 per rank), so the short
# last batch's weighting is exercised.
EPOCHS, BATCH, STALL_STEP = 3, 32, 2
STUDENT, TEACHER = {"name": "mlp", "hidden": [16]}, {"name": "mlp", "hidden": [32]}
FIT = dict(epochs=EPOCHS, batch_size=BATCH, lr=1e-2, progress=False)


def toy_data(seed=0, n=150, classes=4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 1, 8, 8, generator=g)
    y = torch.arange(n) % classes
    x = centers[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g)
    return Data("toy", x[:100], y[:100], x[100:130], y[100:130], x[130:], y[130:], classes, (1, 8, 8))


class Stalling(CrossEntropy):
    def __init__(self, log=None, stall_epoch=None):
        super().__init__()
        self._log, self._stall, self._epoch, self._step = log, stall_epoch, 0, 0  # runtime: not described

    def start_epoch(self, epoch, epochs):
        self._epoch, self._step = epoch, 0
        if self._log and device.is_main():
            with open(self._log, "a") as f:
                f.write(f"epoch {epoch}\n")

    def losses(self, logits, batch):
        if self._epoch == self._stall and self._step == STALL_STEP and device.is_main():
            with open(self._log, "a") as f:
                f.write(f"stall {self._epoch}\n")
            time.sleep(600)  # killed here
        self._step += 1
        return super().losses(logits, batch)


def method_for(mode, data, log=None, stall_epoch=None):
    teacher = models.build(TEACHER, data.shape, data.classes, seed=1)
    if mode == "ce":
        return Stalling(log, stall_epoch)
    if mode == "gan":
        return GANKD(TeacherCache.compute(teacher, data.x_train), classes=data.classes, hidden=8)
    if mode == "wgan":  # the gradient penalty differentiates twice, outside DDP
        return WGANKD(TeacherCache.compute(teacher, data.x_train), classes=data.classes, hidden=8)
    return Hint(teacher, hint="2", guided="2", stage=None, weight=0.5)


def run(mode, out, checkpoint=None, log=None, stall_epoch=None):
    """Train ``mode`` and save what this rank ends with to ``out``."""
    data = toy_data()
    if mode == "bad":
        try:
            train.fit(models.build(STUDENT, data.shape, data.classes, seed=0), data, **{**FIT, "batch_size": 33})
            Path(out).write_text("no error")
        except ValueError as err:
            Path(out).write_text(str(err))
        return
    if mode == "trained":  # each rank its own cache folder: only rank 0's may fill
        os.environ["KDNB_CACHE"] = str(Path(out).parent / f"cache.rank{device.launched().rank}")
        first, h1 = cached.trained(STUDENT, data, seed=0, **FIT)
        again, h2 = cached.trained(STUDENT, data, seed=0, **FIT)  # served from rank 0's entry
        store.save({"first": first.state_dict(), "again": again.state_dict(), "h1": h1, "h2": h2}, out)
        return
    model = models.build(STUDENT, data.shape, data.classes, seed=0)
    method = method_for(mode, data, log, stall_epoch)
    history = train.fit(model, data, method, seed=0, augment=mode == "ce", schedule="cosine",
                        checkpoint=checkpoint, **FIT)
    store.save({"state": model.state_dict(), "method": method.state_dict(), "history": history}, out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("modes", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same float summation order in every process
    from ddp_worker import run  # this module by its name, not __main__: methods are described by it
    out, rank = Path(args.out), device.launched().rank
    with open(out / "pids", "a") as f:  # torchrun starts each rank in its own session: the test kills them by pid
        f.write(f"{os.getpid()}\n")
    for mode in args.modes:
        if mode in ("stall", "resume"):  # ce with a checkpoint; "stall" waits mid-epoch 1 to be killed
            run("ce", out / f"{mode}.rank{rank}.pt", out / "run.ckpt", out / "notes", 1 if mode == "stall" else None)
        else:
            run(mode, out / f"{mode}.rank{rank}.pt")


if __name__ == "__main__":
    main()
