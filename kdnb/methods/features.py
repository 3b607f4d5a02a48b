"""Methods that read intermediate features of teacher and student, through
``torchvision.models.feature_extraction`` (named graph nodes; :func:`kdnb.teachers.taps`):
FitNets hints (Romero et al. 2015), in two stages or one. :class:`FeatureMethod` is what they
share with attention transfer (``attention``) and seed 002's projectors (``projectors``): the
teacher's features (live, or :class:`TeacherFeatures` looked up by sample index), the student's
taps, an optional Hinton term and its schedules."""

import torch
from torch import nn

from .. import losses, store
from ..checks import check_number
from ..teachers import FrozenTeacher, taps
from .base import Batch, Method
from .hinton import Distill


class TeacherFeatures:
    """A frozen teacher's features at named ``nodes`` on every training sample, computed once and
    looked up by sample index (what :class:`kdnb.teachers.TeacherCache` is for logits). Augmented
    batches are refused: the stored features are of clean inputs."""

    def __init__(self, features):
        if not isinstance(features, dict) or not features:
            raise ValueError(f"features must be a non-empty dict {{node: tensor}}, got {type(features).__name__}")
        self.features = dict(features)
        self.nodes = tuple(self.features)

    @classmethod
    @torch.no_grad()
    def compute(cls, model, x, nodes, batch_size=512, device=None):
        device = device or next(model.parameters()).device
        frozen = FrozenTeacher(model, nodes)
        parts = [frozen(Batch(x[i:i + batch_size].to(device)))
                 for i in range(0, len(x), batch_size)]
        return cls({n: torch.cat([p[n].float() for p in parts]) for n in frozen.nodes})

    def __len__(self):
        return len(next(iter(self.features.values())))

    def __call__(self, batch):
        if batch.augmented:
            raise ValueError("TeacherFeatures holds features of un-augmented inputs; with augment=True "
                             "use a live teacher (pass the model)")
        idx = batch.idx
        if next(iter(self.features.values())).device != idx.device:
            self.features = {n: f.to(idx.device) for n, f in self.features.items()}
        return {n: f.index_select(0, idx) for n, f in self.features.items()}

    def cache_description(self, describe):
        return {"TeacherFeatures": {n: store.tensor_hash(f) for n, f in self.features.items()}}


def feature_teacher(teacher, nodes):
    """The teacher as ``batch -> {node: feature}``: a model is frozen and tapped at ``nodes``
    (an unknown node is refused, listing the valid ones); a :class:`FrozenTeacher` or
    :class:`TeacherFeatures` must hold them already."""
    if isinstance(teacher, (FrozenTeacher, TeacherFeatures)):
        missing = [n for n in nodes if n not in teacher.nodes]
        if missing:
            raise ValueError(f"teacher nodes {missing} are not among the nodes this teacher reads; "
                             f"it holds: {', '.join(teacher.nodes)}")
        return teacher
    if isinstance(teacher, nn.Module):
        return FrozenTeacher(teacher, list(dict.fromkeys(nodes)))
    raise TypeError(f"teacher must be an nn.Module, a FrozenTeacher or a TeacherFeatures, "
                    f"got {type(teacher).__name__}")


def regressor(student_feature, teacher_feature):
    """The smallest map from the student's feature shape to the teacher's: a 1×1 convolution
    between conv features of one size, else a linear layer on the flattened features."""
    s, t = student_feature.shape[1:], teacher_feature.shape[1:]
    if len(s) == len(t) and len(s) in (2, 3) and s[1:] == t[1:]:
        return (nn.Conv1d if len(s) == 2 else nn.Conv2d)(s[0], t[0], 1)
    return nn.Sequential(nn.Flatten(), nn.Linear(s.numel(), t.numel()), nn.Unflatten(1, t))


