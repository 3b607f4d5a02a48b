"""Run profiles. ``quick`` (the default) runs every chapter on this laptop-class CPU in about
90 s on the embedded data; ``full`` runs the seeds' data sets at their scale and wants a GPU.
Chosen by ``$KDNB_PROFILE``."""
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    data: str                 # the chapters' default data set
    teacher: dict             # model spec of the default teacher
    student: dict             # model spec of the default student
    epochs: int               # student epochs
    teacher_epochs: int
    batch_size: int
    lr: float
    seeds: tuple = (0, 1, 2)
    threads: int = 1          # CPU threads: the quick models are too small to gain from more
    extra: dict = field(default_factory=dict)


PROFILES = {
    "quick": Profile(
        name="quick", data="mnist1d",
        teacher={"name": "convnet", "depth": 4, "width": 32, "hidden": 128},
        student={"name": "mlp", "hidden": [128]},
        epochs=20, teacher_epochs=30, batch_size=128, lr=3e-3,
        extra={"transfer_set": 10000}),
    "full": Profile(
        name="full", data="mnist",
        teacher={"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5},
        student={"name": "mlp", "hidden": [800, 800]},
        epochs=60, teacher_epochs=60, batch_size=128, lr=1e-3, threads=8,
        # seed 001 exp 1: 1 conv + 4 FC teacher (1,422,378 parameters) → 1 conv + 2 FC student (693,962)
        extra={"seed001_teacher": {"name": "conv_mlp", "hidden": [256, 128, 32]},
               "seed001_student": {"name": "conv_mlp", "hidden": [128]},
               # seed 001 exp 2 (the α × T grid): ResNet-18 → 6 conv (BN) + 2 FC on CIFAR-10, trained
               # as the report did: SGD, a decaying learning rate, augmentation (crops and flips).
               "seed001_cifar": {
                   "data": "cifar10", "teacher": {"name": "resnet18_cifar"}, "student": {"name": "cifar_cnn"},
                   "teacher_fit": {"epochs": 60, "batch_size": 128, "lr": 0.1, "optimizer": "sgd",
                                   "weight_decay": 5e-4, "schedule": "cosine", "augment": True},
                   "student_fit": {"epochs": 30, "batch_size": 128, "lr": 0.05, "optimizer": "sgd",
                                   "weight_decay": 5e-4, "schedule": "cosine", "augment": True}}}),
}


def get(name=None):
    """The profile ``name``, else ``$KDNB_PROFILE``, else ``quick``; a Profile is returned as is."""
    if isinstance(name, Profile):
        return name
    name = name or os.environ.get("KDNB_PROFILE") or "quick"
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)} (from KDNB_PROFILE or the "
                         f"argument), got {name!r}")
    return PROFILES[name]
