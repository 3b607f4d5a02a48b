"""The book's settings, in one registry: what every chapter and every named experiment trains.

* :data:`PROFILES`: the run profiles (``quick``, ``full``), read by :func:`kdnb.book.profiles.get`;
* :data:`CONFIGS`: the seeds' experiments as named configs (``kdnb run NAME``, :mod:`kdnb.book.configs`);
* :data:`CHAPTERS`: each chapter's own settings per profile (chapter 6's capacity ladder,
  chapter 7's feature pairs, chapter 8's adversarial budget), read by :func:`chapter`;
* :func:`smoke`: the one smoke transform (``$KDNB_SMOKE=1``, read by :func:`smoke_mode` alone):
  every epoch count to one, the transfer set to a few signals, and a setting's own ``"smoke"``
  overrides (fewer seeds, a few images).

Adding an experiment or a chapter's setting touches this file alone. The library (``kdnb``
outside ``kdnb.book``) knows none of it.
"""
import dataclasses
import math
import os
from dataclasses import dataclass, field, replace

# ---------------------------------------------------------------------------------------------
# Smoke mode: the tests' one epoch of everything, on tiny files.

# A count under smoke is at most this: the epochs of every training, and the transfer set.
SMOKE_CAPS = {"epochs": 1, "teacher_epochs": 1, "stage1_epochs": 1, "transfer_set": 64}
RUN_SMOKE = {"seeds": 1, "images": 8}  # kdnb run: one seed, and in the full profile 8 training images


def smoke_mode():
    """Whether ``$KDNB_SMOKE=1``: the only place kdnb reads it."""
    return os.environ.get("KDNB_SMOKE") == "1"


def smoke(value):
    """``value`` (a dict, a dataclass, or a list of them) as smoke mode trains it: every count of
    :data:`SMOKE_CAPS` capped, in nested fit arguments too, and a dict's own ``"smoke"`` entry
    merged over it. Returns a copy; the tables are never changed."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return replace(value, **smoke({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}))
    if isinstance(value, dict):
        out = {k: (min(v, SMOKE_CAPS[k]) if k in SMOKE_CAPS and isinstance(v, int) else smoke(v))
               for k, v in value.items() if k != "smoke"}
        return {**out, **value.get("smoke", {})}
    if isinstance(value, (list, tuple)):
        return type(value)(smoke(v) for v in value)
    return value


def unsmoked(value):
    """A dict of settings without its ``"smoke"`` overrides (what runs outside smoke mode)."""
    return {k: v for k, v in value.items() if k != "smoke"}


def chapter(name, profile_name):
    """Chapter setting ``name`` (a key of :data:`CHAPTERS`) for a profile, as a fresh dict: smoked
    under ``$KDNB_SMOKE=1``. Seeds stay counts; the chapter draws them from the profile."""
    table = CHAPTERS[name]
    if profile_name not in table:
        raise ValueError(f"profile must be one of {', '.join(table)} for the {name} settings, got {profile_name!r}")
    return smoke(table[profile_name]) if smoke_mode() else unsmoked(table[profile_name])


# ---------------------------------------------------------------------------------------------
# The records: a profile, and a named experiment's config.

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


@dataclass(frozen=True)
class Arm:
    """One student of an experiment: the model ``student`` (a ``kdnb.models.build`` spec) trained
    with ``method`` (a name in ``kdnb.book.run.METHODS``) and its ``options`` (T, alpha, ...), from
    ``teacher``: ``"teacher"`` (the setting's) or the name of an earlier arm (the same seed's model
    of it: a self-teacher, a distilled student, an assistant). ``fraction`` of the labelled
    training split, at the same step budget as the others. ``fit`` overrides the setting's
    ``student_fit``. ``published``: the seed's figure for this arm, as the seed reports it."""
    name: str
    student: dict
    method: str = "ce"
    options: dict = field(default_factory=dict)
    teacher: str = "teacher"
    fraction: float = 1.0
    fit: dict = field(default_factory=dict)
    published: str = ""


@dataclass(frozen=True)
class Setting:
    """One profile's version of an experiment."""
    data: str
    teacher: dict            # model spec of the teacher (trained once, seed 0, with cross-entropy)
    teacher_fit: dict        # kdnb.train.fit's arguments: epochs, batch_size, lr, optimizer, ...
    student_fit: dict        # the students' (epochs over the full labelled split: the step budget)
    arms: tuple
    seeds: int = 3


