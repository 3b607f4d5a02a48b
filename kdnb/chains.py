"""Chains of distillation: a teacher teaches a student, which teaches the next, and so on.

Born-again networks (Furlanello et al. 2018) and seed 001's "distilled student as teacher" are
chains of one architecture; a teacher → assistant → student chain (Mirzadeh et al. 2020) is a
chain of shrinking ones. Each link is ``kdnb.train.trained(spec, data, Distill(previous, T, alpha),
seed=...)``: cached, and keyed on its teacher's weights, so a rerun with another setting for one
link retrains that link and the ones after it, nothing before.
"""
from dataclasses import dataclass

from . import store
from .checks import check_alpha, check_T
from .methods import Distill
from .teachers import FrozenTeacher, TeacherCache, predict
from .train import progress_bar, trained


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


class ModelOutputs(TeacherCache):
    """A teacher model's logits on every training sample, computed once and looked up by sample
    index (a :class:`~kdnb.teachers.TeacherCache`), named in cache keys by the model's weights and
    architecture, as ``kdnb.sweep.trained_grid`` names a teacher model: the logits follow from
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
    and trained with ``fit``'s arguments (cached by ``kdnb.train.trained``). Returns
    ``(model, history)``, the model in eval mode."""
    if not isinstance(link, Link):
        raise TypeError(f"link must be a kdnb.chains.Link, got {type(link).__name__}")
    method = Distill(teacher_of(teacher, data, fit_kwargs.get("augment")), link.T, link.alpha)
    return trained(link.spec, data, method, seed=link.seed, progress=progress, **fit_kwargs)


def chain(teacher, data, links, *, progress=None, desc=None, **fit_kwargs):
    """Train ``links`` in order, the first distilled from the model ``teacher`` and each later one
    from the link before it, all on ``data`` with ``fit``'s arguments (``epochs`` and the rest).
    Returns ``[(model, history), ...]``, one per link. One progress bar for the whole chain."""
    links = list(links)
    if not links:
        raise ValueError("links must hold at least one kdnb.chains.Link")
    if "epochs" not in fit_kwargs:
        raise TypeError("chain needs fit's epochs (and its other arguments: batch_size, lr, ...)")
    outer = progress if hasattr(progress, "update") else None  # a caller's bar over several chains
    bar = outer or progress_bar(len(links) * fit_kwargs["epochs"], desc or f"chain of {len(links)}", progress)
    out = []
    for link in links:
        model, history = distill(teacher, data, link, progress=bar, **fit_kwargs)
        out.append((model, history))
        teacher = model
    if outer is None:
        bar.close()
    return out
