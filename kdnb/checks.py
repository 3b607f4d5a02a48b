"""Argument checks with clear messages: each raises naming the argument, its value and the
allowed range, so a reader's typo fails at the call, not ten epochs later."""
import math

import torch


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


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_shape(shape):
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"in_shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(shape)


def check_classes(classes):
    """A class count: an integer >= 2."""
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2, got {classes!r}")
    return classes


def check_correct_prob(correct_prob, classes, high_open=False):
    """A virtual teacher's probability on the label: in [1/classes, 1] (``high_open``: below 1).
    Below 1/classes another class would be likelier than the label."""
    a = check_number("correct_prob", correct_prob)
    if a < 1 / classes or a > 1 or (high_open and a == 1):
        raise ValueError(f"correct_prob must be in [1/classes, 1{')' if high_open else ']'} = [{1 / classes:.4g}, "
                         f"1{')' if high_open else ']'} for classes={classes} (the label at least as likely as "
                         f"any other class), got {correct_prob!r}")
    return a