@dataclass(frozen=True)
class Config:
    name: str
    description: str         # one line
    chapter: str             # the book's chapter it belongs to
    seed: str                # the seed document (and experiment) it reproduces
    quick: Setting
    full: Setting
    published_teacher: str = ""
    notes: str = ""          # where ours departs from the seed, and why

    def setting(self, profile):
        if profile not in ("quick", "full"):
            raise ValueError(f"profile must be 'quick' or 'full', got {profile!r}")
        return getattr(self, profile)


# ---------------------------------------------------------------------------------------------
# The pieces the quick versions share (embedded data: MNIST-1D for the seeds' CIFAR-10 and
# harder sets, scikit-learn's 8×8 digits for MNIST), and the full profile's.

# Seed 001's CIFAR-10 pair, trained as the report did: SGD, a decaying learning rate, augmentation
# (crops and flips). Every CIFAR-10 training of the book (chapters 3, 6 and 7, the configs) uses these.
SGD_CIFAR = {"batch_size": 128, "optimizer": "sgd", "weight_decay": 5e-4, "schedule": "cosine", "augment": True}
CIFAR_TEACHER = {"name": "resnet18_cifar"}
CIFAR_TEACHER_FIT = {"epochs": 60, "lr": 0.1, **SGD_CIFAR}
CIFAR_STUDENT = {"name": "cifar_cnn"}
CIFAR_FIT = {"epochs": 30, "lr": 0.05, **SGD_CIFAR}
# Seed 001 exp 6's ladder of 2-D convnets (chapter 6's full profile and `kdnb run seed001-exp6`):
# the widths are not given; 100 epochs a model.
LADDER_CIFAR = {"name": "convnet", "width": 32, "norm": True, "hidden": 128}
LADDER_CIFAR_FIT = {"epochs": 100, "lr": 0.05, **SGD_CIFAR}

Q_TEACHER = {"name": "convnet", "depth": 4, "width": 16, "hidden": 64}
Q_TEACHER_FIT = {"epochs": 15, "batch_size": 128, "lr": 1e-2}
Q_MLP = {"name": "mlp", "hidden": [100, 100]}
Q_FIT = {"epochs": 12, "batch_size": 256, "lr": 1e-2}
D_TEACHER = {"name": "mlp", "hidden": [256, 256], "dropout": 0.2}  # digits
D_TEACHER_FIT = {"epochs": 15, "batch_size": 64, "lr": 1e-3}
D_STUDENT = {"name": "mlp", "hidden": [32]}
D_FIT = {"epochs": 10, "batch_size": 128, "lr": 1e-2}

