"""A real adversarial training process for tests/test_adversarial.py, to be SIGKILLed and resumed.

    python tests/adversarial_worker.py METHOD CHECKPOINT OUT LOG [--stall-epoch E]

METHOD is ``gan`` (GANKD, 2 D updates per student step) or ``wgan`` (WGANKD with the gradient
penalty, whose random points draw from the RNG that the checkpoint must restore). The student
trains on resume_worker's tiny data with ``fit(..., checkpoint=CHECKPOINT)``; each epoch started
is appended to LOG as ``pid epoch E``; with ``--stall-epoch E`` it appends ``pid stall E`` at
step STALL_STEP of epoch E (after student and player steps the last checkpoint lacks) and waits
to be killed. A run that ends saves the student's and the method's final state and the history
to OUT.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from resume_worker import Stalls, stalls, toy_data  # noqa: E402

from kdnb import models, store, train  # noqa: E402
from kdnb.methods import GANKD, WGANKD  # noqa: E402

EPOCHS, BATCH = 4, 32  # it stalls at resume_worker's STALL_STEP
SPEC = {"name": "mlp", "hidden": [32]}


class StallingGAN(Stalls, GANKD):
    pass


class StallingWGAN(Stalls, WGANKD):
    pass


def method(name, teacher, classes):
    if name == "gan":
        return StallingGAN(teacher, classes, alpha=0.5, steps=2, smooth=0.1, seed=3)
    return StallingWGAN(teacher, classes, alpha=0.1, lipschitz="gp", seed=3)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("method", choices=["gan", "wgan"])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--stall-epoch", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # same float summation order in every process
    data = toy_data()
    teacher = models.build(SPEC, data.shape, data.classes, seed=1)
    m = method(args.method, teacher, data.classes)
    stalls(m, args.log, args.stall_epoch)
    model = models.build(SPEC, data.shape, data.classes, seed=0)
    history = train.fit(model, data, m, epochs=EPOCHS, batch_size=BATCH, lr=1e-2, seed=0,
                        checkpoint=args.checkpoint, progress=False)  # device: $KDNB_DEVICE
    store.save({"state": model.state_dict(), "method": m.state_dict(), "history": history}, Path(args.out))


if __name__ == "__main__":
    main()
