"""Distillation losses: small pure functions of tensors.

Every public function checks its arguments and raises ``ValueError`` naming the argument,
its value and the allowed range, so a reader's typo fails at the call, not ten epochs later.
The KL is written from ``log_softmax`` terms (not ``F.kl_div``) so it batches under ``vmap``.
"""
import functools
import math

import torch
import torch.nn.functional as F

from .checks import (check_alpha, check_classes, check_correct_prob, check_labels, check_logits,  # noqa: F401
                     check_number, check_pair, check_T)


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


def hinton_targets(teacher_logits, T, alpha=1.0):
    """The teacher's whole part of the Hinton loss at (T, α), per sample and classes first: the
    rows α·T²·q and log q, with q = softmax(t/T). For logits ``(..., N, K)`` the table is
    ``(..., 2K, N)``. A cache computes it once per (T, α); a step gathers its batch's B columns
    in one ``index_select``. ``T`` and ``alpha`` are numbers, or tensors of per-member values
    (shape ``(M,)``, giving ``(M, 2K, N)``)."""
    if isinstance(T, torch.Tensor):
        T, alpha = T[..., None, None], alpha[..., None, None]
    # × 1/T, as HintonLoss scales the student: equal logits then give a KL of exactly 0.
    log_q = log_softmax(teacher_logits * (1 / T))
    return torch.cat((alpha * T * T * log_q.exp(), log_q), -1).transpose(-1, -2).contiguous()


def _hinton_weights(T, alpha):
    """The mixing weights of HintonLoss's gradient; numbers or per-member tensors alike."""
    d = alpha * T + 1 - alpha
    return (1 - alpha) / d, -1 / (T * d), d  # mix of p_T and p, weight of α·T²·q, sum of the weights


@functools.lru_cache(maxsize=256)
def _hinton_constants(T, alpha, B, dims, dtype, device):
    # Made once per (T, α, batch size): building even a tiny tensor costs as much as a kernel.
    mix, q_weight, d = _hinton_weights(T, alpha)
    scale = torch.tensor([1 / T, 1.0], dtype=dtype, device=device).view((2,) + (1,) * dims)
    onehot_weight = torch.full((1,) * (dims - 1) + (B,), -mix, dtype=dtype, device=device)
    q_weight = torch.tensor(q_weight, dtype=dtype, device=device)  # a tensor, as a member's is: one addcmul_ for both
    return scale, onehot_weight, mix, q_weight, d / B


class HintonLoss(torch.autograd.Function):
    """α·T²·KL(q‖p_T) + (1 − α)·CE(p, y) as one autograd node with its closed-form gradient

        ∂loss/∂s = [α·T·(p_T − q) + (1 − α)·(p − onehot(y))] / B,   p_T = softmax(s/T), p = softmax(s).

    Written out (``_kd`` + ``_ce``) the loss is some thirty small autograd ops, whose fixed cost
    made a KD step of a small student half as costly again as a CE step. Here the teacher's part
    comes precomputed (:func:`hinton_targets`), both softmaxes are one kernel and the gradient is
    formed in the forward pass: a dozen kernels in all. ``s`` is ``(..., B, K)`` and ``targets``
    ``(..., 2K, B)``; leading dims are the members of a stacked grid, each with its own ``T``
    and ``alpha`` (numbers, or tensors of shape ``s.shape[:-2]``); the loss has shape
    ``s.shape[:-2]``. ``labels=None`` is pure KD, for targets made with α = 1.
    ``weights`` (``(..., B)`` of 0 and 1; per-member T and α only) drops padded samples: a
    stacked member whose batch is shorter than the others' averages over its own samples
    (``kdnb.sweep``'s members on training sets of different sizes).
    tests/test_losses.py checks value and gradient against the written-out loss."""

    @staticmethod
    def forward(ctx, s, targets, labels, T, alpha, weights=None):
        if s.dtype in (torch.float16, torch.bfloat16):  # logits under CUDA autocast: softmaxes in fp32
            s = s.float()  # (autograd casts the gradient back to the logits' dtype)
        B, K = s.shape[-2:]
        per_member = isinstance(T, torch.Tensor)
        if labels is None:
            alpha = torch.ones_like(T) if per_member else 1.0
        if per_member:  # broadcast over (classes, batch)
            mix, q_weight, d = _hinton_weights(T, alpha)
            mix, q_weight, grad_scale = mix[..., None, None], q_weight[..., None, None], d / B
            scale = torch.stack((1 / T, torch.ones_like(T)))[..., None, None]
            onehot_weight = (-mix).expand(s.shape[:-2] + (1, B))
        else:
            scale, onehot_weight, mix, q_weight, grad_scale = _hinton_constants(
                float(T), float(alpha), B, s.dim(), s.dtype, s.device)
        # Classes first: PyTorch's CPU softmax over a last dim of ~10 is several times slower
        # than over a leading one. log p_T and log p come out of one kernel.
        log_p_both = (s.transpose(-1, -2) * scale).log_softmax(-2)
        weighted_q, log_q = targets[..., :K, :], targets[..., K:, :]
        if weights is not None and not per_member:
            raise ValueError("HintonLoss: weights are for stacked members, whose T and alpha are tensors")
        kl = weighted_q * (log_q - log_p_both[0])  # α·T²·KL(q‖p_T), per class and sample
        loss = kl.sum((-2, -1)) if weights is None else (kl.sum(-2) * weights).sum(-1)
        p_both = log_p_both.exp()
        # [α·T·p_T + (1 − α)·p − α·T·q − (1 − α)·onehot(y)] / (α·T + 1 − α): the gradient, times B / that sum.
        # α·T·q is the table's α·T²·q over T: one table row serves the loss and the gradient.
        grad = torch.lerp(p_both[0], p_both[1], mix).addcmul_(weighted_q, q_weight)
        if labels is not None:
            at = labels.unsqueeze(-2)
            log_p_y = log_p_both[1].gather(-2, at)  # minus CE, per sample
            nll = log_p_y.sum((-2, -1)) if weights is None else (log_p_y.squeeze(-2) * weights).sum(-1)
            loss = loss - (1 - alpha) * nll if per_member else loss.sub_(nll, alpha=1 - alpha)
            grad.scatter_add_(-2, at, onehot_weight)
        n = B
        if weights is not None:  # padded samples: no loss, no gradient, not counted
            n = weights.sum(-1)
            grad, grad_scale = grad * weights.unsqueeze(-2), d / n
        ctx.save_for_backward(grad)
        ctx.grad_scale = grad_scale
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError("HintonLoss has no second derivative (backward with create_graph=True); "
                               "use kdnb.losses._hinton_written_out")
        grad, = ctx.saved_tensors
        scale = grad_loss * ctx.grad_scale
        return (grad * scale[..., None, None]).transpose(-1, -2), None, None, None, None, None


