"""Adversarial KD (seed 004): a discriminator learns to tell the teacher's logits from the
student's, and the student learns to fool it, beside its cross-entropy. Three variants:

* :class:`FrozenD`, seed 004's "basic adversarial KD": a discriminator trained beforehand on
  the teacher's and a student's logits (:func:`discriminator_data`, trained by the one loop),
  then frozen; the student descends ``α · CE − β · H(student, P_D(s))``.
* :class:`GANKD`: discriminator and student train together,
  ``L_D = −γ [log σ(D(t)) + log(1 − σ(D(s)))]``, ``L_G = β · CE − α · log σ(D(s))``.
* :class:`WGANKD`: a critic ``f``, ``L_D = −γ [f(t) − f(s)]`` (+ a gradient penalty, or its
  weights clipped), ``L_G = β · CE − α · f(s)``.

The discriminator or critic of the last two is a :class:`~kdnb.methods.base.Player`: its own Adam,
updated after each student step on the student's detached logits. The student never holds its
weights and its gradient is cleared before its own loss, so neither descends the other's loss."""
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number, check_positive_int
from ..data import Data
from .base import Method, Player
from .hinton import TeacherOutputs

LIPSCHITZ = ("gp", "clip")

def discriminator(classes, hidden=64, out=1):
    """A small MLP on logits: K → hidden → hidden → ``out`` (a real/fake score, or 2 logits)."""
    return nn.Sequential(nn.Linear(classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                         nn.LeakyReLU(0.2), nn.Linear(hidden, out))


class Adversary(Player):
    """A :class:`Player` whose Adam is fused: one kernel per tensor instead of some ten small ops,
    a fifth of a GAN KD step of the quick profile's student on a CPU (same arithmetic)."""

    def make_optimizer(self):
        fused = next(self.parameters()).device.type in ("cpu", "cuda") or None
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas, fused=fused)