MNIST_TEACHER = {"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5}  # Hinton's, seed 003's
MNIST_STUDENT = {"name": "mlp", "hidden": [800, 800]}
MNIST_FIT = {"epochs": 30, "batch_size": 128, "lr": 1e-3}


# ---------------------------------------------------------------------------------------------
# The profiles.

PROFILES = {
    # Greydanus' MNIST-1D MLP (40-100-100-10, Adam 1e-2, batch 128, 100 epochs): about 2,900 steps,
    # selected on validation; the best epochs come late and a 300-epoch run tests no better.
    "quick": Profile(
        name="quick", data="mnist1d",
        teacher={"name": "convnet", "depth": 4, "width": 32, "hidden": 128},
        student={"name": "mlp", "hidden": [100, 100]},
        epochs=100, teacher_epochs=30, batch_size=128, lr=1e-2, teacher_lr=3e-3,
        transfer_set=10000),
    "full": Profile(
        name="full", data="mnist",
        teacher={"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5},
        student={"name": "mlp", "hidden": [800, 800]},
        epochs=60, teacher_epochs=60, batch_size=128, lr=1e-3, teacher_lr=1e-3, threads=8,
        labelled_fraction=0.2,  # the transfer set: the other 80 % of the training images, unlabeled
        # seed 001 exp 1: 1 conv + 4 FC teacher (1,422,378 parameters) → 1 conv + 2 FC student (693,962)
        extra={"seed001_teacher": {"name": "conv_mlp", "hidden": [256, 128, 32]},
               "seed001_student": {"name": "conv_mlp", "hidden": [128]},
               # seed 001 exp 2 (the α × T grid): ResNet-18 → 6 conv (BN) + 2 FC on CIFAR-10, trained
               # as the report did: SGD, a decaying learning rate, augmentation (crops and flips).
               "seed001_cifar": {"data": "cifar10", "teacher": CIFAR_TEACHER, "student": CIFAR_STUDENT,
                                 "teacher_fit": CIFAR_TEACHER_FIT, "student_fit": CIFAR_FIT}}),
}



# ---------------------------------------------------------------------------------------------
# The named experiments (seeds' configs).

def kd(T, alpha, **more):
    return {"T": T, "alpha": alpha, **more}


def grid(student, alphas, temperatures, published=""):
    arms = [Arm("alone", student, published=published)]
    return tuple(arms + [Arm(f"KD α={a:g} T={t:g}", student, "kd", kd(t, a)) for a in alphas for t in temperatures])


def fractions(student, fracs, T, alpha, published=None):
    published = published or {}
    return tuple(Arm(f"{name} {f:.0%}", student, method, kd(T, alpha) if method == "kd" else {}, fraction=f,
                     published=published.get((name, f), ""))
                 for f in fracs for name, method in (("alone", "ce"), ("KD", "kd")))


def ladder(depths, net, T, alpha, published):
    """Seed 001 exp 6: the smallest network (``net(depth)``) alone, distilled from the teacher, and
    through each assistant (Mirzadeh et al. 2020): the assistant distilled from the teacher, the
    student from it."""
    arms = [Arm("alone", net(depths[0]), published=published.get("alone", "")),
            Arm("KD", net(depths[0]), "kd", kd(T, alpha), published=published.get("KD", ""))]
    for d in depths[1:-1]:
        arms += [Arm(f"assistant {d}", net(d), "kd", kd(T, alpha)),
                 Arm(f"KD via assistant {d}", net(depths[0]), "kd", kd(T, alpha), teacher=f"assistant {d}",
                     published=published.get(d, ""))]
    return tuple(arms)


def seed003_cnn(base, dropouts, published):
    net = lambda p: {**base, "dropout": p}
    return tuple(Arm(f"{name}, dropout {p:g}", net(p), method, kd(4.0, 0.9) if method == "kd" else {},
                     published=published.get((name, p), ""))
                 for p in dropouts for name, method in (("alone", "ce"), ("KD", "kd")))


def seed003_mlp(student, lrs, published, opt):
    arms = []
    for lr in lrs:
        fit = {"lr": lr, **opt}
        arms += [Arm(f"alone, lr {lr:g}", student, fit=fit, published=published.get(("alone", lr), "")),
                 Arm(f"KD, lr {lr:g}", student, "kd", kd(4.0, 0.9), fit=fit,
                     published=published.get(("KD", lr), "")),
                 Arm(f"KD unlabeled, lr {lr:g}", student, "kd", kd(4.0, 1.0, labels=False), fit=fit,
                     published=published.get(("unlabeled", lr), ""))]
    return tuple(arms)


def adversarial(student, published):
    return (Arm("alone", student, published=published.get("alone", "")),
            Arm("KD", student, "kd", kd(4.0, 0.5), published=published.get("KD", "")),
            Arm("GAN KD", student, "gan_kd", {"alpha": 1.0, "beta": 1.0, "gamma": 1.0},
                published=published.get("GAN KD", "")),
            Arm("WGAN KD", student, "wgan_kd", {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "lipschitz": "gp"},
                published=published.get("WGAN KD", "")))
    # The pre-trained discriminator (methods.FrozenD) needs a discriminator trained before the
    # student: not an arm yet (chapter 8 trains it through discriminator_data).


def fitnets(student, hint, guided, published=""):
    return (Arm("alone", student),
            Arm("KD", student, "kd", kd(4.0, 0.9)),
            Arm("FitNets", student, "fitnets", {"hint": hint, "guided": guided, "T": 4.0, "alpha": 0.9},
                published=published))


S000_PUB = {"alone": "58.55 % (epoch 1: 25.97)", "KD": "59.62 % (epoch 1: 40.17)"}
S003_MLP_PUB = {("alone", 0.01): "98.10 %", ("KD", 0.01): "98.18 %", ("unlabeled", 0.01): "97.69 %",
                ("alone", 0.1): "97.75 %", ("KD", 0.1): "98.50 %", ("unlabeled", 0.1): "98.16 %"}
S003_CNN_PUB = {("alone", 0.5): "83.51 %", ("KD", 0.5): "84.49 %", ("alone", 0.0): "84.74 %",
                ("KD", 0.0): "85.69 %"}
S001_LADDER_PUB = {"alone": "68.6 %", "KD": "71.1 %", 4: "71.5 %", 6: "72.5 %", 8: "72.1 %"}
Q_CNN = {"name": "mlp", "hidden": [64, 64, 64, 32]}  # five layers, as the seed's 3 conv + 2 FC

CONFIGS = {c.name: c for c in [
    Config(
        "seed000", "ResNet-50 at 224 px → a custom CNN, α = 0.5, T = 1, 10 epochs, CIFAR-10", "2", "000",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT,
                      {**Q_FIT, "epochs": 10},
                      (Arm("alone", Q_MLP, published=S000_PUB["alone"]),
                       Arm("KD", Q_MLP, "kd", kd(1.0, 0.5), published=S000_PUB["KD"]))),
        full=Setting("cifar10", {"name": "resnet50", "input_size": 224, "normalise": "imagenet"},
                     {"epochs": 10, "batch_size": 64, "lr": 1e-3},
                     {"epochs": 10, "batch_size": 64, "lr": 1e-3},
                     (Arm("alone", {"name": "convnet", "depth": 6, "width": 32, "hidden": 256, "dims": 2},
                          published=S000_PUB["alone"]),
                      Arm("KD", {"name": "convnet", "depth": 6, "width": 32, "hidden": 256, "dims": 2}, "kd",
                          kd(1.0, 0.5), published=S000_PUB["KD"]))),
        published_teacher="82.18 % (epoch 10)",
        notes="the seed's teacher was most likely ImageNet-pretrained (75 % after one epoch); ours trains "
              "from scratch (no weights are downloaded); the custom CNN's layers are not given"),
    Config(
        "seed001-exp1", "MNIST: 1 conv + 4 FC teacher → 1 conv + 2 FC student, with and without KD", "2",
        "001 exp 1",
        quick=Setting("digits", {"name": "conv_mlp", "filters": 16, "hidden": [256, 128, 32]}, D_TEACHER_FIT, D_FIT,
                      (Arm("alone", {"name": "conv_mlp", "filters": 8, "hidden": [32]}, published="98.6 %"),
                       Arm("KD", {"name": "conv_mlp", "filters": 8, "hidden": [32]}, "kd", kd(4.0, 0.9),
                           published="98.87 %"))),
        full=Setting("mnist", {"name": "conv_mlp", "hidden": [256, 128, 32]}, {**MNIST_FIT, "epochs": 20},
                     {**MNIST_FIT, "epochs": 20},
                     (Arm("alone", {"name": "conv_mlp", "hidden": [128]}, published="98.6 %"),
                      Arm("KD", {"name": "conv_mlp", "hidden": [128]}, "kd", kd(4.0, 0.9), published="98.87 %"))),
        published_teacher="98.96 %", notes="the report gives neither T nor α: ours are the book's T = 4, α = 0.9"),
    Config(
        "seed001-exp2", "CIFAR-10: ResNet-18 → 6 conv (BN) + 2 FC, an α × T grid", "3", "001 exp 2",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT, grid(Q_MLP, (0.5, 1.0), (1.0, 4.0))),
        full=Setting("cifar10", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     grid(CIFAR_STUDENT, (0.5, 0.9, 1.0), (1.0, 2.0, 4.0, 8.0, 16.0), published="87.25 %")),
        published_teacher="93.5 %", notes="published: best gain ≈ +2.1 points at high T; α = 1 still +2"),
    Config(
        "seed001-exp3", "CIFAR-10: the same pair on 10-100 % of the labels, with and without KD", "4",
        "001 exp 3",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT, fractions(Q_MLP, (0.25, 1.0), 4.0, 0.9)),
        full=Setting("cifar10", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     fractions(CIFAR_STUDENT, (0.1, 0.25, 0.5, 1.0), 4.0, 0.9,
                               {("alone", 1.0): "87.25 %", ("KD", 0.25): "≈ alone at 100 %"})),
        published_teacher="93.5 %",
        notes="students are step-matched (the book's rule): a fraction trains more epochs, the same steps"),
    Config(
        "seed001-exp4", "CIFAR-10, teacher-free: the pre-trained student teaches a fresh copy", "5",
        "001 exp 4",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT,
                      (Arm("alone", Q_MLP), Arm("self-teacher", Q_MLP, "kd", kd(2.0, 0.5), teacher="alone"))),
        full=Setting("cifar10", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     (Arm("alone", CIFAR_STUDENT, published="87.25 %"),
                      Arm("self-teacher", CIFAR_STUDENT, "kd", kd(2.0, 0.5), teacher="alone",
                          published="88.7 % (+1.45, best of a grid)"))),
        published_teacher="93.5 %", notes="one cell (α = 0.5, T = 2) of the seed's grid"),
    Config(
        "seed001-exp5", "CIFAR-10: a distilled student (α = 0.6, T = 2) as the teacher", "5", "001 exp 5",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT,
                      (Arm("alone", Q_MLP), Arm("KD α=0.6 T=2", Q_MLP, "kd", kd(2.0, 0.6)),
                       Arm("KD from distilled", Q_MLP, "kd", kd(4.0, 0.4), teacher="KD α=0.6 T=2"),
                       Arm("KD α=0.4 T=4", Q_MLP, "kd", kd(4.0, 0.4)))),
        full=Setting("cifar10", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     (Arm("alone", CIFAR_STUDENT, published="87.25 %"),
                      Arm("KD α=0.6 T=2", CIFAR_STUDENT, "kd", kd(2.0, 0.6)),
                      Arm("KD from distilled", CIFAR_STUDENT, "kd", kd(4.0, 0.4), teacher="KD α=0.6 T=2",
                          published="89 %"),
                      Arm("KD α=0.4 T=4", CIFAR_STUDENT, "kd", kd(4.0, 0.4),
                          published="89.4 % (best with ResNet-18)"))),
        published_teacher="93.5 %"),
    Config(
        "seed001-exp6", "CIFAR-10: conv ladders 2-10 layers, teacher 10 → student 2, through assistants",
        "6", "001 exp 6",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT,
                      ladder((1, 3, 0), lambda d: {"name": "mlp", "hidden": [32] * d}, 4.0, 0.9, {})),
        full=Setting("cifar10", {**LADDER_CIFAR, "depth": 10}, LADDER_CIFAR_FIT, LADDER_CIFAR_FIT,
                     ladder((2, 4, 6, 8, 10), lambda d: {**LADDER_CIFAR, "depth": d}, 4.0, 0.9, S001_LADDER_PUB)),
        notes="the ladders' widths are not given; T = 4, α = 0.9 for every link; the quick ladder is of MLPs "
              "(1 and 3 hidden layers) under the convnet teacher"),
    Config(
        "seed002", "CIFAR-10: ResNet-50 → ResNet-18, no KD, fixed KD (T = 0.5, α = 0.7), scheduled KD",
        "7", "002",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT,
                      (Arm("alone", Q_MLP), Arm("KD fixed", Q_MLP, "kd", kd(0.5, 0.7)),
                       Arm("KD scheduled", Q_MLP, "kd_decay", {"T": [0.5, 0.3, 0.95], "alpha": [0.8, 0.5, 0.95]}))),
        full=Setting("cifar10", {"name": "resnet50_cifar"}, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     (Arm("alone", CIFAR_TEACHER, published="75.06 %"),
                      Arm("KD fixed", CIFAR_TEACHER, "kd", kd(0.5, 0.7), published="76.8 % (with features)"),
                      Arm("KD scheduled", CIFAR_TEACHER, "kd_decay",
                          {"T": [0.5, 0.3, 0.95], "alpha": [0.8, 0.5, 0.95]},
                          published="78.6 % (with features)"))),
        published_teacher="85.11 % (fine-tuned)",
        notes="without the seed's 0.1 × feature MSE through 1×1 projectors (kdnb has no multi-stage "
              "projector method yet); schedules read as (start, floor, decay per epoch)"),
    Config(
        "seed003-mlp", "MNIST: 784-1200-1200-10 teacher → 784-800-800-10, KD, KD without labels, 2 rates",
        "4", "003",
        quick=Setting("digits", D_TEACHER, D_TEACHER_FIT, D_FIT,
                      seed003_mlp(D_STUDENT, (0.01, 0.1), S003_MLP_PUB, {"optimizer": "sgd"})),
        full=Setting("mnist", MNIST_TEACHER, {**MNIST_FIT, "lr": 0.01, "optimizer": "sgd"}, MNIST_FIT,
                     seed003_mlp(MNIST_STUDENT, (0.01, 0.1), S003_MLP_PUB, {"optimizer": "sgd"})),
        published_teacher="98.30 %", notes="T = 4, α = 0.9 (not given); SGD with Nesterov momentum 0.9"),
    Config(
        "seed003-cnn", "CIFAR-10: ResNet-18 → 5-layer CNN (3 conv + BN, 2 FC), dropout 0.5 and none",
        "2", "003",
        quick=Setting("digits", D_TEACHER, D_TEACHER_FIT, D_FIT, seed003_cnn(Q_CNN, (0.5, 0.0), S003_CNN_PUB)),
        full=Setting("cifar10", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     seed003_cnn({"name": "convnet", "depth": 3, "width": 64, "hidden": 256, "norm": True,
                                  "dims": 2}, (0.5, 0.0), S003_CNN_PUB)),
        published_teacher="not given",
        notes="the CNN's widths are not given; the quick version's five-layer student is an MLP"),
    Config(
        "seed003-5pct", "CIFAR-10: the 5-layer CNN on 5 % of the labels, with and without KD", "4", "003",
        quick=Setting("digits", D_TEACHER, D_TEACHER_FIT, D_FIT,
                      fractions({**D_STUDENT, "dropout": 0.5}, (0.05,), 4.0, 0.9)),
        full=Setting("cifar10", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT,
                     fractions({"name": "convnet", "depth": 3, "width": 64, "hidden": 256, "norm": True, "dims": 2,
                                "dropout": 0.5}, (0.05,), 4.0, 0.9,
                               {("alone", 0.05): "65.86 %", ("KD", 0.05): "66.71 %"})),
        notes="step-matched: 5 % of the data trains 20 times the epochs"),
    Config(
        "seed004-mnist", "MNIST: KD, GAN KD and WGAN KD (a discriminator or critic on logits trained on the go)", "8", "004",
        quick=Setting("digits", D_TEACHER, D_TEACHER_FIT, D_FIT, adversarial(D_STUDENT, {})),
        full=Setting("mnist", MNIST_TEACHER, MNIST_FIT, MNIST_FIT, adversarial(MNIST_STUDENT, {})),
        notes="the poster reports losses only; its models are not given (ours: Hinton's MLPs)"),
    Config(
        "seed004-svhn", "SVHN: KD, GAN KD and WGAN KD", "8", "004",
        quick=Setting("mnist1d", Q_TEACHER, Q_TEACHER_FIT, Q_FIT, adversarial(Q_MLP, {})),
        full=Setting("svhn", CIFAR_TEACHER, CIFAR_TEACHER_FIT, CIFAR_FIT, adversarial(CIFAR_STUDENT, {})),
        notes="the poster reports losses only; ours: seed 001's CIFAR-10 pair"),
    Config(
        "seed004-fitnets", "MNIST: FitNets hints (stage 1: hint, stage 2: KD from its weights)", "7", "004",
        quick=Setting("digits", D_TEACHER, D_TEACHER_FIT, D_FIT,
                      fitnets({"name": "mlp", "hidden": [32, 32, 32]}, hint="2", guided="4")),
        full=Setting("mnist", MNIST_TEACHER, MNIST_FIT, MNIST_FIT,
                     fitnets({"name": "mlp", "hidden": [300, 300, 300, 300]}, hint="2", guided="4")),
        notes="thin and deep student; hint: the teacher's first hidden layer, guided: the student's second"),
    Config(
        "seed004-notmnist", "notMNIST: KD, GAN KD and WGAN KD", "8", "004",
        quick=Setting("digits", D_TEACHER, D_TEACHER_FIT, D_FIT, adversarial(D_STUDENT, {})),
        full=Setting("notmnist", MNIST_TEACHER, MNIST_FIT, MNIST_FIT, adversarial(MNIST_STUDENT, {}))),
]}




