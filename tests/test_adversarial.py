"""Adversarial KD (chapter 8): FrozenD, GANKD and WGANKD. Shapes; which parameters each loss
reaches; the terms on hand-computed cases; refused arguments; the NaN guard naming the critic;
and a SIGKILLed GAN / WGAN run that resumes to the uninterrupted run's student and discriminator."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdnb import cached, models, store, train
from kdnb.book import profiles
from kdnb.methods import FrozenD, GANKD, WGANKD, describe
from kdnb.book.settings import ADVERSARIAL as SETTINGS
from kdnb.methods.adversarial import discriminator, discriminator_data

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import assert_identical, epochs_started, finish, kill_when_stalled  # noqa: E402

K, B = 4, 6
WORKER = Path(__file__).parent / "adversarial_worker.py"
ROOT = Path(__file__).parent.parent


def batch_of(y):
    return train.Batch(None, y, torch.arange(len(y)))


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    t, s = 3 * torch.randn(B, K, generator=g), 3 * torch.randn(B, K, generator=g)
    return t, s, batch_of(torch.randint(0, K, (B,), generator=g))


def teacher_of(t):
    return lambda batch: t  # a callable teacher: the logits it is given


def summing(out=1):
    """A linear D whose score is the sum of the logits (each output): hand-computable."""
    net = nn.Linear(K, out, bias=False)
    nn.init.ones_(net.weight)
    return net


def methods(t):
    return {"gan": GANKD(teacher_of(t), K), "wgan": WGANKD(teacher_of(t), K),
            "wgan-clip": WGANKD(teacher_of(t), K, lipschitz="clip"),
            "frozen": FrozenD(discriminator(K, out=2))}


def player_of(method):
    return next(iter(method.players().items()), (None, getattr(method, "D", None)))


# --- shapes ------------------------------------------------------------------------------------

def test_shapes(case):
    t, s, batch = case
    for name, m in methods(t).items():
        terms = m.losses(s, batch)
        assert all(v.shape == () for v in terms.values()), name
        who, D = player_of(m)
        assert D(s).shape == ((B, 2) if name == "frozen" else (B, 1)), name
        if who:
            assert all(v.shape == () for v in m.player_losses(who, batch, s).values()), name
    assert set(methods(t)["wgan"].player_losses("critic", batch, s)) == {"wd", "gp", "gap"}
    assert set(methods(t)["wgan-clip"].player_losses("critic", batch, s)) == {"wd", "gap"}
    d = discriminator_data({"train": t, "val": t[:2], "test": t[:3]}, {"train": s, "val": s[:2], "test": s[:3]})
    assert (d.classes, d.shape, d.sizes()) == (2, (K,), {"train": 2 * B, "val": 4, "test": 6})
    assert d.y_train.tolist() == [0] * B + [1] * B  # teacher first, then the student


# --- which parameters each loss reaches --------------------------------------------------------

def test_the_students_loss_reaches_the_student_only_and_ds_loss_the_d_only(case):
    t, _, batch = case
    for name, m in methods(t).items():
        student = nn.Linear(3, K)
        x = torch.randn(B, 3)
        sum(m.losses(student(x), batch).values()).backward()
        who, D = player_of(m)
        assert all(p.grad is None for p in D.parameters()), f"{name}: the student's loss reached D"
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
        if who is None:
            continue  # frozen: D has no loss of its own
        student.zero_grad(set_to_none=True)
        played = m.player_losses(who, batch, student(x).detach())  # what the loop passes
        train.descended(played).backward()
        assert all(p.grad is None for p in student.parameters()), f"{name}: D's loss reached the student"
        assert all(p.grad is not None for p in D.parameters()), name
    frozen = methods(t)["frozen"]
    assert all(not p.requires_grad for p in frozen.D.parameters())
    assert not frozen.train().D.training  # stays in eval mode


class InertCritic(WGANKD):
    """A critic whose own loss has zero gradient: it may move only if the student's loss leaks."""

    def player_losses(self, name, batch, logits):
        terms = super().player_losses(name, batch, logits)
        return {"wd": 0 * terms["wd"], "gap": terms["gap"]}


