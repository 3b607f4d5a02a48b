"""The logit methods: cross-entropy alone, Hinton KD, and the control that trains on the
teacher's hard labels (its argmax) instead of its soft targets."""
import torch.nn.functional as F

from .. import losses
from ..checks import check_alpha, check_number, check_T
from ..teachers import FrozenTeacher, TeacherCache
from .base import Method, Stackable


def as_teacher(teacher):
    if isinstance(teacher, (TeacherCache, FrozenTeacher)):
        return teacher
    if hasattr(teacher, "parameters") and callable(teacher):  # an nn.Module
        return FrozenTeacher(teacher)
    if callable(teacher):
        return teacher
    raise TypeError(f"teacher must be a TeacherCache, an nn.Module or a callable(batch), got {type(teacher).__name__}")


def value_at(v, epoch, epochs):
    """A hyper-parameter that is a number or a schedule ``f(epoch, epochs) -> number`` (an
    :class:`ExpDecay`, or any function of the epoch and the run's number of epochs)."""
    return v(epoch, epochs) if callable(v) else v


class ExpDecay:
    """The schedule of ``Distill``'s T or α: ``max(floor, start · rate^epoch)``, epoch by epoch
    (seed 002's "T = 0.5, 0.3, 0.95": start, floor, rate). Called as ``schedule(epoch, epochs)``."""

    def __init__(self, start, floor, rate):
        self.start = check_number("start", start, low=0, low_open=True)
        self.floor = check_number("floor", floor, low=0, low_open=True)
        self.rate = check_number("rate", rate, low=0, high=1, low_open=True)

    def __call__(self, epoch, epochs):
        return max(self.floor, self.start * self.rate ** epoch)

    def __repr__(self):
        return f"ExpDecay({self.start}, floor={self.floor}, rate={self.rate})"


class CrossEntropy(Method):
    """The baseline: cross-entropy with the labels (optionally label-smoothed)."""

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0, high=1)

    def losses(self, logits, batch):
        return {"ce": F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)}


class TeacherOutputs(Method):
    """What every teacher-based method shares: the teacher (a :class:`TeacherCache`, a model, which is
    wrapped in :class:`FrozenTeacher`, or any ``callable(batch) -> logits``) and its class check."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = as_teacher(teacher)
        self._expect = None  # (classes, data name), set by setup

    def setup(self, student, data):
        if isinstance(self.teacher, TeacherCache):
            if len(self.teacher) != len(data.y_train):
                raise ValueError(f"teacher cache holds {len(self.teacher)} rows but the training split has "
                                 f"{len(data.y_train)} samples; compute it on this data's x_train")
            if self.teacher.logits.shape[1] != data.classes:
                raise ValueError(f"teacher outputs {self.teacher.logits.shape[1]} classes but data "
                                 f"{data.name!r} has {data.classes}")
        # A live teacher's classes are checked on its first batch: a forward pass just for the check
        # would cost a ResNet-18 teacher a few percent of a short run.
        self._expect = (data.classes, data.name)

    def teacher_logits(self, batch):
        logits = self.teacher(batch)
        if self._expect and logits.shape[-1] != self._expect[0]:
            raise ValueError(f"teacher outputs {logits.shape[-1]} classes but data {self._expect[1]!r} has "
                             f"{self._expect[0]}; distill from a teacher trained on it")
        return logits


class Distill(TeacherOutputs):
    """Hinton KD: ``alpha · T² · KL(teacher_T || student_T) + (1 − alpha) · CE``, one term ``"kd"``.

    With ``labels=False`` the student never sees a label: pure KD on an unlabeled transfer set.
    ``T`` and ``alpha`` may be schedules ``f(epoch, epochs) -> value`` (:class:`ExpDecay`).
    """

    def __init__(self, teacher, T=4.0, alpha=0.9, labels=True):
        super().__init__(teacher)
        self.T, self.alpha, self.labels = T, alpha, labels
        self.start_epoch(0, 1)

    def start_epoch(self, epoch, epochs):
        self._T = check_T(value_at(self.T, epoch, epochs))
        self._alpha = check_alpha(value_at(self.alpha, epoch, epochs)) if self.labels else 1.0

    def losses(self, logits, batch):
        T, alpha = self._T, self._alpha
        if isinstance(self.teacher, TeacherCache):
            targets = self.teacher.targets(batch, T, alpha)  # once per (T, α), not once per step
        else:
            targets = losses.hinton_targets(self.teacher_logits(batch), T, alpha)
        return {"kd": losses.HintonLoss.apply(logits, targets, batch.y if self.labels else None, T, alpha)}


class TeacherLabels(TeacherOutputs):
    """Cross-entropy with the teacher's *hard* labels (its argmax), no labels of the data: the
    control that tells what the soft targets add over the teacher's decisions."""

    def losses(self, logits, batch):
        return {"ce_teacher": F.cross_entropy(logits, self.teacher_logits(batch).argmax(1))}


class StackedHinton(Stackable):
    """:class:`Distill` (and, for a member with ``labels="teacher"``, :class:`TeacherLabels`, which
    is Hinton's loss at α = 0 on the teacher's argmax) with each member's own ``alpha`` and ``T``:
    the stacked loop's default loss. Each member's share of the loss that depends on the teacher
    alone (:func:`kdnb.losses.hinton_targets`) is computed once per sample."""
    params = ("alpha", "T")

    def check(self, member):
        check_alpha(member["alpha"])
        check_T(member["T"])
        if member.get("labels") == "teacher" and member["alpha"] != 0:
            raise ValueError(f"labels='teacher' is cross-entropy with the teacher's hard labels: alpha must be 0, "
                             f"got {member['alpha']!r}")

    def targets(self, logits, params):
        # (n, members, 2 × classes): a step gathers whole rows, not 2 × classes × members strided
        # columns (a tenth of the step when it did)
        return losses.hinton_targets(logits, params["T"], params["alpha"]).permute(2, 0, 1).contiguous()

    def loss(self, out, targets, labels, params, weights):
        return losses.HintonLoss.apply(out, targets.transpose(1, 2), labels, params["T"], params["alpha"], weights)

    def method(self, teacher, member):
        return TeacherLabels(teacher) if member.get("labels") == "teacher" else \
            Distill(teacher, member["T"], member["alpha"])

    def term(self, member):
        return "ce_teacher" if member.get("labels") == "teacher" else "kd"
