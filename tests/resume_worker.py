"""A real training process for tests/test_resume.py, to be SIGKILLed and resumed.

    python tests/resume_worker.py CHECKPOINT OUT LOG [--stall-epoch E]

Trains a small MLP (dropout, augmentation, cosine schedule: every kind of state a resume must
restore) on tiny synthetic data with ``fit(..., checkpoint=CHECKPOINT)``. Every epoch it starts
is appended to LOG as ``pid epoch``. With ``--stall-epoch E`` it appends ``pid stall E`` at step
STALL_STEP of epoch E — after optimizer steps the last checkpoint does not hold — and waits there
to be killed. A run that ends saves the final weights and history to OUT.
"""
import argparse
import os
import time
from pathlib import Path

import torch

from kdnb import store, models, train
from kdnb.data import Data
from kdnb.methods import CrossEntropy

EPOCHS, BATCH, STALL_STEP = 6, 32, 2
SPEC = {"name": "mlp", "hidden": [32], "dropout": 0.3}


def toy_data(seed=0, n=192, classes=4):
    """Gaussian blobs shaped like tiny images, so augmentation applies."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 1, 8, 8, generator=g)
    y = torch.arange(n) % classes
    x = centers[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g)
    a, b = n * 2 // 3, n * 5 // 6
    return Data("toy", x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], classes, (1, 8, 8))


class Stalls:
    """Mixed into a method: logs each epoch, stalls mid-epoch when told. Its fields are private
    (runtime state, not part of the method's description: the resumed run stalls nowhere);
    ``stalls(method, log, stall_epoch)`` sets them. tests/adversarial_worker.py mixes it in too."""

    def note(self, text):
        with open(self._log, "a") as f:
            f.write(f"{os.getpid()} {text}\n")
            f.flush()
            os.fsync(f.fileno())

    def start_epoch(self, epoch, epochs):
        self._epoch, self._step = epoch, 0
        self.note(f"epoch {epoch}")

    def losses(self, logits, batch):
        if self._epoch == self._stall_epoch and self._step == STALL_STEP:
            self.note(f"stall {self._epoch}")
            time.sleep(600)  # killed here, mid-epoch
        self._step += 1
        return super().losses(logits, batch)


def stalls(method, log, stall_epoch=None):
    method._log, method._stall_epoch, method._epoch, method._step = log, stall_epoch, 0, 0
    return method


class LoggedCrossEntropy(Stalls, CrossEntropy):
    def __init__(self, log, stall_epoch=None):
        super().__init__()
        stalls(self, log, stall_epoch)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--stall-epoch", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # same float summation order in every process
    data = toy_data()
    model = models.build(SPEC, data.shape, data.classes, seed=0)
    history = train.fit(model, data, LoggedCrossEntropy(args.log, args.stall_epoch), epochs=EPOCHS,
                        batch_size=BATCH, lr=1e-2, schedule="cosine", augment=True, seed=0,
                        checkpoint=args.checkpoint or None, progress=False)  # device: $KDNB_DEVICE
    store.save({"state": model.state_dict(), "history": history}, Path(args.out))


if __name__ == "__main__":
    main()
