"""Per-token distillation of a language model, as methods of the protocol (``kdnb.methods.base``).

A language model's output at each position is a distribution over the next token, so every loss of
the logit methods applies per token. With ``p`` the teacher's next-token distribution and ``q`` the
student's, at temperature T (both softened by T):

* **word-level KD** (forward KL, Hinton's loss per token; Kim & Rush 2016): ``T² · KL(p_T ‖ q_T)``,
  mass-covering: a token the teacher gives mass costs the student dearly if it gives none;
* **reverse KL** (MiniLLM, Gu et al. 2024): ``T² · KL(q_T ‖ p_T)``, mode-seeking: the student is
  charged only where it puts mass;
* **sequence-level KD** (Kim & Rush 2016): cross-entropy on sequences the teacher *sampled*;
* **on-policy distillation** (GKD, Agarwal et al. 2024): the student samples, the teacher gives
  its next-token distribution at each prefix of the student's own sequences, and the student
  descends a per-token divergence there (reverse KL by default).

Each method says where its training sequences come from (``source``: ``"data"``, ``"teacher"`` or
``"student"``); :func:`kdnb.lm.fit` draws them. Logits are (..., V) with any leading axes; a loss
is the mean over positions of each member (the first axis, for a stack of members) summed over the
members, so each member's gradient is its own run's.
"""
import torch
import torch.nn.functional as F

from ..checks import check_alpha, check_T
from .base import Method

DIVERGENCES = ("forward", "reverse")


def check_logit_pair(student_logits, teacher_logits):
    for name, t in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() < 1 or t.shape[-1] < 2:
            raise ValueError(f"{name} must have shape (..., vocab >= 2), got {tuple(t.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits shape "
                         f"{tuple(student_logits.shape)}")


def softened(student_logits, teacher_logits, T):
    """``(log q_T, log p_T, T)``: both distributions softened by a checked T, the teacher's out of
    the gradient graph."""
    check_logit_pair(student_logits, teacher_logits)
    T = check_T(T)
    return F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits.detach() / T, -1), T


def forward_kl(student_logits, teacher_logits, T=1.0):
    """Per position: ``T² · Σ_v p_T(v) (log p_T(v) − log q_T(v))``, the word-level KD loss."""
    log_q, log_p, T = softened(student_logits, teacher_logits, T)
    return T * T * (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl(student_logits, teacher_logits, T=1.0):
    """Per position: ``T² · Σ_v q_T(v) (log q_T(v) − log p_T(v))``, MiniLLM's per-token loss."""
    log_q, log_p, T = softened(student_logits, teacher_logits, T)
    return T * T * (log_q.exp() * (log_q - log_p)).sum(-1)


def reverse_kl_grad(student_logits, teacher_logits, T=1.0):
    """The analytic gradient of :func:`reverse_kl` at each position with respect to the student's
    logits z: ``T · q_i (log q_i − log p_i − KL(q ‖ p))`` (softened by T)."""
    log_q, log_p, T = softened(student_logits, teacher_logits, T)
    q = log_q.exp()
    kl = (q * (log_q - log_p)).sum(-1, keepdim=True)
    return T * q * (log_q - log_p - kl)


def token_ce(student_logits, tokens):
    """Per position: ``−log q(token)``."""
    if not isinstance(student_logits, torch.Tensor) or not student_logits.is_floating_point():
        raise TypeError("student_logits must be a floating-point torch.Tensor")
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.shape != student_logits.shape[:-1]:
        raise ValueError(f"tokens must be an int64 tensor of shape {tuple(student_logits.shape[:-1])}, got "
                         f"{getattr(tokens, 'dtype', type(tokens).__name__)} "
                         f"{tuple(getattr(tokens, 'shape', ()))}")
    return -F.log_softmax(student_logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def per_member(values):
    """Mean over each member's positions (axis 0 is the member), summed over members; a tensor of
    per-position values with fewer than 2 axes is averaged."""
    return values.flatten(1).mean(1).sum() if values.dim() > 1 else values.mean()


def check_teacher(teacher):
    if not isinstance(teacher, torch.nn.Module) or getattr(teacher, "members", None) != 1:
        raise TypeError(f"teacher must be a one-member kdnb.lm.TinyLM (or a module with members = 1 "
                        f"mapping tokens (1, batch, t) to logits), got {type(teacher).__name__}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_logits(teacher, x):
    """The frozen teacher's logits on sequences x (members, batch, t), shaped like the student's."""
    with torch.no_grad():
        M, B, t = x.shape
        return teacher(x.reshape(1, M * B, t)).reshape(M, B, t, -1)


class TokenCE(Method):
    """Next-token cross-entropy on the data: the student alone."""
    source = "data"

    def losses(self, logits, batch):
        return {"ce": per_member(token_ce(logits, batch.y))}


class WordKD(Method):
    """Word-level KD on the data's prefixes: ``α · T² · KL(p_T ‖ q_T) + (1 − α) · CE``."""
    source = "data"

    def __init__(self, teacher, alpha=1.0, T=1.0):
        super().__init__()
        self.teacher, self.alpha, self.T = check_teacher(teacher), check_alpha(alpha), check_T(T)

    def divergence(self, logits, t_logits):
        return forward_kl(logits, t_logits, self.T)

    def tabulate(self, data):
        """The teacher's logits on every row of the data (n, length), once: a batch of rows then
        looks its targets up (``batch.rows``) instead of running the teacher."""
        self._table = teacher_logits(self.teacher, data[None])[0]
        self._data = data

    def targets(self, batch):
        table = getattr(self, "_table", None)
        if table is not None and batch.rows is not None and torch.equal(self._data[batch.rows], batch.x):
            return table[batch.rows]
        return teacher_logits(self.teacher, batch.x)

    def losses(self, logits, batch):
        kd = per_member(self.divergence(logits, self.targets(batch)))
        if self.alpha == 1:
            return {"kd": kd}
        return {"kd": self.alpha * kd, "ce": (1 - self.alpha) * per_member(token_ce(logits, batch.y))}


class ReverseKD(WordKD):
    """Reverse KL per token on the data's prefixes: ``α · T² · KL(q_T ‖ p_T) + (1 − α) · CE``."""

    def divergence(self, logits, t_logits):
        return reverse_kl(logits, t_logits, self.T)


class SequenceKD(Method):
    """Sequence-level KD: next-token cross-entropy on sequences the teacher sampled."""
    source = "teacher"

    def losses(self, logits, batch):
        return {"ce": per_member(token_ce(logits, batch.y))}


class OnPolicy(Method):
    """On-policy distillation: on the student's own samples, a per-token divergence to the
    teacher's next-token distribution at each prefix (``divergence``: ``"reverse"`` or
    ``"forward"``), at temperature T."""
    source = "student"

    def __init__(self, teacher, divergence="reverse", T=1.0):
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        self.teacher, self.divergence, self.T = check_teacher(teacher), divergence, check_T(T)

    def losses(self, logits, batch):
        fn = reverse_kl if self.divergence == "reverse" else forward_kl
        return {"kd": per_member(fn(logits, teacher_logits(self.teacher, batch.x), self.T))}
