"""Methods without a trained teacher: label smoothing (``CrossEntropy(label_smoothing=ε)``) and
Tf-KD's virtual teacher (Yuan et al. 2020), a hand-made distribution distilled with the Hinton loss."""
from .. import losses
from ..checks import check_alpha, check_number, check_T
from .base import Method


class VirtualTeacher(Method):
    """Hinton KD from a teacher that puts ``correct_prob`` on the true class and spreads the rest
    evenly: ``alpha · T² · KL(virtual_T || student_T) + (1 − alpha) · CE``, one term ``"kd"``."""

    def __init__(self, correct_prob=0.9, T=4.0, alpha=0.9):
        super().__init__()
        self.correct_prob = check_number("correct_prob", correct_prob, low=0, high=1, low_open=True, high_open=True)
        self.T, self.alpha = check_T(T), check_alpha(alpha)

    def losses(self, logits, batch):
        teacher = losses.virtual_teacher_logits(batch.y, logits.shape[1], self.correct_prob)
        return {"kd": losses.hinton_loss(logits, teacher, batch.y, self.T, self.alpha)}