def test_in_the_loop_the_critic_never_descends_the_students_loss(digits):
    data = digits.subset(0.3)
    mlp = lambda seed: models.build({"name": "mlp", "hidden": [16]}, data.shape, data.classes, seed=seed)
    fast = dict(epochs=1, batch_size=64, lr=3e-3, device="cpu", progress=False)
    inert = InertCritic(mlp(1), data.classes, alpha=5.0)
    before = {k: v.clone() for k, v in inert.critic.state_dict().items()}
    student = mlp(0)
    start = [p.clone() for p in student.parameters()]
    h = train.fit(student, data, inert, **fast)
    assert all(torch.equal(before[k], v) for k, v in inert.critic.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(start, student.parameters()))
    assert set(h["terms"]) == {"ce", "adv", "critic/wd", "critic/gap"}
    learning = WGANKD(mlp(1), data.classes)
    first = {k: v.clone() for k, v in learning.critic.state_dict().items()}
    h = train.fit(mlp(0), data, learning, **fast)  # the test above can fail: a live critic moves
    assert not all(torch.equal(first[k], v) for k, v in learning.critic.state_dict().items())
    assert set(h["terms"]) == {"ce", "adv", "critic/wd", "critic/gp", "critic/gap"}


# --- the terms on hand-computed cases ----------------------------------------------------------

T1, S0, S1 = torch.tensor([[1.0, 1, 0, 0]]), torch.zeros(1, K), torch.tensor([[0.5, 0, 0, 0]])
Y = torch.tensor([2])
softplus = lambda z: math.log1p(math.exp(z))  # −log σ(−z)


def test_gan_terms_by_hand():
    # D(z) = sum(z): D(t) = 2, D(s) = 0
    m = GANKD(teacher_of(T1), K, alpha=0.7, beta=0.3, gamma=2.0)
    m.D.net = summing()
    terms = m.losses(S0, batch_of(Y))
    assert terms["ce"].item() == pytest.approx(0.3 * math.log(K))  # uniform student
    assert terms["adv"].item() == pytest.approx(0.7 * math.log(2))  # −α log σ(0)
    played = m.player_losses("D", batch_of(Y), S0)
    # −γ [log σ(2) + log(1 − σ(0))]
    assert played["bce"].item() == pytest.approx(2.0 * (softplus(-2) + math.log(2)))
    assert played["acc"].item() == 0.5  # D(t) > 0 is right; D(s) = 0 is not < 0
    smoothed = GANKD(teacher_of(T1), K, gamma=2.0, smooth=0.1)
    smoothed.D.net = summing()
    # the teacher's target is 0.9: −γ [0.9 log σ(2) + 0.1 log(1 − σ(2)) + log(1 − σ(0))]
    expected = 2.0 * (0.9 * softplus(-2) + 0.1 * softplus(2) + math.log(2))
    assert smoothed.player_losses("D", batch_of(Y), S0)["bce"].item() == pytest.approx(expected)


def test_wgan_terms_by_hand():
    # f(z) = sum(z): f(t) = 2, f(s) = 0.5; ∇f = (1, 1, 1, 1) everywhere, so the penalty is exact
    m = WGANKD(teacher_of(T1), K, alpha=0.7, beta=0.3, gamma=2.0, penalty=10.0)
    m.critic.net = summing()
    terms = m.losses(S1, batch_of(Y))
    assert terms["adv"].item() == pytest.approx(-0.7 * 0.5)
    assert terms["ce"].item() == pytest.approx(0.3 * (math.log(3 + math.exp(0.5)) - 0.0))
    played = m.player_losses("critic", batch_of(Y), S1)
    assert played["wd"].item() == pytest.approx(-2.0 * (2 - 0.5))
    assert played["gap"].item() == pytest.approx(1.5)
    assert played["gp"].item() == pytest.approx(10 * (math.sqrt(K) - 1) ** 2)
    assert not played["gap"].requires_grad  # logged, not descended


def test_weight_clipping_clamps_the_critic_after_each_step():
    m = WGANKD(teacher_of(T1), K, lipschitz="clip", clip=0.05)
    assert m.critic.clip == 0.05 and WGANKD(teacher_of(T1), K).critic.clip is None
    with torch.no_grad():
        for p in m.critic.parameters():
            p.mul_(100)
    m.critic.after_step()
    assert max(p.abs().max().item() for p in m.critic.parameters()) == pytest.approx(0.05)


def test_frozen_d_terms_by_hand():
    # D(z) = (sum(z), 0): on S1 the logits for (teacher, student) are (0.5, 0)
    net = nn.Linear(K, 2, bias=False)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0] = 1
    log_teacher, log_student = -softplus(-0.5), -softplus(0.5)
    seed004 = FrozenD(net, alpha=0.3, beta=2.0).losses(S1, batch_of(Y))
    assert seed004["ce"].item() == pytest.approx(0.3 * math.log(3 + math.exp(0.5)))
    assert seed004["adv"].item() == pytest.approx(2.0 * log_student)  # −β H(student, P_D)
    assert seed004["p_teacher"].item() == 1.0
    bounded = FrozenD(net, beta=2.0, form="nonsaturating").losses(S1, batch_of(Y))
    assert bounded["adv"].item() == pytest.approx(-2.0 * log_teacher)
    assert bounded["adv"].item() >= 0 > seed004["adv"].item()