def seeded(seed, build):
    """``build()`` under its own seed: a player's first weights never depend on the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def score(player, x):
    """``player(x)`` with a gradient for ``x`` only: the student's loss has no use for one of the
    player's weights (which the loop would clear anyway), and skipping it saves backward work."""
    params = [p for p in player.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        return player(x)
    finally:
        for p in params:
            p.requires_grad_(True)


def check_classes_arg(classes):
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2 (the logits' width), got {classes!r}")
    return classes


def check_adversary_classes(method, classes, data):
    """A discriminator reads ``classes`` logits: the data must have that many classes."""
    if classes != data.classes:
        raise ValueError(f"classes={classes} in {method} but data {data.name!r} has {data.classes} classes: its "
                         f"discriminator reads one logit per class; pass classes={data.classes}")


class GANKD(TeacherOutputs):
    """GAN KD: terms ``"ce"`` (β · CE) and ``"adv"`` (−α · log σ(D(s))) for the student; the
    player ``"D"`` logs ``"bce"`` (L_D) and ``"acc"`` (how often it tells them apart, not trained on).

    ``smooth`` is one-sided label smoothing of D (the teacher's target is ``1 − smooth``);
    ``lr`` and ``steps`` (D updates per student step) are D's."""

    def __init__(self, teacher, classes=10, alpha=1.0, beta=1.0, gamma=1.0, hidden=64, lr=1e-3, steps=1,
                 smooth=0.0, seed=0):
        super().__init__(teacher)
        self.alpha = check_number("alpha", alpha, low=0)
        self.beta = check_number("beta", beta, low=0)
        self.gamma = check_number("gamma", gamma, low=0, low_open=True)
        self.smooth = check_number("smooth", smooth, low=0, high=0.5, high_open=True)
        check_number("lr", lr, low=0, low_open=True)
        check_positive_int("steps", steps)
        check_positive_int("hidden", hidden)
        classes = check_classes_arg(classes)
        self.classes = classes
        self.D = seeded(seed, lambda: Adversary(discriminator(classes, hidden), lr=lr, steps=steps))

    def setup(self, student, data):
        super().setup(student, data)
        check_adversary_classes(type(self).__name__, self.classes, data)

    def losses(self, logits, batch):
        fooled = F.logsigmoid(score(self.D, logits)).mean()  # log σ(D(s)): high when D takes s for the teacher
        return {"ce": self.beta * F.cross_entropy(logits, batch.y), "adv": -self.alpha * fooled}

    def player_losses(self, name, batch, logits):
        t = self.teacher_logits(batch).to(logits.dtype)
        real, fake = self.D(torch.cat([t, logits])).float().split(len(logits))  # one pass for both
        # log(1 − σ(z)) = log σ(−z); the teacher's target 1 − smooth
        on_real = F.logsigmoid(real).mean()
        if self.smooth:
            on_real = (1 - self.smooth) * on_real + self.smooth * F.logsigmoid(-real).mean()
        bce = -self.gamma * (on_real + F.logsigmoid(-fake).mean())
        acc = ((real > 0).sum() + (fake < 0).sum()) / (2 * len(logits))
        return {"bce": bce, "acc": acc.detach().float()}


class WGANKD(TeacherOutputs):
    """WGAN KD: terms ``"ce"`` (β · CE) and ``"adv"`` (−α · f(s)) for the student; the player
    ``"critic"`` descends ``"wd"`` (−γ [f(t) − f(s)]) and, with ``lipschitz="gp"``, ``"gp"``
    (``penalty`` · (‖∇f(x̂)‖ − 1)² at random points x̂ between t and s; Gulrajani et al. 2017); with
    ``"clip"`` its weights are clamped to ±``clip`` after each update (Arjovsky et al. 2017).
    ``"gap"`` (f(t) − f(s), the critic's estimate of the Wasserstein distance) is only logged."""

    def __init__(self, teacher, classes=10, alpha=1.0, beta=1.0, gamma=1.0, lipschitz="gp", penalty=10.0,
                 clip=0.01, hidden=64, lr=1e-3, steps=1, seed=0):
        super().__init__(teacher)
        self.alpha = check_number("alpha", alpha, low=0)
        self.beta = check_number("beta", beta, low=0)
        self.gamma = check_number("gamma", gamma, low=0, low_open=True)
        if lipschitz not in LIPSCHITZ:
            raise ValueError(f"lipschitz must be 'gp' (gradient penalty) or 'clip' (weight clipping), "
                             f"got {lipschitz!r}")
        self.lipschitz = lipschitz
        self.penalty = check_number("penalty", penalty, low=0, low_open=True)
        clip = check_number("clip", clip, low=0, low_open=True)
        check_number("lr", lr, low=0, low_open=True)
        check_positive_int("steps", steps)
        check_positive_int("hidden", hidden)
        self.classes = classes = check_classes_arg(classes)
        self.critic = seeded(seed, lambda: Adversary(discriminator(classes, hidden), lr=lr, steps=steps,
                                                     clip=clip if lipschitz == "clip" else None))

    def setup(self, student, data):
        super().setup(student, data)
        check_adversary_classes(type(self).__name__, self.classes, data)

    def losses(self, logits, batch):
        return {"ce": self.beta * F.cross_entropy(logits, batch.y), "adv": -self.alpha * score(self.critic, logits).mean()}

    def player_losses(self, name, batch, logits):
        t = self.teacher_logits(batch).to(logits.dtype)
        f_real, f_fake = self.critic(torch.cat([t, logits])).float().split(len(logits))
        gap = f_real.mean() - f_fake.mean()
        terms = {"wd": -self.gamma * gap}
        if self.lipschitz == "gp":
            # the random mixing draws from the global RNG, which fit seeds and checkpoints
            mix = torch.rand(len(logits), 1, device=logits.device, dtype=logits.dtype)
            between = (mix * t + (1 - mix) * logits).requires_grad_()
            grad, = torch.autograd.grad(self.critic(between).sum(), between, create_graph=True)
            terms["gp"] = self.penalty * (grad.norm(dim=1) - 1).pow(2).mean()
        terms["gap"] = gap.detach()
        return terms


class FrozenD(Method):
    """Seed 004's adversarial KD with a pre-trained discriminator ``D`` (2 logits: teacher, student),
    frozen: terms ``"ce"`` (α · CE) and ``"adv"``: −β · H(student, P_D(s)) = β · log P_D(student | s)
    (``form="seed004"``: unbounded below, it saturates where D is sure), or the non-saturating
    β · −log P_D(teacher | s) (``form="nonsaturating"``, ≥ 0). ``"p_teacher"`` (how often D takes the
    student's logits for the teacher's) is only logged."""

    FORMS = ("seed004", "nonsaturating")

    def __init__(self, D, alpha=1.0, beta=1.0, form="seed004"):
        super().__init__()
        if not isinstance(D, nn.Module):
            raise TypeError(f"D must be a torch.nn.Module (a trained discriminator), got {type(D).__name__}")
        self.alpha = check_number("alpha", alpha, low=0)
        self.beta = check_number("beta", beta, low=0)
        if form not in self.FORMS:
            raise ValueError(f"form must be one of {', '.join(map(repr, self.FORMS))}, got {form!r}")
        self.form = form
        self.D = D.eval().requires_grad_(False)  # frozen: gradients pass through it to the logits only

    def train(self, mode=True):
        super().train(mode)
        self.D.eval()
        return self

    def losses(self, logits, batch):
        log_p = F.log_softmax(self.D(logits).float(), dim=1)  # columns: teacher, student
        adv = log_p[:, STUDENT].mean() if self.form == "seed004" else -log_p[:, TEACHER].mean()
        p_teacher = (log_p[:, TEACHER] > log_p[:, STUDENT]).float().mean().detach()
        return {"ce": self.alpha * F.cross_entropy(logits, batch.y), "adv": self.beta * adv, "p_teacher": p_teacher}


TEACHER, STUDENT = 0, 1


def discriminator_data(teacher, student, name="logits"):
    """A :class:`~kdnb.data.Data` record for training a discriminator with the one loop: inputs are
    logits, label 0 for the teacher's, 1 for the student's. ``teacher`` and ``student`` are
    ``{"train", "val", "test"}: logits`` of the same samples; each split holds both models' rows."""
    for who, d in (("teacher", teacher), ("student", student)):
        if not isinstance(d, dict) or set(d) != {"train", "val", "test"}:
            raise ValueError(f"{who} must be a dict of logits with keys 'train', 'val', 'test', got "
                             f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
    parts = {}
    for split in ("train", "val", "test"):
        t, s = teacher[split].float(), student[split].float()
        if t.shape != s.shape or t.dim() != 2:
            raise ValueError(f"teacher and student logits of split {split!r} must have one equal shape "
                             f"(samples, classes), got {tuple(t.shape)} and {tuple(s.shape)}")
        parts[split] = (torch.cat([t, s]), torch.cat([torch.full((len(t),), TEACHER), torch.full((len(s),), STUDENT)]))
    (xt, yt), (xv, yv), (xs, ys) = parts["train"], parts["val"], parts["test"]
    return Data(name, xt, yt, xv, yv, xs, ys, 2, (xt.shape[1],))
