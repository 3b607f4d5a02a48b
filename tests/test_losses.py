"""kdnb.losses: the KD loss against closed forms, its T^2 scaling, and its argument checks."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdnb import losses
from kdnb.losses import hinton_loss, kd_loss, soft_targets


def logits(n=16, k=10, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g, dtype=dtype)


def numpy_kd(s, t, T):
    """T^2 · KL(p_t || p_s) per sample, averaged over the batch, in plain NumPy."""
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    p_s, p_t = softmax(s / T), softmax(t / T)
    return T * T * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
def test_kd_loss_equals_numpy_closed_form(T):
    s, t = logits(seed=1), logits(seed=2)
    expected = numpy_kd(s.numpy(), t.numpy(), T)
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_equals_torch_kl_div_batchmean(T):
    s, t = logits(seed=3), logits(seed=4)
    ref = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True)
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * ref.item(), rel=1e-10)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_kd_loss_not_divided_by_class_count():
    k, T = 10, 4.0
    s, t = logits(k=k, seed=5), logits(k=k, seed=6)
    # reduction='mean' averages over batch AND classes; batchmean only over the batch.
    per_element = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="mean", log_target=True)
    loss = kd_loss(s, t, T).item()
    assert loss == pytest.approx(T * T * per_element.item() * k, rel=1e-10)
    assert loss > 5 * T * T * per_element.item()


def test_kd_loss_of_identical_logits_is_zero():
    z = logits(seed=7)
    assert kd_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    # A per-sample constant shift does not change a softmax either.
    assert kd_loss(z + 5.0, z, 4.0).item() == pytest.approx(0.0, abs=1e-10)


def test_kd_loss_is_non_negative_on_random_logits():
    for seed in range(50):
        s = logits(n=8, k=3 + seed % 7, scale=0.1 + seed, seed=seed, dtype=torch.float32)
        t = logits(n=8, k=3 + seed % 7, scale=0.1 + seed, seed=1000 + seed, dtype=torch.float32)
        for T in (0.5, 1.0, 4.0):
            assert kd_loss(s, t, T).item() >= -1e-6


def test_kd_loss_is_positive_when_distributions_differ():
    assert kd_loss(logits(seed=8), logits(seed=9), 2.0).item() > 0.01


def test_hinton_alpha_ends():
    s, t = logits(seed=10), logits(seed=11)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(0))
    assert hinton_loss(s, t, y, T=4.0, alpha=0.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-12)
    assert hinton_loss(s, t, y, T=4.0, alpha=1.0).item() == pytest.approx(kd_loss(s, t, 4.0).item(), rel=1e-12)
    mixed = 0.3 * kd_loss(s, t, 4.0) + 0.7 * F.cross_entropy(s, y)
    assert hinton_loss(s, t, y, T=4.0, alpha=0.3).item() == pytest.approx(mixed.item(), rel=1e-12)


def test_hinton_without_labels_is_pure_kd():
    s, t = logits(seed=12), logits(seed=13)
    for alpha in (0.0, 0.5, 1.0):
        assert hinton_loss(s, t, None, T=3.0, alpha=alpha).item() == pytest.approx(kd_loss(s, t, 3.0).item())


def soft_grad_norm(T, t_squared=True):
    s = logits(n=64, k=10, scale=1.0, seed=14).requires_grad_(True)
    t = logits(n=64, k=10, scale=1.0, seed=15)
    loss = kd_loss(s, t, T) if t_squared else losses.kl_batchmean(F.log_softmax(t / T, 1), F.log_softmax(s / T, 1))
    loss.backward()
    return s.grad.norm().item()


def test_soft_gradient_keeps_its_size_across_T():
    norms = [soft_grad_norm(T) for T in (4, 8, 16)]
    assert max(norms) / min(norms) < 1.25, norms
    # The reason for T^2: without it the gradient shrinks like 1/T^2 (16x from T=4 to T=16).
    bare = [soft_grad_norm(T, t_squared=False) for T in (4, 8, 16)]
    assert bare[0] / bare[2] == pytest.approx(16, rel=0.2)
    assert bare[0] / bare[1] == pytest.approx(4, rel=0.2)


def test_high_temperature_approaches_logit_matching():
    # Hinton et al. 2015 §2.1: for zero-mean logits and T >> |z|, T^2·KL ≈ ||z_s − z_t||^2 / (2K).
    k, T = 10, 100.0
    s, t = logits(k=k, seed=16), logits(k=k, seed=17)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    matching = ((s - t) ** 2).sum(1).mean().item() / (2 * k)
    assert kd_loss(s, t, T).item() == pytest.approx(matching, rel=2e-2)
    # ... and the approximation is poor at T = 1, so the check above is not trivially true.
    assert kd_loss(s, t, 1.0).item() != pytest.approx(matching, rel=0.2)


def test_soft_targets():
    z = logits(seed=18)
    assert torch.allclose(soft_targets(z, 1.0), F.softmax(z, 1))
    p_hot, p_soft = soft_targets(z, 1.0), soft_targets(z, 10.0)
    assert torch.allclose(p_soft.sum(1), torch.ones(16, dtype=z.dtype))
    # A higher temperature gives a flatter distribution: higher entropy on every row.
    entropy = lambda p: -(p * p.log()).sum(1)
    assert (entropy(p_soft) > entropy(p_hot)).all()


@pytest.mark.parametrize("T", [0, -1.0, 0.0])
def test_bad_temperature(T):
    s = logits(seed=19)
    with pytest.raises(ValueError, match=r"T must be in \(0, inf\)"):
        kd_loss(s, s, T)
    with pytest.raises(ValueError, match=r"T must be in \(0, inf\)"):
        soft_targets(s, T)


@pytest.mark.parametrize("T", [math.nan, math.inf])
def test_non_finite_temperature(T):
    s = logits(seed=19)
    with pytest.raises(ValueError, match=r"T must be .*\(0, inf\)"):
        kd_loss(s, s, T)


def test_temperature_of_wrong_type():
    s = logits(seed=19)
    with pytest.raises(TypeError, match="T must be a real number"):
        kd_loss(s, s, "4")


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha(alpha):
    s, y = logits(seed=20), torch.zeros(16, dtype=torch.long)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]") as err:
        hinton_loss(s, s, y, T=4.0, alpha=alpha)
    assert repr(alpha) in str(err.value)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"teacher_logits shape \(16, 5\) must equal student_logits shape \(16, 10\)"):
        kd_loss(logits(k=10), logits(k=5), 4.0)
    with pytest.raises(ValueError, match=r"teacher_logits shape \(8, 10\)"):
        hinton_loss(logits(n=16), logits(n=8), torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"student_logits must have shape \(batch >= 1, classes >= 2\)"):
        kd_loss(torch.zeros(10), torch.zeros(10), 4.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits(bad):
    s, t = logits(seed=21), logits(seed=22)
    s_bad = s.clone()
    s_bad[3, 4] = bad
    with pytest.raises(ValueError, match="student_logits must be finite"):
        kd_loss(s_bad, t, 4.0)
    with pytest.raises(ValueError, match="teacher_logits must be finite"):
        hinton_loss(s, s_bad, torch.zeros(16, dtype=torch.long))


def test_labels_out_of_range():
    s = logits(k=10, seed=23)
    for bad in (10, -1):
        y = torch.zeros(16, dtype=torch.long)
        y[5] = bad
        with pytest.raises(ValueError, match=r"labels must be in \[0, 9\] for 10 classes") as err:
            hinton_loss(s, s, y)
        assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match=r"labels must have shape \(16,\)"):
        hinton_loss(s, s, torch.zeros(15, dtype=torch.long))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        hinton_loss(s, s, torch.zeros(16))


def test_loss_checks_accept_tensor_hyperparameters():
    s, t = logits(seed=24), logits(seed=25)
    assert kd_loss(s, t, torch.tensor(4.0)).item() == pytest.approx(kd_loss(s, t, 4.0).item())


def test_smooth_labels_and_virtual_teacher():
    y = torch.tensor([0, 3, 9])
    q = losses.smooth_labels(y, 10, 0.1)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert q[1, 3].item() == pytest.approx(0.9 + 0.01)
    p = F.softmax(losses.virtual_teacher_logits(y, 10, correct_prob=0.8), 1)
    assert torch.allclose(p[torch.arange(3), y], torch.full((3,), 0.8))
    assert torch.allclose(p.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="epsilon must be in"):
        losses.smooth_labels(y, 10, 1.5)
    with pytest.raises(ValueError, match="correct_prob must be in"):
        losses.virtual_teacher_logits(y, 10, correct_prob=1.0)


def test_hint_and_attention_losses():
    a, b = torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)
    assert losses.hint_loss(a, a).item() == 0
    assert losses.hint_loss(a, b).item() == pytest.approx(F.mse_loss(a, b).item())
    with pytest.raises(ValueError, match="teacher_features shape"):
        losses.hint_loss(a, torch.randn(4, 8, 4, 4))
    m = losses.attention_map(a)
    assert m.shape == (4, 25) and torch.allclose(m.norm(dim=1), torch.ones(4))
    # Attention transfer compares spatial maps: the channel count may differ.
    assert losses.attention_loss(a, torch.randn(4, 16, 5, 5)).item() >= 0
    with pytest.raises(ValueError, match="attention maps differ"):
        losses.attention_loss(a, torch.randn(4, 8, 4, 4))


# --- HintonLoss: the loss as one autograd node, against its definition written out op by op ---

@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("T,alpha", [(4.0, 0.9), (1.0, 0.0), (2.5, 1.0), (20.0, 0.3)])
def test_hinton_node_equals_the_written_out_loss_and_its_gradient(T, alpha, with_labels):
    s, t = logits(n=32, seed=3).requires_grad_(), logits(n=32, seed=4)
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(5)) if with_labels else None
    ref = losses._hinton_written_out(s, t, y, T, alpha)
    new = losses._hinton(s, t, y, T, alpha)
    (g_ref,), (g_new,) = torch.autograd.grad(ref, s), torch.autograd.grad(new, s)
    assert new.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(g_new, g_ref, rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda s: losses._hinton(s, t, y, T, alpha), s)


def test_hinton_node_gradient_is_the_closed_form():
    s, t, T, alpha = logits(n=8, seed=6).requires_grad_(), logits(n=8, seed=7), 3.0, 0.6
    y = torch.arange(8) % 10
    g, = torch.autograd.grad(losses._hinton(s, t, y, T, alpha), s)
    p_T, q, p = F.softmax(s / T, 1), F.softmax(t / T, 1), F.softmax(s, 1)
    closed = (alpha * T * (p_T - q) + (1 - alpha) * (p - F.one_hot(y, 10))) / 8
    torch.testing.assert_close(g, closed.detach(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("with_labels", [True, False])
def test_hinton_node_trains_a_stack_of_members_each_with_its_own_T_and_alpha(with_labels):
    M, B = 4, 16
    s, t = logits(n=M * B, seed=8).view(M, B, 10).requires_grad_(), logits(n=B, seed=9)
    y = torch.randint(0, 10, (B,), generator=torch.Generator().manual_seed(1))
    T, alpha = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=s.dtype), torch.tensor([0.0, 0.25, 0.9, 1.0], dtype=s.dtype)
    out = losses._hinton(s, t, y.expand(M, B) if with_labels else None, T, alpha)
    assert out.shape == (M,)
    g, = torch.autograd.grad(out.sum(), s)
    for i in range(M):
        ref = losses._hinton_written_out(s[i], t, y if with_labels else None, T[i].item(), alpha[i].item())
        g_ref, = torch.autograd.grad(ref, s)
        assert out[i].item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
        torch.testing.assert_close(g[i], g_ref[i], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("with_labels", [True, False])
def test_hinton_node_weights_drop_padded_samples(with_labels):
    # A stacked member whose batch is shorter is padded: its loss and gradient are those of its own samples.
    M, B, keep = 3, 12, [12, 7, 1]
    s, t = logits(n=M * B, seed=14).view(M, B, 10).requires_grad_(), logits(n=B, seed=15)
    y = torch.randint(0, 10, (M, B), generator=torch.Generator().manual_seed(2))
    T, alpha = torch.tensor([4.0, 1.0, 2.0], dtype=s.dtype), torch.tensor([0.9, 0.0, 0.5], dtype=s.dtype)
    w = torch.stack([torch.arange(B) < k for k in keep]).to(s.dtype)
    targets = losses.hinton_targets(t, T, alpha if with_labels else torch.ones_like(T))
    out = losses.HintonLoss.apply(s, targets, y if with_labels else None, T, alpha, w)
    g, = torch.autograd.grad(out.sum(), s)
    for i, k in enumerate(keep):
        ref = losses._hinton_written_out(s[i, :k], t[:k], y[i, :k] if with_labels else None, T[i].item(),
                                         alpha[i].item())
        g_ref, = torch.autograd.grad(ref, s)
        assert out[i].item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
        torch.testing.assert_close(g[i], g_ref[i], rtol=1e-10, atol=1e-14)  # zero on the padding
    with pytest.raises(ValueError, match="weights are for stacked members"):
        losses.HintonLoss.apply(s[0], losses.hinton_targets(t, 4.0, 0.9), y[0], 4.0, 0.9, w[0])


def test_hinton_node_refuses_a_second_derivative():
    s, t = logits(seed=10).requires_grad_(), logits(seed=11)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(losses._hinton(s, t, None, 4.0, 1.0), s, create_graph=True)


def test_hinton_node_takes_bf16_logits_and_returns_a_bf16_gradient():
    s = logits(seed=12, dtype=torch.float32).bfloat16().requires_grad_()
    t, y = logits(seed=13, dtype=torch.float32), torch.zeros(16, dtype=torch.long)
    loss = losses._hinton(s, t, y, 4.0, 0.5)
    loss.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    ref = losses._hinton_written_out(s.float(), t, y, 4.0, 0.5)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_hinton_targets_rows():
    t, T, alpha = logits(n=5, seed=14), 2.0, 0.7
    table = losses.hinton_targets(t, T, alpha)
    assert table.shape == (20, 5) and table.is_contiguous()
    q = F.softmax(t / T, 1)
    torch.testing.assert_close(table[:10].T, alpha * T * T * q)
    torch.testing.assert_close(table[10:].T, q.log())


def test_hinton_loss_takes_int32_and_uint8_labels():
    s, t = logits(seed=15), logits(seed=16)
    y = torch.arange(16) % 10
    ref = hinton_loss(s, t, y, 4.0, 0.5)
    for dtype in (torch.int32, torch.uint8):
        assert hinton_loss(s, t, y.to(dtype), 4.0, 0.5).item() == ref.item()
