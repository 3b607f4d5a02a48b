"""Training objectives: callables ``objective(out, batch) -> loss`` that ``fit`` minimises.

A distillation method is one of these, never a branch in the loop. Objectives are
``nn.Module``s, so any trainable part they own (a projector, a discriminator) is moved to
the device and optimised with the student.
"""
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import cache, losses
from .cache import TeacherCache
from .train import logits_of


class FrozenTeacher(nn.Module):
    """A teacher that never trains: eval mode always (even when the objective is put in train
    mode), parameters without gradients, forward under ``no_grad``."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, batch):
        return logits_of(self.model(batch.x)).float()


def as_teacher(teacher):
    if isinstance(teacher, (TeacherCache, FrozenTeacher)) or callable(teacher) and not isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, nn.Module):
        return FrozenTeacher(teacher)
    raise TypeError(f"teacher must be a TeacherCache, an nn.Module or a callable(batch), got {type(teacher).__name__}")


def value_at(v, epoch, epochs):
    """A hyper-parameter that is a number or a schedule ``f(progress in [0, 1]) -> number``."""
    return v(epoch / max(1, epochs - 1)) if callable(v) else v


class CrossEntropy(nn.Module):
    """The baseline: cross-entropy with the labels (optionally label-smoothed)."""

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = losses.check_number("label_smoothing", label_smoothing, low=0, high=1)

    def forward(self, out, batch):
        return F.cross_entropy(logits_of(out), batch.y, label_smoothing=self.label_smoothing)


class Distill(nn.Module):
    """Hinton KD: ``alpha · T² · KL(teacher_T || student_T) + (1 − alpha) · CE``.

    ``teacher`` is a :class:`TeacherCache` (outputs looked up by sample index), a model
    (wrapped in :class:`FrozenTeacher`) or any ``callable(batch) -> logits``. With
    ``labels=False`` the student never sees a label: pure KD on an unlabeled transfer set.
    ``T`` and ``alpha`` may be schedules ``f(progress) -> value``.
    """

    def __init__(self, teacher, T=4.0, alpha=0.9, labels=True):
        super().__init__()
        self.teacher = as_teacher(teacher)
        self.T_value, self.alpha_value, self.labels = T, alpha, labels
        self.expect = None  # (classes, data name), set by check
        self.start_epoch(0, 1)

    def start_epoch(self, epoch, epochs):
        self.T = losses.check_T(value_at(self.T_value, epoch, epochs))
        self.alpha = losses.check_alpha(value_at(self.alpha_value, epoch, epochs))

    def check(self, data):
        if isinstance(self.teacher, TeacherCache):
            if len(self.teacher) != len(data.y_train):
                raise ValueError(f"teacher cache holds {len(self.teacher)} rows but the training split has "
                                 f"{len(data.y_train)} samples; compute it on this data's x_train")
            if self.teacher.logits.shape[1] != data.classes:
                raise ValueError(f"teacher outputs {self.teacher.logits.shape[1]} classes but data "
                                 f"{data.name!r} has {data.classes}")
        # A live teacher's classes are checked on its first batch: a forward pass just for the check
        # would cost a ResNet-18 teacher a few percent of a short run.
        self.expect = (data.classes, data.name)

    def forward(self, out, batch):
        alpha = self.alpha if self.labels else 1.0
        if isinstance(self.teacher, TeacherCache):
            targets = self.teacher.targets(batch, self.T, alpha)  # once per (T, α), not once per step
        else:
            logits = self.teacher(batch)
            if self.expect and logits.shape[-1] != self.expect[0]:
                raise ValueError(f"teacher outputs {logits.shape[-1]} classes but data {self.expect[1]!r} has "
                                 f"{self.expect[0]}; distill from a teacher trained on it")
            targets = losses.hinton_targets(logits, self.T, alpha)
        return losses.HintonLoss.apply(logits_of(out), targets, batch.y if self.labels else None, self.T, alpha)


def describe(objective):
    """A JSON-able description of an objective, for cache keys."""
    if objective is None:
        return "CrossEntropy()"
    items = {**vars(objective), **getattr(objective, "_modules", {})}
    fields = {k: v for k, v in items.items() if not k.startswith("_") and k != "training"
              and isinstance(v, (int, float, str, bool))}
    # Which teacher and which schedule matter as much as T: two teachers must not share an entry.
    fields.update({k: fingerprint(v) for k, v in items.items() if not k.startswith("_")
                   and (isinstance(v, (FrozenTeacher, TeacherCache)) or inspect.isfunction(v))})
    return f"{type(objective).__name__}({sorted(fields.items())})"


def fingerprint(value):
    """A short hash of a frozen teacher's weights, cached outputs, or a function's source."""
    if inspect.isfunction(value):
        try:
            return cache.key_of(inspect.getsource(value))
        except (OSError, TypeError):
            return cache.key_of(repr(value))  # no source: never matches another run, never a wrong hit
    if isinstance(value, FrozenTeacher):
        return cache.tensor_hash(*value.model.state_dict().values(), text=repr(value.model))
    return cache.tensor_hash(value.logits)
