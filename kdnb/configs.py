"""Every seed experiment as a named config: its data, models, methods, optimiser, schedule, epochs,
augmentation and seeds, in the full profile (the seed's scale, on its data set) and the quick one
(the same design scaled down on the embedded data). ``kdnb run NAME`` trains one
(:mod:`kdnb.runs`); ``kdnb list`` shows them.

A config is a :class:`Config` of two :class:`Setting` s (``quick`` and ``full``); a setting trains
one teacher (seed 0) and then each :class:`Arm` (a student and the method that trains it) once per
seed. Adding an experiment is one entry in :data:`CONFIGS`; a config whose pieces kdnb lacks (a
model builder, a data set, a method) is listed with what it needs (``kdnb.runs.needs``) and refused
by ``kdnb run`` until they land.
"""
import inspect
from dataclasses import dataclass, field, replace

from . import data as datasets, models


@dataclass(frozen=True)
class Arm:
    """One student of an experiment: the model ``student`` (a ``kdnb.models.build`` spec) trained
    with ``method`` (a name in ``kdnb.runs.METHODS``) and its ``options`` (T, alpha, ...), from
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

Q_TEACHER = {"name": "convnet", "depth": 4, "width": 16, "hidden": 64}
Q_TEACHER_FIT = {"epochs": 15, "batch_size": 128, "lr": 1e-2}
Q_MLP = {"name": "mlp", "hidden": [100, 100]}
Q_FIT = {"epochs": 12, "batch_size": 256, "lr": 1e-2}
D_TEACHER = {"name": "mlp", "hidden": [256, 256], "dropout": 0.2}  # digits
D_TEACHER_FIT = {"epochs": 15, "batch_size": 64, "lr": 1e-3}
D_STUDENT = {"name": "mlp", "hidden": [32]}
D_FIT = {"epochs": 10, "batch_size": 128, "lr": 1e-2}

# Seed 001's CIFAR-10 pair, trained as the report did (profiles.full's seed001_cifar).
CIFAR_TEACHER = {"name": "resnet18_cifar"}
CIFAR_TEACHER_FIT = {"epochs": 60, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "weight_decay": 5e-4,
                     "schedule": "cosine", "augment": True}
CIFAR_STUDENT = {"name": "cifar_cnn"}
CIFAR_FIT = {"epochs": 30, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "weight_decay": 5e-4,
             "schedule": "cosine", "augment": True}
MNIST_TEACHER = {"name": "mlp", "hidden": [1200, 1200], "dropout": 0.5}  # Hinton's, seed 003's
MNIST_STUDENT = {"name": "mlp", "hidden": [800, 800]}
MNIST_FIT = {"epochs": 30, "batch_size": 128, "lr": 1e-3}


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
        full=Setting("cifar10", {"name": "convnet", "depth": 10, "width": 32, "hidden": 256, "norm": True},
                     {"epochs": 100, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "weight_decay": 5e-4,
                      "schedule": "cosine", "augment": True},
                     {"epochs": 100, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "weight_decay": 5e-4,
                      "schedule": "cosine", "augment": True},
                     ladder((2, 4, 6, 8, 10), lambda d: {"name": "convnet", "depth": d, "width": 32, "hidden": 256,
                                                          "norm": True}, 4.0, 0.9, S001_LADDER_PUB)),
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


def get(name):
    """The config ``name``; an unknown name is refused with the known ones."""
    if name not in CONFIGS:
        raise ValueError(f"experiment must be one of {', '.join(CONFIGS)} (see `kdnb list`), got {name!r}")
    return CONFIGS[name]


def spec_problem(spec):
    """Why ``kdnb.models.build`` can't make ``spec``, or None."""
    builder = models.BUILDERS.get(spec.get("name"))
    if builder is None:
        return f"model {spec.get('name')!r} (kdnb.models has {', '.join(models.BUILDERS)})"
    allowed = set(inspect.signature(builder).parameters) - {"in_shape", "classes"}
    extra = sorted(set(spec) - {"name"} - allowed)
    return f"model {spec['name']} with {', '.join(extra)}" if extra else None


def scaled(setting, epochs=None, seeds=None):
    """``setting`` with every training's epochs set to ``epochs`` (a tiny budget for a try-out or a
    test) and its first ``seeds`` seeds."""
    if epochs is not None:
        arms = tuple(replace(a, fit={**a.fit, "epochs": epochs}) if "epochs" in a.fit else a for a in setting.arms)
        setting = replace(setting, teacher_fit={**setting.teacher_fit, "epochs": epochs},
                          student_fit={**setting.student_fit, "epochs": epochs}, arms=arms)
    return replace(setting, seeds=seeds) if seeds is not None else setting
