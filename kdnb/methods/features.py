"""Methods that read intermediate features of teacher and student, through
``torchvision.models.feature_extraction`` (named graph nodes; :func:`kdnb.teachers.taps`):
FitNets hints (Romero et al. 2015), in two stages or one."""
import types

import torch
from torch import nn

from .. import losses
from ..checks import check_number
from ..teachers import FrozenTeacher, taps
from .base import Method
from .hinton import Distill


def regressor(student_feature, teacher_feature):
    """The smallest map from the student's feature shape to the teacher's: a 1×1 convolution
    between conv features of one size, else a linear layer on the flattened features."""
    s, t = student_feature.shape[1:], teacher_feature.shape[1:]
    if len(s) == len(t) and len(s) in (2, 3) and s[1:] == t[1:]:
        return (nn.Conv1d if len(s) == 2 else nn.Conv2d)(s[0], t[0], 1)
    return nn.Sequential(nn.Flatten(), nn.Linear(s.numel(), t.numel()), nn.Unflatten(1, t))


class Hint(Method):
    """FitNets: the student's ``guided`` node, through a trained regressor, predicts the teacher's
    ``hint`` node (MSE, term ``"hint"``, weighted by ``weight``). ``stage=1`` trains only the
    student's layers up to the guided node, and the regressor (FitNets' first stage); ``stage=None``
    trains the whole student on hint + ``kd`` (a :class:`Distill`, optional) at once, as RepDistiller
    and mdistiller do. Stage 2 is ``Distill`` started from stage 1's weights
    (``kdnb.train.trained(..., init=stage1_model)``)."""

    def __init__(self, teacher, hint, guided, weight=1.0, stage=1, kd=None):
        super().__init__()
        if stage not in (1, None):
            raise ValueError(f"stage must be 1 (hint only, lower layers) or None (hint with the whole "
                             f"student), got {stage!r}")
        if stage == 1 and kd is not None:
            raise ValueError("kd must be None in stage 1: FitNets' first stage trains on the hint alone")
        if kd is not None and not isinstance(kd, Distill):
            raise TypeError(f"kd must be a kdnb.methods.Distill or None, got {type(kd).__name__}")
        self.teacher = teacher if isinstance(teacher, FrozenTeacher) else FrozenTeacher(teacher, [hint])
        self.hint, self.guided, self.stage, self.kd = hint, guided, stage, kd
        self.weight = check_number("weight", weight, low=0)
        self.regressor = None  # built in setup, from the two features' shapes

    def setup(self, student, data):
        object.__setattr__(self, "_taps", taps(student, [self.guided]))  # the student's weights: not ours to list
        if self.kd is not None:
            self.kd.setup(student, data)
        with torch.no_grad():
            x = data.x_train[:2].to(next(student.parameters()).device)
            s = self._taps.eval()(x)[self.guided]
            t = self.teacher.to(x.device)(types.SimpleNamespace(x=x))[self.hint]
        if self.regressor is None:
            self.regressor = regressor(s, t).to(x.device)

    def trainable(self, student):
        if self.stage is None:
            return super().trainable(student)
        # The guided node's graph reaches back to the input through these parameters only.
        lower = taps(student, [self.guided], logits=False)
        reached = {id(p) for p in lower.parameters()}
        return [p for p in student.parameters() if id(p) in reached and p.requires_grad]

    def forward_train(self, student, batch):
        self._taps.train(student.training)
        out = self._taps(batch.x)
        feats = self.teacher(batch)
        terms = {"hint": self.weight * losses.hint_loss(self.regressor(out[self.guided]), feats[self.hint])}
        if self.kd is not None:
            terms.update(self.kd.losses(out["logits"], batch))
        return out["logits"], terms
