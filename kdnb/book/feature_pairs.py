"""Chapter 7's teacher-student pairs, with the graph nodes their feature methods read.

``quick``: the profile's 1-D convnet teacher (depth 4, width 32) and a thin convnet student of
the same depth (width 8) on MNIST-1D; their two stages end at nodes ``"4"`` and ``"9"`` (after
each max-pool), the ReLUs before them (``"3"``, ``"8"``) keep the full length for attention maps.
``full``: seed 002's CIFAR-10 pair, ResNet-50 → ResNet-18 (CIFAR stems), the outputs of the four
stages (channels 256, 512, 1024, 2048 → 64, 128, 256, 512), trained as seed 001's CIFAR pair is
(SGD, cosine, crops and flips), so the teacher runs live. ``$KDNB_SMOKE=1``: one epoch of each,
two seeds (``FeaturePair.seeds``) and, in the full profile, a few training and test images.
:data:`kdnb.book.settings.FEATURE_PAIRS` give each profile's number of student seeds; the seeds themselves, and the full
profile's teacher seed, come from the profile at call time, shifted by ``$KDNB_SEED_OFFSET``.
"""
from dataclasses import dataclass, replace

import torch

from ..data import load
from ..methods import TeacherFeatures
from ..teachers import FrozenTeacher, TeacherCache
from ..cached import trained
from ..train import progress_bar
from . import profiles, settings as registry
from .experiments import teacher as profile_teacher

class DescribedOnce(FrozenTeacher):
    """A :class:`~kdnb.teachers.FrozenTeacher` that describes its model for cache keys once, not
    once per student: describing a ResNet-50 walks its ~150 modules (each one's type, code and
    weights), which took the full profile's smoke test more time than its training. The model
    is frozen, so its description can't change."""

    def cache_description(self, describe):
        if "description" not in self.__dict__:
            self.__dict__["description"] = super().cache_description(describe)
        return self.__dict__["description"]


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
    seeds: tuple


def seeds(profile=None):
    """The pair's student seeds: the settings' count of them (smoked: two) from
    ``profile.seed_list``, so ``$KDNB_SEED_OFFSET`` shifts them."""
    p = profiles.get(profile)
    return p.seed_list(registry.chapter("feature_pairs", p.name)["seeds"])


def pair(profile=None, root=None):
    """The profile's :class:`FeaturePair`, its teacher trained once (cached)."""
    p = profiles.get(profile)
    s = registry.chapter("feature_pairs", p.name)  # smoked: one epoch of each, two seeds, a few images
    fit_args = dict(s["fit"])
    if "teacher" in s:
        data = load(s["data"], root=root)
        if "images" in s:  # one step on a few images, tested on a few: a ResNet student costs its images
            n = s["images"]
            data = replace(data.with_train(torch.arange(min(n, len(data.y_train)))),
                           x_test=data.x_test[:n], y_test=data.y_test[:n])
        teacher_fit = s["teacher_fit"]
        bar = progress_bar(teacher_fit["epochs"], f"teacher {s['teacher']['name']} on {data.name}")
        model, _ = trained(s["teacher"], data, seed=p.seed(0), progress=bar, **teacher_fit)
        bar.close()
    else:
        model, _, data = profile_teacher(p)
    model.eval()
    nodes = list(dict.fromkeys(t for _, t in [*s["stages"], *s["attention"], s["hint"]]))
    if fit_args.get("augment"):  # augmented batches: the teacher runs live on them, traced once
        logits, features = DescribedOnce(model), DescribedOnce(model, nodes)
    else:
        logits = TeacherCache.compute(model, data.x_train)
        features = TeacherFeatures.compute(model, data.x_train, nodes)
    return FeaturePair(data, model, logits, features, s["student"], fit_args,
                       s["stage1_epochs"], s["stages"], s["attention"], tuple(s["hint"]),
                       seeds(p))
