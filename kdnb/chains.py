"""Chains of distillation: a teacher teaches a student, which teaches the next, and so on.

Born-again networks (Furlanello et al. 2018) and seed 001's "distilled student as teacher" are
chains of one architecture; a teacher → assistant → student chain (Mirzadeh et al. 2020) is a
chain of shrinking ones. Each link is ``kdnb.cached.trained(spec, data, Distill(previous, T, alpha),
seed=...)``: cached, and keyed on its teacher's weights, so a rerun with another setting for one
link retrains that link and the ones after it, nothing before. A chain may start from a
:class:`Root`, a teacher trained from scratch with cross-entropy in the same call: teacher →
assistant(s) → student is then one call, each stage cached.
"""
from dataclasses import dataclass

from torch import nn

from . import store
from .checks import check_alpha, check_T
from .methods import Distill
from .teachers import FrozenTeacher, TeacherCache, predict
from .cached import trained
from .train import progress_bar


@dataclass(frozen=True)
class Link:
    """One link of a chain: a student built from ``spec`` (``kdnb.models.build``) and its initial
    weights' ``seed``, distilled from the link before it with Hinton KD at ``T`` and ``alpha``."""
    spec: dict
    T: float = 4.0
    alpha: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.spec, dict) or "name" not in self.spec:
            raise TypeError(f"spec must be a model spec dict with a 'name' (kdnb.models.build), got {self.spec!r}")
        check_T(self.T)
        check_alpha(self.alpha)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


@dataclass(frozen=True)
class Root:
    """The first stage of a chain, trained from scratch with cross-entropy: a model ``spec`` and
    its ``seed``, and ``fit``'s arguments where they differ from the links' (``{"epochs": 30}``
    for a teacher trained longer). The same run as ``trained(spec, data, seed=seed, ...)``, so
    the two share a cache entry."""
    spec: dict
    seed: int = 0
    fit: dict = None

    def __post_init__(self):
        if not isinstance(self.spec, dict) or "name" not in self.spec:
            raise TypeError(f"spec must be a model spec dict with a 'name' (kdnb.models.build), got {self.spec!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.fit is not None and not isinstance(self.fit, dict):
            raise TypeError(f"fit must be None or a dict of kdnb.train.fit's arguments, got {self.fit!r}")

    def train(self, data, progress=None, **fit_kwargs):
        """``(model, history)``, the model in eval mode."""
        return trained(self.spec, data, seed=self.seed, progress=progress, **{**fit_kwargs, **(self.fit or {})})


class ModelOutputs(TeacherCache):
    """A teacher model's logits on every training sample, computed once and looked up by sample
    index (a :class:`~kdnb.teachers.TeacherCache`), named in cache keys by the model's weights and
    architecture, as ``kdnb.cached.trained_grid`` names a teacher model: the logits follow from
    those and the data (which the key holds), and a GPU's unordered sums can't move the key."""

    def __init__(self, model, x):
        super().__init__(predict(model, x))
        self.model_key = store.tensor_hash(*model.state_dict().values(), text=repr(model))

    def cache_description(self, describe):
        return {"ModelOutputs": self.model_key}


def teacher_of(model, data, augment=False):
    """What a student distils from: the model's cached logits, or the model itself run on every
    batch when batches are augmented (cached logits are of the clean inputs)."""
    return FrozenTeacher(model) if augment else ModelOutputs(model, data.x_train)


def distill(teacher, data, link, *, progress=None, **fit_kwargs):
    """One link: the student ``link`` describes, distilled from the model ``teacher`` on ``data``
    and trained with ``fit``'s arguments (cached by ``kdnb.cached.trained``). Returns
    ``(model, history)``, the model in eval mode."""
    if not isinstance(link, Link):
        raise TypeError(f"link must be a kdnb.chains.Link, got {type(link).__name__}")
    method = Distill(teacher_of(teacher, data, fit_kwargs.get("augment")), link.T, link.alpha)
    return trained(link.spec, data, method, seed=link.seed, progress=progress, **fit_kwargs)


def chain(teacher, data, links, *, progress=None, desc=None, **fit_kwargs):
    """Train ``links`` in order, the first distilled from ``teacher`` and each later one from the
    link before it, all on ``data`` with ``fit``'s arguments (``epochs`` and the rest).
    ``teacher`` is a trained model, or a :class:`Root` trained here first (cached like the links).
    Returns ``[(model, history), ...]``, one per stage trained: the root's first when there is one,
    then one per link. One progress bar for the whole chain."""
    links = list(links)
    if not isinstance(teacher, (Root, nn.Module)):
        raise TypeError(f"teacher must be a trained torch.nn.Module or a kdnb.chains.Root, "
                        f"got {type(teacher).__name__}")
    if not links and not isinstance(teacher, Root):
        raise ValueError("links must hold at least one kdnb.chains.Link (or teacher be a kdnb.chains.Root)")
    bad = next((i for i, link in enumerate(links) if not isinstance(link, Link)), None)
    if bad is not None:
        raise TypeError(f"links[{bad}] must be a kdnb.chains.Link, got {type(links[bad]).__name__}")
    if "epochs" not in fit_kwargs:
        raise TypeError("chain needs fit's epochs (and its other arguments: batch_size, lr, ...)")
    outer = progress if hasattr(progress, "update") else None  # a caller's bar over several chains
    root_epochs = (teacher.fit or {}).get("epochs", fit_kwargs["epochs"]) if isinstance(teacher, Root) else 0
    total = root_epochs + len(links) * fit_kwargs["epochs"]
    bar = outer or progress_bar(total, desc or f"chain of {len(links) + bool(root_epochs)}", progress)
    out = []
    if isinstance(teacher, Root):
        teacher, history = teacher.train(data, progress=bar, **fit_kwargs)
        out.append((teacher, history))
    for link in links:
        model, history = distill(teacher, data, link, progress=bar, **fit_kwargs)
        out.append((model, history))
        teacher = model
    if outer is None:
        bar.close()
    return out