def test_the_adversarial_terms_see_a_distribution_not_answers(case):
    """A batch mean: shuffling which sample got which logits changes no adversarial term."""
    t, s, batch = case
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(1))
    for name, m in methods(t).items():
        a, b = m.losses(s, batch)["adv"], m.losses(s[perm], batch)["adv"]
        assert torch.allclose(a, b, atol=1e-6), name


# --- bad arguments -----------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: GANKD(teacher_of(T1), K, alpha=-1), ValueError, r"alpha must be in \[0, inf\), got -1"),
    (lambda: GANKD(teacher_of(T1), K, beta=float("nan")), ValueError, r"beta must be a finite number"),
    (lambda: GANKD(teacher_of(T1), K, gamma=0), ValueError, r"gamma must be in \(0, inf\), got 0"),
    (lambda: GANKD(teacher_of(T1), K, smooth=0.5), ValueError, r"smooth must be in \[0, 0.5\), got 0.5"),
    (lambda: GANKD(teacher_of(T1), K, lr=0), ValueError, r"lr must be in \(0, inf\), got 0"),
    (lambda: GANKD(teacher_of(T1), K, steps=0), ValueError, r"steps must be a positive integer, got 0"),
    (lambda: GANKD(teacher_of(T1), 1), ValueError, r"classes must be an integer >= 2 .*got 1"),
    (lambda: GANKD(teacher_of(T1), K, hidden=2.5), ValueError, r"hidden must be a positive integer, got 2.5"),
    (lambda: GANKD("teacher", K), TypeError, r"teacher must be a TeacherCache, an nn.Module or a callable"),
    (lambda: WGANKD(teacher_of(T1), K, lipschitz="spectral"), ValueError,
     r"lipschitz must be 'gp' \(gradient penalty\) or 'clip' \(weight clipping\), got 'spectral'"),
    (lambda: WGANKD(teacher_of(T1), K, penalty=-1), ValueError, r"penalty must be in \(0, inf\), got -1"),
    (lambda: WGANKD(teacher_of(T1), K, clip=0), ValueError, r"clip must be in \(0, inf\), got 0"),
    (lambda: WGANKD(teacher_of(T1), K, alpha=True), TypeError, r"alpha must be a real number, got True"),
    (lambda: FrozenD("D"), TypeError, r"D must be a torch.nn.Module \(a trained discriminator\), got str"),
    (lambda: FrozenD(summing(2), beta=-0.1), ValueError, r"beta must be in \[0, inf\), got -0.1"),
    (lambda: FrozenD(summing(2), form="minimax"), ValueError,
     r"form must be one of 'seed004', 'nonsaturating', got 'minimax'"),
    (lambda: discriminator_data({"train": T1}, {}), ValueError, r"teacher must be a dict of logits with keys"),
    (lambda: discriminator_data({k: T1 for k in ("train", "val", "test")},
                                {k: S0[:, :3] for k in ("train", "val", "test")}), ValueError,
     r"split 'train' must have one equal shape \(samples, classes\), got \(1, 4\) and \(1, 3\)"),
])
def test_bad_arguments_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- the loop: NaN guard, cache ----------------------------------------------------------------

class NaNPenalty(WGANKD):
    def player_losses(self, name, batch, logits):
        return {**super().player_losses(name, batch, logits), "gp": logits.sum() * float("nan")}


class NaNFrozen(FrozenD):
    def losses(self, logits, batch):
        return {**super().losses(logits, batch), "adv": logits.sum() * float("nan")}


def test_the_nan_guard_names_the_critic_and_the_frozen_ds_term(digits):
    data = digits.subset(0.3)
    mlp = lambda seed: models.build({"name": "mlp", "hidden": [16]}, data.shape, data.classes, seed=seed)
    fast = dict(epochs=1, batch_size=64, lr=3e-3, device="cpu", progress=False)
    with pytest.raises(train.NonFiniteLoss, match=r"player 'critic'.s term 'gp'"):
        train.fit(mlp(0), data, NaNPenalty(mlp(1), data.classes, alpha=0.1), **fast)
    with pytest.raises(train.NonFiniteLoss, match=r"the student's term 'adv'"):
        train.fit(mlp(0), data, NaNFrozen(discriminator(data.classes, out=2)), **fast)