# ---------------------------------------------------------------------------------------------
# Each chapter's own settings, per profile.

CAPACITY = {
    # MNIST-1D, 1-D convnets with batch norm (without it the deeper ones train worse than the
    # shallow ones in a short budget) and a first width of 6 channels, doubled every second
    # layer: 2 layers see 6 samples of a 40-long signal, 10 layers all of it, through 96
    # channels. Adam, cosine; students 5 epochs (~160 steps, far from converged: the chapter
    # measures learning at a short budget), teachers 3x that; 10 seeds, so ~185 models in about
    # 2.5 minutes of one core (the per-step cost of these small models is mostly overhead, so
    # steps and seeds, not widths, are what the budget buys).
    "quick": {"data": "mnist1d", "depths": (2, 4, 6, 8, 10),
              "spec": {"name": "convnet", "width": 6, "norm": True, "hidden": 32},
              "fit": {"epochs": 5, "batch_size": 128, "lr": 1e-2, "schedule": "cosine"},
              "teacher_epochs": 15, "teacher_seed": 100, "seeds": 10, "cells": ((0.5, 2.0), (0.9, 4.0))},
    # Seed 001 exp 6: CIFAR-10, 2-D convnets of 2-10 conv layers, SGD for 100 epochs, regularised
    # (weight decay, augmentation, batch norm); 3 seeds (100 epochs a model).
    "full": {"data": "cifar10", "depths": (2, 4, 6, 8, 10),
             "spec": LADDER_CIFAR, "fit": LADDER_CIFAR_FIT,
             "teacher_epochs": 100, "teacher_seed": 100, "seeds": 3, "cells": ((0.5, 2.0), (0.9, 4.0))},
}