class FeatureMethod(Method):
    """A loss on pairs ``(student node, teacher node)`` of features, plus an optional Hinton term
    ``kd`` (a :class:`Distill`; its T and α schedules run here). Subclasses define
    ``build(student_features, teacher_features)`` (once, in setup: parts whose shapes depend on
    the student) and ``feature_terms(student_features, teacher_features) -> {name: term}``."""

    def __init__(self, teacher, pairs, kd=None):
        super().__init__()
        pairs = [tuple(p) for p in pairs]
        if not pairs or any(len(p) != 2 or not all(isinstance(n, str) for n in p) for p in pairs):
            raise ValueError(f"pairs must be a non-empty list of (student node, teacher node) names, got {pairs!r}")
        if kd is not None and not isinstance(kd, Distill):
            raise TypeError(f"kd must be a kdnb.methods.Distill or None, got {type(kd).__name__}")
        self.teacher = feature_teacher(teacher, [t for _, t in pairs])
        self.pairs, self.kd = pairs, kd

    def setup(self, student, data):
        nodes = list(dict.fromkeys(s for s, _ in self.pairs))
        object.__setattr__(self, "_taps", taps(student, nodes))  # the student's weights: not ours to list
        if self.kd is not None:
            self.kd.setup(student, data)
        with torch.no_grad():
            device = next(student.parameters()).device
            probe = Batch(data.x_train[:2].to(device), idx=torch.arange(2, device=device))
            was = student.training
            s = self._taps.eval()(probe.x)
            self._taps.train(was)
            if isinstance(self.teacher, FrozenTeacher):
                self.teacher.to(device)
            t = self.teacher(probe)
        self.build([s[a] for a, _ in self.pairs], [t[b] for _, b in self.pairs])

    def build(self, student_features, teacher_features):
        pass

    def start_epoch(self, epoch, epochs):
        if self.kd is not None:
            self.kd.start_epoch(epoch, epochs)

    def forward_train(self, student, batch):
        self._taps.train(student.training)
        out = self._taps(batch.x)
        feats = self.teacher(batch)
        terms = self.feature_terms([out[s] for s, _ in self.pairs], [feats[t] for _, t in self.pairs])
        if self.kd is not None:
            terms.update(self.kd.losses(out["logits"], batch))
        return out["logits"], terms


class Hint(FeatureMethod):
    """FitNets: the student's ``guided`` node, through a trained regressor, predicts the teacher's
    ``hint`` node (MSE, term ``"hint"``, weighted by ``weight``). ``stage=1`` trains only the
    student's layers up to the guided node, and the regressor (FitNets' first stage); ``stage=None``
    trains the whole student on hint + ``kd`` (a :class:`Distill`, optional) at once, as RepDistiller
    and mdistiller do. Stage 2 is ``Distill`` started from stage 1's weights
    (``kdnb.cached.trained(..., init=stage1_model)``)."""

    def __init__(self, teacher, hint, guided, weight=1.0, stage=1, kd=None):
        if stage not in (1, None):
            raise ValueError(f"stage must be 1 (hint only, lower layers) or None (hint with the whole "
                             f"student), got {stage!r}")
        if stage == 1 and kd is not None:
            raise ValueError("kd must be None in stage 1: FitNets' first stage trains on the hint alone")
        super().__init__(teacher, [(guided, hint)], kd)
        self.hint, self.guided, self.stage = hint, guided, stage
        self.weight = check_number("weight", weight, low=0)
        self.regressor = None  # built in setup, from the two features' shapes

    def build(self, student_features, teacher_features):
        if self.regressor is None:
            s, t = student_features[0], teacher_features[0]
            self.regressor = regressor(s, t).to(device=s.device, dtype=s.dtype)  # the student's dtype

    def trainable(self, student):
        if self.stage is None:
            return super().trainable(student)
        # The guided node's graph reaches back to the input through these parameters only.
        lower = taps(student, [self.guided], logits=False)
        reached = {id(p) for p in lower.parameters()}
        return [p for p in student.parameters() if id(p) in reached and p.requires_grad]

    def feature_terms(self, student_features, teacher_features):
        s, t = self.regressor(student_features[0]), teacher_features[0]
        return {"hint": self.weight * losses.hint_loss(s, t)}
