"""The one protocol every method follows (its cache description: :mod:`kdnb.keys`).

A method is an ``nn.Module`` that tells the loop (``kdnb.train.fit``) what to minimise:

* ``losses(logits, batch) -> {name: term}``: named, weighted loss terms; the student descends
  their sum and the history logs each per epoch. Or, when the method reads more than the logits,
  ``forward_train(student, batch) -> (logits, terms)`` (mdistiller's ``forward_train``).
* ``trainable(student)``: which student parameters train (all, by default; FitNets stage 1: the
  layers up to the guided one).
* ``setup(student, data)``: once, before the optimisers exist: check the data, build parts
  whose shapes depend on the student (a regressor, a projector).
* extra **players** (:class:`Player` submodules, e.g. a discriminator): each has its own optimiser
  and is updated after every student step by ``player_losses(name, batch, logits)``, on the
  student's *detached* logits. The student's optimiser never holds a player's parameters and a
  player's gradient is cleared before its own loss: neither descends the other's loss.
* ``start_epoch(epoch, epochs)``: schedules of T, α or anything else.

The method's other trainable parameters (projectors, regressors) train with the student.

Attributes starting with ``_`` are a method's runtime state (derived from the public ones); the
public ones are what :func:`kdnb.keys.describe` puts in a cache key.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ..teachers import logits_of


@dataclass
class Batch:
    """What a method sees besides the model's output: inputs, labels and the samples' indices
    into the training split (so cached teacher outputs line up with a shuffled batch), and
    whether the inputs were augmented. A probe of inputs alone leaves the others None."""
    x: torch.Tensor
    y: torch.Tensor = None
    idx: torch.Tensor = None
    augmented: bool = False


class Method(nn.Module):
    """Base of every method; see the module's docstring for the protocol."""

    def losses(self, logits, batch):
        raise NotImplementedError(f"{type(self).__name__} must define losses(logits, batch) or forward_train")

    def forward_train(self, student, batch):
        logits = logits_of(student(batch.x))
        return logits, self.losses(logits, batch)

    def forward(self, out, batch):
        """The summed loss on a model's output: for calling a method by hand."""
        return sum(self.losses(logits_of(out), batch).values())

    def trainable(self, student):
        return [p for p in student.parameters() if p.requires_grad]

    def setup(self, student, data):
        pass

    def start_epoch(self, epoch, epochs):
        pass

    def players(self):
        return {name: m for name, m in self.named_modules() if isinstance(m, Player)}

    def player_losses(self, name, batch, logits):
        raise NotImplementedError(f"{type(self).__name__} has player {name!r} but no player_losses")


class Player(nn.Module):
    """An extra model a method trains with its own optimiser (Adam, ``lr``, ``betas``), ``steps``
    updates per student step; ``clip`` clamps its weights after each (WGAN's Lipschitz bound)."""

    def __init__(self, net, lr=1e-3, betas=(0.5, 0.999), steps=1, clip=None):
        super().__init__()
        self.net, self.lr, self.betas, self.steps, self.clip = net, lr, tuple(betas), steps, clip

    def forward(self, x):
        return self.net(x)

    def make_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas)

    @torch.no_grad()
    def after_step(self):
        if self.clip is not None:
            for p in self.parameters():
                p.clamp_(-self.clip, self.clip)


class Stackable:
    """A per-member loss that the stacked loop (``kdnb.sweep.fit_grid``) trains many students
    with at once, each member with its own parameters: what a method exposes to be stacked.

    * ``params``: the member keys it reads, each a number (stacked as a ``(members,)`` tensor);
    * ``check(member)``: refuse bad parameters (the loop names the member);
    * ``targets(logits, params) -> (n, members, ...)``: what the loss needs of the teacher, for
      every training sample, computed once from the teacher's logits (``(n, K)``, or ``(members,
      n, K)`` when members have their own teachers), sample-major so a step gathers whole rows;
    * ``loss(out, targets, labels, params, weights) -> (members,)``: each member's mean loss on its
      batch, from the stacked logits ``(members, B, K)``, its targets' rows ``(members, B, ...)``,
      labels ``(members, B)`` and ``weights`` (None, or ``(members, B)``: 0 on padding);
    * ``method(teacher, member)``: the :class:`Method` that ``fit`` trains the member with, what the
      stacked member matches (and what trains it when members are not stacked);
    * ``term(member)``: the name of that method's one loss term (the member's history's ``terms``).
    """
    params = ()

    def check(self, member):
        pass

    def targets(self, logits, params):
        raise NotImplementedError(f"{type(self).__name__} must define targets(logits, params)")

    def loss(self, out, targets, labels, params, weights):
        raise NotImplementedError(f"{type(self).__name__} must define loss(out, targets, labels, params, weights)")

    def method(self, teacher, member):
        raise NotImplementedError(f"{type(self).__name__} must define method(teacher, member)")

    def term(self, member):
        raise NotImplementedError(f"{type(self).__name__} must define term(member)")

    def cache_description(self, describe):
        """For cache keys (:func:`describe`): its class (named by its code) and public fields."""
        return {"fields": {k: describe(v, k) for k, v in vars(self).items() if not k.startswith("_")}}


class Loss(Method):
    """A plain ``fn(out, batch) -> loss`` as a method with one term, ``"loss"``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward_train(self, student, batch):
        out = student(batch.x)
        loss = self.fn(out, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
            raise TypeError(f"the loss function {name} must return a scalar tensor (a graph to descend), got "
                            f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else f'shape {tuple(loss.shape)}'}"
                            f"; return a torch scalar such as F.cross_entropy(out, batch.y)")
        return logits_of(out), {"loss": loss}

    def start_epoch(self, epoch, epochs):
        if hasattr(self.fn, "start_epoch"):
            self.fn.start_epoch(epoch, epochs)


def as_method(method):
    """A method as is; a plain ``fn(out, batch) -> loss`` (a function, or a module whose trainable
    parameters then train with the student) as a :class:`Loss`."""
    if isinstance(method, Method):
        return method
    if callable(method):
        return Loss(method)
    raise TypeError(f"method must be a kdnb.methods.Method or callable as fn(out, batch) -> loss, "
                    f"got {type(method).__name__}")
