"""Chapter 7's teacher-student pairs, with the graph nodes their feature methods read.

``quick``: the profile's 1-D convnet teacher (depth 4, width 32) and a thin convnet student of
the same depth (width 8) on MNIST-1D; their two stages end at nodes ``"4"`` and ``"9"`` (after
each max-pool), the ReLUs before them (``"3"``, ``"8"``) keep the full length for attention maps.
``full``: seed 002's CIFAR-10 pair, ResNet-50 → ResNet-18 (CIFAR stems), the outputs of the four
stages (channels 256, 512, 1024, 2048 → 64, 128, 256, 512), trained as seed 001's CIFAR pair is
(SGD, cosine, crops and flips), so the teacher runs live. ``$KDNB_SMOKE=1``: one epoch of each.
"""
import os
from dataclasses import dataclass

from . import profiles
from .data import load
from .experiments import teacher as profile_teacher
from .methods import TeacherFeatures
from .teachers import FrozenTeacher, TeacherCache
from .train import progress_bar, trained

RESNET18_STAGES = [f"layer{i}.1.relu_1" for i in range(1, 5)]
RESNET50_STAGES = [f"layer{i}.{n - 1}.relu_2" for i, n in zip(range(1, 5), (3, 4, 6, 3))]

SETTINGS = {
    "quick": {
        "student": {"name": "convnet", "depth": 4, "width": 8, "hidden": 32},
        "fit": {"epochs": 8, "batch_size": 128, "lr": 1e-2},
        "stage1_epochs": 3,  # of the 8: FitNets' two stages share the others' step budget
        "stages": [("4", "4"), ("9", "9")],  # (student node, teacher node)
        "attention": [("3", "3"), ("8", "8")],
        "hint": ("4", "4"),  # (guided, hint): the middle of each network
    },
    "full": {
        "data": "cifar10",
        "teacher": {"name": "resnet50_cifar"},
        "teacher_fit": {"epochs": 60, "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "weight_decay": 5e-4,
                        "schedule": "cosine", "augment": True},
        "student": {"name": "resnet18_cifar"},
        "fit": {"epochs": 30, "batch_size": 128, "lr": 0.05, "optimizer": "sgd", "weight_decay": 5e-4,
                "schedule": "cosine", "augment": True},
        "stage1_epochs": 5,
        "stages": list(zip(RESNET18_STAGES, RESNET50_STAGES)),
        "attention": list(zip(RESNET18_STAGES, RESNET50_STAGES)),
        "hint": (RESNET18_STAGES[1], RESNET50_STAGES[1]),
    },
}


@dataclass
class FeaturePair:
    """A teacher, what its methods read (``logits``: a TeacherCache or, on augmented batches, the
    model; ``features``: a TeacherFeatures of every node named, or the model), the student's spec,
    ``fit``'s arguments and the nodes: ``stages``, ``attention`` (pairs of student and teacher
    nodes) and ``hint`` (the guided student node, the teacher's hint node)."""
    data: object
    teacher: object
    logits: object
    features: object
    student: dict
    fit_args: dict
    stage1_epochs: int
    stages: list
    attention: list
    hint: tuple


def pair(profile=None, root=None):
    """The profile's :class:`FeaturePair`, its teacher trained once (cached)."""
    p = profiles.get(profile)
    s = SETTINGS[p.name]
    smoke = os.environ.get("KDNB_SMOKE") == "1"
    fit_args = {**s["fit"], "epochs": 1} if smoke else dict(s["fit"])
    if "teacher" in s:
        data = load(s["data"], root=root)
        teacher_fit = {**s["teacher_fit"], "epochs": 1} if smoke else s["teacher_fit"]
        bar = progress_bar(teacher_fit["epochs"], f"teacher {s['teacher']['name']} on {data.name}")
        model, _ = trained(s["teacher"], data, progress=bar, **teacher_fit)
        bar.close()
    else:
        model, _, data = profile_teacher(p)
    model.eval()
    nodes = list(dict.fromkeys(t for _, t in [*s["stages"], *s["attention"], s["hint"]]))
    if fit_args.get("augment"):  # augmented batches: the teacher runs live on them, traced once
        logits, features = model, FrozenTeacher(model, nodes)
    else:
        logits = TeacherCache.compute(model, data.x_train)
        features = TeacherFeatures.compute(model, data.x_train, nodes)
    return FeaturePair(data, model, logits, features, s["student"], fit_args,
                       1 if smoke else s["stage1_epochs"], s["stages"], s["attention"], tuple(s["hint"]))
