"""Distillation losses: small pure functions of tensors.

Every public function checks its arguments and raises ``ValueError`` naming the argument,
its value and the allowed range, so a reader's typo fails at the call, not ten epochs later.
The KL is written from ``log_softmax`` terms (not ``F.kl_div``) so it batches under ``vmap``.
"""
import math

import torch
import torch.nn.functional as F


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise a clear error unless ``value`` is a finite real number inside the given range."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    # An unbounded end is open: infinities are refused like any other out-of-range value.
    lo = "(" if low_open or low is None else "["
    hi = ")" if high_open or high is None else "]"
    allowed = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {allowed}, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")
    return float(value)


def check_T(T):
    return check_number("T", T, low=0, low_open=True)


def check_alpha(alpha):
    return check_number("alpha", alpha, low=0, high=1)


def check_logits(name, logits):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"{name} must have shape (batch >= 1, classes >= 2), got {tuple(logits.shape)}")
    if not torch.isfinite(logits).all():
        where = (~torch.isfinite(logits)).nonzero()[0].tolist()
        raise ValueError(f"{name} must be finite; it holds NaN or infinite values, got "
                         f"{logits[tuple(where)].item()} at {where}")


def check_pair(student_logits, teacher_logits):
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits shape "
            f"{tuple(student_logits.shape)} (same batch and class count)")


def check_labels(labels, logits):
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise TypeError(f"labels must be an integer tensor of class indices, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match the logits, got {tuple(labels.shape)}")
    classes = logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes - 1}] for {classes} classes, "
                         f"got values in [{labels.min().item()}, {labels.max().item()}]")


def soft_targets(logits, T=1.0):
    """softmax(logits / T): the teacher's distribution softened by temperature T."""
    check_T(T)
    check_logits("logits", logits)
    return F.softmax(logits / T, dim=-1)


def kl_batchmean(log_p, log_q):
    """KL(p || q) summed over classes and averaged over the batch (``batchmean``)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def log_softmax(logits):
    """``log_softmax`` over the classes (the last dim). PyTorch's CPU kernel is several times
    slower over a last dim shorter than 16 than over a leading one, and a stacked grid of students
    (``kdnb.sweep``) spends a third of its step there; so few classes are moved to the front first."""
    if logits.device.type == "cpu" and logits.dim() >= 2 and logits.shape[-1] < 16:
        return logits.transpose(-1, -2).log_softmax(-2).transpose(-1, -2)
    return F.log_softmax(logits, dim=-1)


def _ce(logits, labels):
    # F.cross_entropy(logits, labels), written out: its nll_loss batches slowly under vmap.
    return -log_softmax(logits).gather(-1, labels.long()[:, None]).mean()


def _kd(student_logits, teacher_logits, T):
    log_p_teacher = log_softmax(teacher_logits / T)
    log_p_student = log_softmax(student_logits / T)
    # T^2 keeps the soft gradients the same size as T changes: they scale as 1/T^2 (Hinton §2).
    return T * T * kl_batchmean(log_p_teacher, log_p_student)


def kd_loss(student_logits, teacher_logits, T=4.0):
    """T^2 · KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    T = check_T(T)
    check_pair(student_logits, teacher_logits)
    return _kd(student_logits, teacher_logits, T)


def _hinton(student_logits, teacher_logits, labels, T, alpha):
    soft = _kd(student_logits, teacher_logits, T)
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * _ce(student_logits, labels)


def hinton_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.9):
    """alpha · T^2 · KL + (1 − alpha) · CE.  With ``labels=None`` (unlabeled data) it is pure KD."""
    T, alpha = check_T(T), check_alpha(alpha)
    check_pair(student_logits, teacher_logits)
    if labels is not None:
        check_labels(labels, student_logits)
    return _hinton(student_logits, teacher_logits, labels, T, alpha)


def smooth_labels(labels, classes, epsilon):
    """One-hot labels mixed with the uniform distribution: (1 − ε)·onehot + ε/K."""
    check_number("epsilon", epsilon, low=0, high=1)
    return F.one_hot(labels, classes).float() * (1 - epsilon) + epsilon / classes


def virtual_teacher_logits(labels, classes, correct_prob=0.9):
    """Tf-KD's hand-made teacher (Yuan et al. 2020): probability ``correct_prob`` on the right
    class, the rest spread evenly, returned as logits so it plugs into ``hinton_loss``."""
    check_number("correct_prob", correct_prob, low=1 / classes, high=1, high_open=True)
    other = (1 - correct_prob) / (classes - 1)
    probs = torch.full((labels.shape[0], classes), other, device=labels.device)
    probs.scatter_(1, labels[:, None], correct_prob)
    return probs.log()


def hint_loss(student_features, teacher_features):
    """FitNets hint: mean squared error between (projected) student and teacher features."""
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"teacher_features shape {tuple(teacher_features.shape)} must equal "
                         f"student_features shape {tuple(student_features.shape)}; add a projector")
    return F.mse_loss(student_features, teacher_features)


def attention_map(features, p=2):
    """Zagoruyko & Komodakis: channel-pooled |A|^p, flattened and L2-normalised per sample."""
    a = features.abs().pow(p).mean(1).flatten(1)
    return F.normalize(a, dim=1)


def attention_loss(student_features, teacher_features, p=2):
    s, t = attention_map(student_features, p), attention_map(teacher_features, p)
    if s.shape != t.shape:
        raise ValueError(f"attention maps differ in size: student {tuple(s.shape)} vs teacher "
                         f"{tuple(t.shape)}; tap layers with the same spatial size")
    return (s - t).pow(2).mean()