def test_described_for_the_cache_and_restored_on_a_hit(digits, fresh_cache):
    data = digits.subset(0.3)
    spec = {"name": "mlp", "hidden": [16]}
    teacher = models.build(spec, data.shape, data.classes, seed=1)
    args = dict(epochs=1, batch_size=64, lr=3e-3)
    # every field counts: another penalty, another key
    assert describe(WGANKD(teacher, data.classes)) != describe(WGANKD(teacher, data.classes, penalty=5.0))
    assert describe(FrozenD(summing(2))) != describe(FrozenD(summing(2), form="nonsaturating"))
    computed = WGANKD(teacher, data.classes)
    cached.trained(spec, data, computed, **args)
    loaded = WGANKD(teacher, data.classes)
    cached.trained(spec, data, loaded, **args)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(computed.state_dict().values(), loaded.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                      WGANKD(teacher, data.classes).state_dict().values()))


# --- chapter 8's settings ----------------------------------------------------------------------

def test_settings_hold_a_seed_count_that_the_offset_shifts(monkeypatch):
    """SETTINGS holds how many seeds chapter 8 trains, never seeds themselves: the chapter draws them
    from profile.seed_list, so $KDNB_SEED_OFFSET moves every one of them."""
    assert set(SETTINGS) == set(profiles.PROFILES)
    for name, settings in SETTINGS.items():
        n = settings["seeds"]
        assert isinstance(n, int) and not isinstance(n, bool) and n >= 2, name
    assert SETTINGS["quick"]["seeds"] >= 8  # the chapter's claims need enough paired seeds
    monkeypatch.setenv("KDNB_SEED_OFFSET", "1000")
    n = SETTINGS["quick"]["seeds"]
    assert profiles.get("quick").seed_list(n) == tuple(range(1000, 1000 + n))


# --- SIGKILLed mid-epoch, resumed ---------------------------------------------------------------

def start(tmp_path, method, checkpoint, out, log, stall_epoch=None):
    import os
    cmd = [sys.executable, str(WORKER), method, str(checkpoint), str(out), str(log)]
    cmd += ["--stall-epoch", str(stall_epoch)] if stall_epoch is not None else []
    env = dict(os.environ, KDNB_CACHE=str(tmp_path / "cache"), KDNB_PROGRESS="0",
               KDNB_DEVICE=os.environ.get("KDNB_DEVICE", "cpu"))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkilled_adversarial_runs_resume_bit_exact(tmp_path):
    """GAN KD (2 D steps, smoothed) and WGAN KD (gradient penalty: random points from the RNG)
    are killed inside epoch 2, after student and player steps that no checkpoint holds; the
    resumed runs end with the uninterrupted runs' student, discriminator and critic, optimiser
    moments and history. The uninterrupted runs go in this process, alongside."""
    import adversarial_worker as worker
    runs = {}
    for m in ("gan", "wgan"):
        d = tmp_path / m
        d.mkdir()
        runs[m] = (d, start(d, m, d / "run.ckpt", d / "never.pt", d / "epochs.log", stall_epoch=2))
    for m, (d, first) in runs.items():
        data = worker.toy_data()
        method = worker.method(m, models.build(worker.SPEC, data.shape, data.classes, seed=1), data.classes)
        method._log, method._stall_epoch, method._epoch, method._step = d / "reference.log", None, 0, 0
        student = models.build(worker.SPEC, data.shape, data.classes, seed=0)
        history = train.fit(student, data, method, epochs=worker.EPOCHS, batch_size=worker.BATCH, lr=1e-2,
                            seed=0, checkpoint=d / "reference.ckpt", progress=False, device="cpu")
        kill_when_stalled(first, d / "epochs.log", 2)
        assert store.load(d / "run.ckpt")["epoch"] == 1
        second = start(d, m, d / "run.ckpt", d / "resumed.pt", d / "epochs.log")
        finish(second)
        assert epochs_started(d / "epochs.log", first.pid) == [0, 1, 2]
        assert epochs_started(d / "epochs.log", second.pid) == [2, 3]
        resumed = store.load(d / "resumed.pt")
        assert_identical(resumed["state"], student.state_dict(), f"{m}: the student's weights")
        assert_identical(resumed["method"], method.state_dict(), f"{m}: the discriminator's weights")
        drop_time = lambda h: {k: v for k, v in h.items() if k != "time"}
        assert drop_time(resumed["history"]) == drop_time(history)
        last, last_whole = store.load(d / "run.ckpt"), store.load(d / "reference.ckpt")
        for part in ("model", "optimizer", "players", "rng", "generator"):
            assert_identical(last[part], last_whole[part], f"{m}: {part}")
        assert last["players"], m  # the player's Adam moments are in the checkpoint
