"""Teachers: a model that never trains (:class:`FrozenTeacher`), its outputs computed once and
looked up by sample index (:class:`TeacherCache`), ``predict``, and intermediate features read
through ``torchvision.models.feature_extraction`` (:func:`taps`)."""
import torch
from torch import nn

from . import losses, store
from .device import autocast


def logits_of(out):
    """The logits of a model's output: the tensor itself, or a dict's ``"logits"``."""
    return out["logits"] if isinstance(out, dict) else out


@torch.no_grad()
def predict(model, x, batch_size=1024, device=None):
    """Logits of ``model`` on ``x`` (eval mode, no gradients); the model's mode is restored."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = []
        for i in range(0, len(x), batch_size):
            with autocast(device):
                outs.append(logits_of(model(x[i:i + batch_size].to(device, non_blocking=True))).float())
        return torch.cat(outs)
    finally:
        model.train(was_training)


def graph_nodes(model):
    """The node names a feature tap can read (train-mode graph), for error messages and readers."""
    from torchvision.models.feature_extraction import get_graph_node_names
    return get_graph_node_names(model)[0]


def taps(model, nodes, logits=True):
    """``model`` as a module returning ``{node: feature}`` for the named graph ``nodes`` (plus
    ``"logits"``), through ``create_feature_extractor``. It shares the model's parameters (no copy),
    so training through it trains the model; without ``logits`` it holds only the layers the
    nodes need."""
    from torchvision.models.feature_extraction import create_feature_extractor
    nodes = [nodes] if isinstance(nodes, str) else list(nodes)
    names = graph_nodes(model)
    missing = [n for n in nodes if n not in names]
    if missing:
        raise ValueError(f"nodes {missing} are not graph nodes of {type(model).__name__}; "
                         f"allowed: {', '.join(names)}")
    return create_feature_extractor(model, {**{n: n for n in nodes}, **({names[-1]: "logits"} if logits else {})})


class FrozenTeacher(nn.Module):
    """A teacher that never trains: eval mode always (even when the method is put in train mode),
    parameters without gradients, forward under ``no_grad``. With ``nodes`` it returns
    ``{node: feature, "logits": logits}`` read through :func:`taps`.

    The model is held, not registered as a child: a frozen teacher is no part of a method's
    parameters or state dict (a cached student or a checkpoint would otherwise carry a copy of the
    teacher's weights); the method's cache description names it by its weights instead."""

    def __init__(self, model, nodes=()):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        model._kdnb_frozen_by = "kdnb.teachers.FrozenTeacher"  # fit names it if the caller trains it later
        self.nodes = tuple([nodes] if isinstance(nodes, str) else nodes)
        self._taps = taps(model, self.nodes).eval() if self.nodes else None  # shares model's weights

    def train(self, mode=True):
        super().train(mode)
        self.model.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.model._apply(fn, *args, **kwargs)  # not registered children: moved here
        if self._taps is not None:
            self._taps._apply(fn, *args, **kwargs)
        return self

    def extra_repr(self):
        return f"model={type(self.model).__name__}, nodes={list(self.nodes)}"

    @torch.no_grad()
    def forward(self, batch):
        if self._taps is None:
            return logits_of(self.model(batch.x)).float()
        self._taps.eval()
        return self._taps(batch.x)

    def cache_description(self, describe):
        return {"FrozenTeacher": describe(self.model, "teacher.model"), "nodes": list(self.nodes)}

    def __setattr__(self, name, value):
        if name in ("model", "_taps"):  # kept out of _modules (see the class docstring)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


class TeacherCache:
    """A frozen teacher's logits on every training sample, computed once, looked up by index.

    ``cache(batch)`` returns the rows for ``batch.idx``, so a shuffled batch gets the outputs
    of its own samples. Augmented batches are refused: the stored logits are of clean inputs.
    """

    def __init__(self, logits):
        self.logits = logits
        self._targets, self._targets_key = None, None

    @classmethod
    def compute(cls, teacher, x, batch_size=1024, device=None):
        return cls(predict(teacher, x, batch_size=batch_size, device=device))

    def to(self, device):
        self.logits = self.logits.to(device)
        return self

    def __len__(self):
        return len(self.logits)

    def __call__(self, batch):
        """The teacher's logits on the batch's samples."""
        self.check(batch)
        return self.logits.index_select(0, batch.idx)  # half the cost of logits[idx]

    def targets(self, batch, T, alpha=1.0):
        """``losses.hinton_targets`` on the batch's samples: computed for every sample once per
        (T, α), so a step only gathers its columns."""
        self.check(batch)
        if self._targets_key != (T, alpha) or self._targets.device != self.logits.device:
            self._targets, self._targets_key = losses.hinton_targets(self.logits, T, alpha), (T, alpha)
        return self._targets.index_select(-1, batch.idx)

    def check(self, batch):
        if batch.augmented:
            raise ValueError("TeacherCache holds logits of un-augmented inputs; with augment=True "
                             "use a live teacher (kdnb.teachers.FrozenTeacher)")
        if self.logits.device != batch.idx.device:
            self.to(batch.idx.device)

    def cache_description(self, describe):
        return {"TeacherCache": store.tensor_hash(self.logits)}