RESNET18_STAGES = [f"layer{i}.1.relu_1" for i in range(1, 5)]
RESNET50_STAGES = [f"layer{i}.{n - 1}.relu_2" for i, n in zip(range(1, 5), (3, 4, 6, 3))]

FEATURE_PAIRS = {
    "quick": {
        "student": {"name": "convnet", "depth": 4, "width": 8, "hidden": 32},
        "fit": {"epochs": 8, "batch_size": 128, "lr": 1e-2},
        "stage1_epochs": 3,  # of the 8: FitNets' two stages share the others' step budget
        "stages": [("4", "4"), ("9", "9")],  # (student node, teacher node)
        "attention": [("3", "3"), ("8", "8")],
        "hint": ("4", "4"),  # (guided, hint): the middle of each network
        "seeds": 10,  # student seeds per arm: profile.seed_list(10), shifted by the seed offset
        "smoke": {"seeds": 2},
    },
    "full": {
        "data": "cifar10",
        "teacher": {"name": "resnet50_cifar"},
        "teacher_fit": CIFAR_TEACHER_FIT,
        "student": {"name": "resnet18_cifar"},
        "fit": CIFAR_FIT,
        "stage1_epochs": 5,
        "stages": list(zip(RESNET18_STAGES, RESNET50_STAGES)),
        "attention": list(zip(RESNET18_STAGES, RESNET50_STAGES)),
        "hint": (RESNET18_STAGES[1], RESNET50_STAGES[1]),
        "seeds": 3,
        "smoke": {"seeds": 2, "images": 4},  # one step on a few images, tested on a few
    },
}