def _hinton(student_logits, teacher_logits, labels, T, alpha):
    alpha = alpha if labels is not None else (torch.ones_like(T) if isinstance(T, torch.Tensor) else 1.0)
    return HintonLoss.apply(student_logits, hinton_targets(teacher_logits, T, alpha), labels, T, alpha)


def _hinton_written_out(student_logits, teacher_logits, labels, T, alpha):
    # The definition, op by op: what HintonLoss must equal.
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
        labels = labels.long()  # int32 and uint8 labels are allowed; gather wants int64
    return _hinton(student_logits, teacher_logits, labels, T, alpha)


def smooth_labels(labels, classes, epsilon, dtype=torch.float32):
    """One-hot labels mixed with the uniform distribution: (1 − ε)·onehot + ε/K, in ``dtype`` (that
    of the logits they are compared with)."""
    check_number("epsilon", epsilon, low=0, high=1)
    return F.one_hot(labels, classes).to(dtype) * (1 - epsilon) + epsilon / classes


def virtual_teacher_logits(labels, classes, correct_prob=0.9):
    """Tf-KD's hand-made teacher (Yuan et al. 2020): probability ``correct_prob`` on the right
    class, the rest spread evenly, returned as logits so it plugs into ``hinton_loss``."""
    check_correct_prob(correct_prob, check_classes(classes), high_open=True)  # a = 1: log 0
    return virtual_teacher_targets(labels, classes, correct_prob).log()


def virtual_teacher_targets(labels, classes, correct_prob=0.9, dtype=None):
    """Tf-KD's virtual teacher (Yuan et al. 2020) as a distribution, one row per label: probability
    ``correct_prob`` (a) on the label and (1 − a)/(K − 1) on each of the other K − 1 classes, so
    every row sums to 1. a = 1/K is the uniform distribution, a = 1 the one-hot label.
    ``dtype``: the rows' (default: torch's default float dtype)."""
    classes = check_classes(classes)
    a = check_correct_prob(correct_prob, classes)
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.uint8) \
            or labels.dim() != 1:
        got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) \
            else type(labels).__name__
        raise TypeError(f"labels must be a 1-D integer tensor of class indices, got {got}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes - 1}] for classes={classes}, got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    probs = torch.full((len(labels), classes), (1 - a) / (classes - 1), dtype=dtype, device=labels.device)
    return probs.scatter_(1, labels.long()[:, None], a)


def label_smoothing_loss(logits, labels, epsilon):
    """Cross-entropy with the label-smoothed targets (1 − ε)·onehot + ε/K, batch-averaged:
    ``F.cross_entropy(logits, labels, label_smoothing=ε)`` written out."""
    check_logits("logits", logits)
    check_labels(labels, logits)
    q = smooth_labels(labels.long(), logits.shape[1], epsilon, logits.dtype)
    return -(q * F.log_softmax(logits, -1)).sum(-1).mean()


def virtual_teacher_epsilon(correct_prob, classes, alpha=1.0):
    """The label smoothing ε that trains like a virtual teacher at T = 1:
    α·KL(p^v ‖ p) + (1 − α)·CE(p, y) = CE(p, (1 − ε)·onehot + ε/K) − α·H(p^v), with
    ε = α·K·(1 − a)/(K − 1). Same gradient; the losses differ by the constant α·H(p^v)."""
    classes = check_classes(classes)
    a = check_correct_prob(correct_prob, classes)
    return check_alpha(alpha) * classes * (1 - a) / (classes - 1)


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
