"""Adversarial KD (seed 004): a discriminator learns to tell the teacher's logits from the
student's, and the student learns to fool it, beside its cross-entropy.

    L_D = −γ [log σ(D(t)) + log(1 − σ(D(s)))],     L_G = β · CE − α · log σ(D(s))

The discriminator is a :class:`~kdnb.methods.base.Player`: its own Adam, updated after each
student step on the student's detached logits."""
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number
from .base import Player
from .hinton import TeacherOutputs


def discriminator(classes, hidden=64):
    """A small MLP on logits: K → hidden → hidden → 1 (a real/fake score)."""
    return nn.Sequential(nn.Linear(classes, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                         nn.LeakyReLU(0.2), nn.Linear(hidden, 1))


class GANKD(TeacherOutputs):
    """GAN KD: terms ``"ce"`` (β · CE) and ``"adv"`` (−α · log σ(D(s))) for the student; the
    player ``"D"`` logs ``"bce"`` (L_D) and ``"acc"`` (how often it tells them apart, not trained on)."""

    def __init__(self, teacher, classes=10, alpha=1.0, beta=1.0, gamma=1.0, hidden=64, lr=1e-3, steps=1, seed=0):
        super().__init__(teacher)
        self.alpha = check_number("alpha", alpha, low=0)
        self.beta = check_number("beta", beta, low=0)
        self.gamma = check_number("gamma", gamma, low=0, low_open=True)
        with torch.random.fork_rng(devices=[]):  # D's first weights from its own seed, not the caller's RNG
            torch.manual_seed(seed)
            self.D = Player(discriminator(classes, hidden), lr=lr, steps=steps)

    def losses(self, logits, batch):
        fooled = F.logsigmoid(self.D(logits)).mean()  # log σ(D(s)): high when D takes s for the teacher
        return {"ce": self.beta * F.cross_entropy(logits, batch.y), "adv": -self.alpha * fooled}

    def player_losses(self, name, batch, logits):
        real, fake = self.D(self.teacher_logits(batch)), self.D(logits)
        bce = -self.gamma * (F.logsigmoid(real).mean() + F.logsigmoid(-fake).mean())  # log(1 − σ(z)) = logσ(−z)
        acc = ((real > 0).float().mean() + (fake < 0).float().mean()) / 2
        return {"bce": bce, "acc": acc.detach()}
