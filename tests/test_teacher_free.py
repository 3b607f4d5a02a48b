"""Teacher-free KD (Yuan et al. 2020): the virtual teacher's targets, label smoothing as a method,
their equivalence at T = 1 (and at any T with α = 1, on the softened student), and clear refusals
of a bad probability a or class count."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdnb import cached, losses, models, store, train
from kdnb.methods import CrossEntropy, Distill, LabelSmoothing, VirtualTeacher, describe
from kdnb.teachers import TeacherCache

FAST = dict(epochs=2, batch_size=64, lr=3e-3, device="cpu", progress=False)


def batch_of(K=10, B=128, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(B, K, generator=g, dtype=dtype)
    y = torch.randint(0, K, (B,), generator=g)
    return z, train.Batch(z, y, torch.arange(B))


def loss_and_grad(method, z, batch, scale=1.0):
    logits = z.clone().requires_grad_()
    loss = method(logits / scale, batch) * scale ** 2
    loss.backward()
    return loss.item(), logits.grad


def entropy(p):
    return -(p * p.log()).sum(1).mean().item()


# ---------------------------------------------------------------------------------------------
# The targets.

@pytest.mark.parametrize("K", [2, 3, 10, 100])
@pytest.mark.parametrize("frac", [0.0, 0.3, 0.9, 1.0])  # a from 1/K (uniform) to 1 (one-hot)
def test_virtual_teacher_targets_sum_to_one(K, frac):
    a = 1 / K + frac * (1 - 1 / K)
    y = torch.randint(0, K, (50,), generator=torch.Generator().manual_seed(K))
    p = losses.virtual_teacher_targets(y, K, a)
    assert p.shape == (50, K) and (p >= 0).all()
    torch.testing.assert_close(p.sum(1), torch.ones(50))
    torch.testing.assert_close(p[torch.arange(50), y], torch.full((50,), a))
    others = p.masked_select(~F.one_hot(y, K).bool())
    torch.testing.assert_close(others, torch.full_like(others, (1 - a) / (K - 1)))


def test_virtual_teacher_targets_are_the_old_logits_softmaxed():
    y = torch.tensor([0, 3, 9, 3])
    p = losses.virtual_teacher_targets(y, 10, 0.8)
    torch.testing.assert_close(p, F.softmax(losses.virtual_teacher_logits(y, 10, 0.8), 1))
    assert torch.equal(losses.virtual_teacher_targets(y.int(), 10, 0.8), p)  # int32 labels too


def test_uniform_and_one_hot_ends():
    y = torch.tensor([1, 4])
    torch.testing.assert_close(losses.virtual_teacher_targets(y, 5, 0.2), torch.full((2, 5), 0.2))
    assert torch.equal(losses.virtual_teacher_targets(y, 5, 1.0), F.one_hot(y, 5).float())


@pytest.mark.parametrize("a, K, allowed", [(0.05, 10, r"\[0\.1, 1\]"), (1.2, 10, r"\[0\.1, 1\]"),
                                           (0.3, 3, r"\[0\.3333, 1\]"), (-1.0, 2, r"\[0\.5, 1\]")])
def test_bad_correct_prob_is_refused_naming_it_and_the_range(a, K, allowed):
    with pytest.raises(ValueError, match=rf"^correct_prob must be in \[1/classes, 1\] = {allowed} for "
                                         rf"classes={K} .*got {a!r}"):
        losses.virtual_teacher_targets(torch.tensor([0, 1]), K, a)


@pytest.mark.parametrize("a", [float("nan"), float("inf")])
def test_non_finite_correct_prob_is_refused(a):
    with pytest.raises(ValueError, match=r"^correct_prob must be a finite number"):
        losses.virtual_teacher_targets(torch.tensor([0]), 10, a)


@pytest.mark.parametrize("a", ["0.9", None, True])
def test_correct_prob_of_another_type_is_refused(a):
    with pytest.raises(TypeError, match=r"^correct_prob must be a real number"):
        losses.virtual_teacher_targets(torch.tensor([0]), 10, a)


@pytest.mark.parametrize("K", [1, 0, -3, 2.5, True, "10", None])
def test_bad_class_count_is_refused_naming_it_and_the_range(K):
    with pytest.raises(ValueError, match=rf"^classes must be an integer >= 2, got {K!r}"):
        losses.virtual_teacher_targets(torch.tensor([0]), K, 0.9)
    with pytest.raises(ValueError, match=r"^classes must be an integer >= 2"):
        losses.virtual_teacher_epsilon(0.9, K)


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 9\] for classes=10, got values in \[0, 10\]"):
        losses.virtual_teacher_targets(torch.tensor([0, 10]), 10, 0.9)
    with pytest.raises(TypeError, match=r"^labels must be a 1-D integer tensor"):
        losses.virtual_teacher_targets(torch.tensor([0.0, 1.0]), 10, 0.9)
    with pytest.raises(TypeError, match=r"^labels must be a 1-D integer tensor"):
        losses.virtual_teacher_targets(torch.zeros(2, 2, dtype=torch.long), 10, 0.9)


# ---------------------------------------------------------------------------------------------
# Label smoothing as a method, and the equivalence.

@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_label_smoothing_loss_method_and_torch_agree(eps):
    z, batch = batch_of()
    expected = F.cross_entropy(z, batch.y, label_smoothing=eps)
    torch.testing.assert_close(losses.label_smoothing_loss(z, batch.y, eps), expected)
    torch.testing.assert_close(LabelSmoothing(eps)(z, batch), expected)
    torch.testing.assert_close(CrossEntropy(label_smoothing=eps)(z, batch), expected)
    assert list(LabelSmoothing(eps).losses(z, batch)) == ["ls"]


@pytest.mark.parametrize("K", [2, 10, 37])
@pytest.mark.parametrize("a_frac, alpha", [(0.9, 0.9), (0.9, 0.5), (0.5, 1.0), (0.0, 0.3), (0.99, 0.0)])
def test_virtual_teacher_at_T1_is_label_smoothing_up_to_a_constant(K, a_frac, alpha):
    a = 1 / K + a_frac * (1 - 1 / K)
    z, batch = batch_of(K=K, seed=K)
    eps = losses.virtual_teacher_epsilon(a, K, alpha)
    assert eps == pytest.approx(alpha * K * (1 - a) / (K - 1))
    vt, g_vt = loss_and_grad(VirtualTeacher(a, T=1.0, alpha=alpha), z, batch)
    ls, g_ls = loss_and_grad(LabelSmoothing(eps), z, batch)
    constant = alpha * entropy(losses.virtual_teacher_targets(batch.y, K, a).double())
    assert ls - vt == pytest.approx(constant, abs=1e-6)
    torch.testing.assert_close(g_vt, g_ls, rtol=0, atol=1e-9)
    assert VirtualTeacher(a, T=1.0, alpha=alpha).label_smoothing(K).epsilon == pytest.approx(eps)


def test_the_constant_does_not_depend_on_the_logits():
    K, a, alpha = 10, 0.8, 0.6
    eps = losses.virtual_teacher_epsilon(a, K, alpha)
    diffs = []
    for seed in range(3):
        z, batch = batch_of(K=K, seed=seed)
        batch.y = torch.full_like(batch.y, 2)  # the same labels, so the same H(p^v)
        diffs.append(LabelSmoothing(eps)(z, batch).item() - VirtualTeacher(a, 1.0, alpha)(z, batch).item())
    assert max(diffs) - min(diffs) < 1e-6


def test_uniform_teacher_is_label_smoothing_with_eps_alpha():
    # Seed 001's equation 4: (1 − ε)·CE + ε·KL(u ‖ p) is label smoothing with ε.
    assert losses.virtual_teacher_epsilon(0.1, 10, 0.3) == pytest.approx(0.3)
    assert losses.virtual_teacher_epsilon(1.0, 10, 0.7) == 0.0
    z, batch = batch_of()
    u = torch.full_like(z, 1 / z.shape[1])
    seed001 = 0.7 * F.cross_entropy(z, batch.y) + 0.3 * (u * (u.log() - F.log_softmax(z, 1))).sum(1).mean()
    torch.testing.assert_close(seed001, LabelSmoothing(0.3)(z, batch) - 0.3 * math.log(10))


@pytest.mark.parametrize("T", [0.5, 2.0, 4.0, 20.0])
def test_at_alpha_1_and_any_T_it_is_label_smoothing_of_the_softened_student(T):
    K, a = 10, 0.9
    z, batch = batch_of(K=K, seed=int(T * 10))
    p_T = losses.soft_targets(losses.virtual_teacher_targets(batch.y, K, a).double().log(), T)
    a_T = p_T[0, batch.y[0]].item()
    assert a_T == pytest.approx(a ** (1 / T) / (a ** (1 / T) + (K - 1) * ((1 - a) / (K - 1)) ** (1 / T)))
    eps_T = K * (1 - a_T) / (K - 1)
    vt, g_vt = loss_and_grad(VirtualTeacher(a, T=T, alpha=1.0), z, batch)
    ls, g_ls = loss_and_grad(LabelSmoothing(eps_T), z, batch, scale=T)
    assert ls - vt == pytest.approx(T ** 2 * entropy(p_T), abs=1e-4 * T ** 2)
    torch.testing.assert_close(g_vt, g_ls, rtol=0, atol=1e-9)


def test_away_from_T1_with_labels_it_is_not_label_smoothing():
    with pytest.raises(ValueError, match=r"^a virtual teacher equals label smoothing at T = 1 only, got T=4\.0"):
        VirtualTeacher(0.9, T=4.0, alpha=0.5).label_smoothing(10)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.9), (4.0, 0.5), (2.0, 1.0)])
def test_virtual_teacher_is_hinton_kd_from_its_targets(T, alpha):
    # What chapter 5 stacks: the virtual teacher as a teacher whose logits are log p^v, a table
    # per training sample; the same loss as the method, and as hinton_loss.
    z, batch = batch_of(dtype=torch.float32)
    table = losses.virtual_teacher_targets(batch.y, 10, 0.9).log()
    method = VirtualTeacher(0.9, T, alpha)(z, batch)
    torch.testing.assert_close(Distill(TeacherCache(table), T, alpha)(z, batch), method)
    torch.testing.assert_close(losses.hinton_loss(z, table, batch.y, T, alpha), method)


# ---------------------------------------------------------------------------------------------
# The method: checks, its table, training and caching.

def test_virtual_teacher_refuses_a_below_one_over_classes_when_it_learns_the_count(digits):
    vt = VirtualTeacher(0.05, T=2.0, alpha=0.5)  # fine for 20+ classes; digits has 10
    with pytest.raises(ValueError, match=r"^correct_prob must be in \[1/classes, 1\) = \[0\.1, 1\) for "
                                         r"classes=10 .*got 0\.05"):
        train.fit(models.build({"name": "mlp", "hidden": [8]}, digits.shape, 10), digits, vt, **FAST)
    z, batch = batch_of(K=10)
    with pytest.raises(ValueError, match=r"^correct_prob must be in \[1/classes, 1\)"):
        vt(z, batch)  # called by hand, without setup
    assert VirtualTeacher(0.05).targets_table(20).shape == (40, 20)


@pytest.mark.parametrize("a, error", [(1.0, ValueError), (0.0, ValueError), (1.5, ValueError),
                                      (float("nan"), ValueError), ("0.9", TypeError)])
def test_virtual_teacher_refuses_a_bad_a_at_once(a, error):
    with pytest.raises(error, match=r"^correct_prob must be"):
        VirtualTeacher(a)


def test_virtual_teacher_checks_T_and_alpha():
    with pytest.raises(ValueError, match=r"^T must be in \(0, inf\)"):
        VirtualTeacher(0.9, T=0.0)
    with pytest.raises(ValueError, match=r"^alpha must be in \[0, 1\]"):
        VirtualTeacher(0.9, alpha=1.5)
    with pytest.raises(ValueError, match=r"^epsilon must be in \[0, 1\], got 1\.5"):
        LabelSmoothing(1.5)


def test_the_table_follows_the_class_count():
    vt = VirtualTeacher(0.6, T=1.0, alpha=1.0)
    for K in (10, 3):
        z, batch = batch_of(K=K, dtype=torch.float32)
        torch.testing.assert_close(vt(z, batch), LabelSmoothing(losses.virtual_teacher_epsilon(0.6, K))(z, batch)
                                   - entropy(losses.virtual_teacher_targets(batch.y, K, 0.6)), rtol=0, atol=1e-5)


def test_virtual_teacher_trains_and_caches_by_its_settings(digits, fresh_cache):
    spec = {"name": "mlp", "hidden": [16]}
    kw = {k: v for k, v in FAST.items() if k != "device"}
    model, h = cached.trained(spec, digits, VirtualTeacher(0.9, T=2.0, alpha=0.5), **kw)
    assert list(h["terms"]) == ["kd"] and h["best_val_acc"] > 0.3
    again, _ = cached.trained(spec, digits, VirtualTeacher(0.9, T=2.0, alpha=0.5), **kw)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len(list((fresh_cache / "models").glob("*.pt"))) == 1
    keys = {store.key_of(describe(VirtualTeacher(a, T, al))) for a, T, al in
            [(0.9, 2.0, 0.5), (0.8, 2.0, 0.5), (0.9, 4.0, 0.5), (0.9, 2.0, 0.9)]}
    assert len(keys) == 4
    used = VirtualTeacher(0.9, T=2.0, alpha=0.5)
    used.setup(model, digits)  # its table is runtime state, not part of the key
    assert store.key_of(describe(used)) == store.key_of(describe(VirtualTeacher(0.9, T=2.0, alpha=0.5)))


def test_label_smoothing_trains(digits):
    h = train.fit(models.build({"name": "mlp", "hidden": [16]}, digits.shape, 10), digits, LabelSmoothing(0.1),
                  **FAST)
    assert list(h["terms"]) == ["ls"] and h["best_val_acc"] > 0.3
