"""Methods without a trained teacher (Yuan et al. 2020, "Tf-KD"): label smoothing, and a virtual
teacher, a hand-made distribution distilled with the Hinton loss. The self-teacher (a trained
student teaching a fresh copy of itself) needs no method of its own: it is ``Distill`` from that
student (``kdnb.chains`` trains such generations).

At T = 1 the two are one method: ``VirtualTeacher(a, T=1, alpha=α)`` and
``LabelSmoothing(ε)`` with ε = α·K·(1 − a)/(K − 1) have the same gradient, and losses that differ
by the constant α·H(p^v) (``kdnb.losses.virtual_teacher_epsilon``).
"""
import torch

from .. import losses
from ..checks import check_alpha, check_classes, check_correct_prob, check_number, check_T
from .base import Method
from .hinton import CrossEntropy


class LabelSmoothing(CrossEntropy):
    """Cross-entropy with label-smoothed targets (1 − ε)·onehot + ε/K (Szegedy et al. 2016), one
    term ``"ls"``: ``CrossEntropy(label_smoothing=ε)``, named for what it is."""

    def __init__(self, epsilon=0.1):
        super().__init__(label_smoothing=check_number("epsilon", epsilon, low=0, high=1))

    @property
    def epsilon(self):
        return self.label_smoothing

    def losses(self, logits, batch):
        return {"ls": super().losses(logits, batch)["ce"]}


class VirtualTeacher(Method):
    """Hinton KD from a teacher that puts ``correct_prob`` (a) on the true class and spreads the rest
    evenly (``kdnb.losses.virtual_teacher_targets``):
    ``alpha · T² · KL(virtual_T || student_T) + (1 − alpha) · CE``, one term ``"kd"``.

    a must lie in [1/K, 1) for K classes (checked when the class count is known: at ``setup``, or at
    the first batch of a call by hand); a = 1 would be the label itself, which is ``CrossEntropy``.
    """

    def __init__(self, correct_prob=0.9, T=4.0, alpha=0.9):
        super().__init__()
        self.correct_prob = check_number("correct_prob", correct_prob, low=0, high=1, low_open=True,
                                         high_open=True)
        self.T, self.alpha = check_T(T), check_alpha(alpha)
        self._table = None

    def targets_table(self, classes, device=None, dtype=torch.float32):
        """The Hinton loss's teacher table (``kdnb.losses.hinton_targets``) of the K possible virtual
        teachers, ``(2K, K)``: column c is the teacher of a sample labelled c. A step gathers its
        labels' columns; nothing is built per step."""
        check_correct_prob(self.correct_prob, check_classes(classes), high_open=True)
        labels = torch.arange(classes, device=device)
        probs = losses.virtual_teacher_targets(labels, classes, self.correct_prob, dtype=dtype)
        return losses.hinton_targets(probs.log(), self.T, self.alpha)

    def setup(self, student, data):
        self._table = self.targets_table(data.classes)

    def losses(self, logits, batch):
        table = self._table
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32  # HintonLoss: ≥ fp32
        if table is None or table.shape[1] != logits.shape[1] or table.device != logits.device \
                or table.dtype != dtype:
            table = self._table = self.targets_table(logits.shape[1], logits.device, dtype)
        targets = table.index_select(1, batch.y)
        return {"kd": losses.HintonLoss.apply(logits, targets, batch.y, self.T, self.alpha)}

    def label_smoothing(self, classes):
        """The :class:`LabelSmoothing` that trains exactly like this teacher; only at T = 1."""
        if self.T != 1:
            raise ValueError(f"a virtual teacher equals label smoothing at T = 1 only, got T={self.T!r}: "
                             f"its soft term then acts on the student's softened outputs softmax(z/T)")
        return LabelSmoothing(losses.virtual_teacher_epsilon(self.correct_prob, classes, self.alpha))