# Chapter 8's budget, number of student seeds and data sets per profile. Quick: 15 epochs (chapter 2
# trains for 100) so that three variants, their settings and ten seeds (the seed count; the chapter
# takes them from profile.seed_list, so $KDNB_SEED_OFFSET shifts them) fit a few CPU minutes; full:
# the profile's MNIST pair for 60 epochs, then seed 004's notMNIST (the same pair) and SVHN (seed
# 001's CIFAR-10 pair, without augmentation: flipped digits are other digits).
ADVERSARIAL = {
    "quick": {"epochs": 15, "seeds": 10, "others": {}},
    "full": {"epochs": 60, "seeds": 3, "others": {
        "notmnist": {},
        "svhn": {"teacher": {"name": "resnet18_cifar"}, "student": {"name": "cifar_cnn"}, "teacher_epochs": 20}}},
}


# Chapters 2b, 3 and 5b (a patient and consistent teacher): the views of each training input in the
# bank the teacher labels once (quick: 32 of each MNIST-1D signal, 128,000 rows; full: 8 of each
# MNIST image, 1.4 GB), and the long budget as a multiple of the book's usual one.
PATIENT = {
    "quick": {"views": 32, "patience": 4},
    "full": {"views": 8, "patience": 4},
}

CHAPTERS = {"capacity": CAPACITY, "feature_pairs": FEATURE_PAIRS, "adversarial": ADVERSARIAL,
            "patient": PATIENT}
