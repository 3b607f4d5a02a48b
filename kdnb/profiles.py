"""Run profiles. ``quick`` (the default) runs every chapter on this laptop-class CPU in about
90 s on the embedded data; ``full`` runs the seeds' data sets at their scale and wants a GPU.
Chosen by ``$KDNB_PROFILE``."""
import math
import os
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Profile:
    name: str
    data: str                 # the chapters' default data set
    teacher: dict             # model spec of the default teacher
    student: dict             # model spec of the default student
    epochs: int               # student epochs on the labelled training split
    teacher_epochs: int
    batch_size: int
    lr: float                 # the students'
    teacher_lr: float
    seeds: tuple = (0, 1, 2)
    # CPU threads, fixed: never chosen from the machine's load, since a reduction split over 2
    # threads rounds differently from one over 1, and over thousands of steps the students differ.
    # $KDNB_THREADS overrides it (the cache keys training by the thread count it ran on).
    threads: int = 1
    seed_offset: int = 0      # $KDNB_SEED_OFFSET: added to every seed a chapter uses (seed())
    transfer_set: int = 0     # unlabeled inputs a teacher labels: fresh signals (MNIST-1D) or, for image
    labelled_fraction: float = 1.0  # sets, the training images beyond a labelled fraction
    extra: dict = field(default_factory=dict)

    def seed(self, s=0):
        """Seed ``s`` of a chapter, shifted by the profile's ``seed_offset`` ($KDNB_SEED_OFFSET): a
        teacher's, a student's, a drawn split's. With an offset the whole book reruns on fresh
        draws, which is how its claims are checked to replicate."""
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seed must be a non-negative integer, got {s!r}")
        return self.seed_offset + s

    def seed_list(self, n):
        """``n`` student seeds: ``seed(0) … seed(n − 1)``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an integer >= 2 (paired comparisons need two seeds), got {n!r}")
        return tuple(self.seed(i) for i in range(n))

    def steps(self, n_labelled):
        """The students' step budget: ``epochs`` over the labelled split. Every student of a
        comparison gets it, whatever its training set (:func:`epochs_for`)."""
        return self.epochs * math.ceil(n_labelled / self.batch_size)


def epochs_for(n_train, steps, batch_size):
    """Whole epochs over ``n_train`` samples in batches of ``batch_size`` closest to ``steps``
    steps (at least one): how students on training sets of different sizes are step-matched."""
    return max(1, round(steps / math.ceil(n_train / batch_size)))


PROFILES = {
    # Greydanus' MNIST-1D MLP (40-100-100-10, Adam 1e-2, batch 128, 100 epochs): about 2,900 steps,
    # selected on validation; the best epochs come late and a 300-epoch run tests no better.
    "quick": Profile(
        name="quick", data="mnist1d",
        teacher={"name": "convnet", "depth": 4, "width": 32, "hidden": 128},
        student={"name": "mlp", "hidden": [100, 100]},
        epochs=100, teacher_epochs=30, batch_size=128, lr=1e-2, teacher_lr=3e-3,
        transfer_set=10000,
        # "A patient and consistent teacher": views of each training signal in the bank the teacher labels
        extra={"views": 32}),
    "full": Profile(
        name="full", data="mnist",
        teacher={"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5},
        student={"name": "mlp", "hidden": [800, 800]},
        epochs=60, teacher_epochs=60, batch_size=128, lr=1e-3, teacher_lr=1e-3, threads=8,
        labelled_fraction=0.2,  # the transfer set: the other 80 % of the training images, unlabeled
        # seed 001 exp 1: 1 conv + 4 FC teacher (1,422,378 parameters) → 1 conv + 2 FC student (693,962)
        extra={"views": 8,  # a bank of views of every training image (8 × 54,000 MNIST images: 1.4 GB)
               "seed001_teacher": {"name": "conv_mlp", "hidden": [256, 128, 32]},
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


def env_count(name, default, low):
    """The integer in ``$name`` (``default`` when unset or empty); anything else is refused."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low:
        raise ValueError(f"${name} must be an integer >= {low}, got {text!r}")
    return value


def get(name=None):
    """The profile ``name``, else ``$KDNB_PROFILE``, else ``quick``; a Profile is returned as is.
    ``$KDNB_THREADS`` sets its CPU thread count and ``$KDNB_SEED_OFFSET`` shifts its seeds.
    ``$KDNB_SMOKE=1`` keeps the profile's models and data but trains one epoch of everything: what
    the tests use to run every chapter's full-profile code path on tiny files without a GPU."""
    if isinstance(name, Profile):
        return name
    name = name or os.environ.get("KDNB_PROFILE") or "quick"
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)} (from KDNB_PROFILE or the "
                         f"argument), got {name!r}")
    p = PROFILES[name]
    threads = env_count("KDNB_THREADS", p.threads, low=1)
    offset = env_count("KDNB_SEED_OFFSET", 0, low=0)
    p = replace(p, threads=threads, seed_offset=offset, seeds=tuple(offset + s for s in p.seeds))
    if os.environ.get("KDNB_SMOKE") == "1":
        smoke = lambda fit: {**fit, "epochs": 1}
        cifar = p.extra.get("seed001_cifar")
        extra = {**p.extra, "seed001_cifar": {**cifar, "teacher_fit": smoke(cifar["teacher_fit"]),
                                              "student_fit": smoke(cifar["student_fit"])}} if cifar else p.extra
        p = replace(p, epochs=1, teacher_epochs=1, transfer_set=min(p.transfer_set, 64), extra=extra)
    return p
