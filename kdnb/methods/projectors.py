"""Seed 002's hybrid: Hinton KD plus ``weight`` · feature MSE through 1×1 projectors that align
the channel counts stage by stage, with T and α fixed or decaying exponentially
(:class:`kdnb.methods.hinton.ExpDecay`)."""
from torch import nn

from .. import losses
from ..checks import check_number
from .features import FeatureMethod


class Projected(FeatureMethod):
    """``kd`` (a :class:`Distill`: α · T² · KL + (1 − α) · CE) plus ``weight · Σ_stages
    MSE(P_k(s_k), t_k)`` (term ``"feat"``): each student stage ``s_k`` through its own trained
    1×1 convolution ``P_k`` to the teacher's channel count (seed 002's code: ``FeatureProjector(
    in_c=student, out_c=teacher)``). The other direction, teacher → student through a trained
    projector, has a trivial minimum: a zero projector, where the loss only shrinks the student's
    features. Stages must have one spatial size."""

    def __init__(self, teacher, pairs, weight=0.1, kd=None):
        super().__init__(teacher, pairs, kd)
        self.weight = check_number("weight", weight, low=0)
        self.projectors = None  # built in setup, from the features' channel counts

    def build(self, student_features, teacher_features):
        for (s_node, t_node), s, t in zip(self.pairs, student_features, teacher_features):
            if s.dim() not in (3, 4) or s.shape[2:] != t.shape[2:]:
                raise ValueError(f"a 1x1 projector needs conv features of one spatial size: student node "
                                 f"{s_node!r} is {tuple(s.shape[1:])}, teacher node {t_node!r} is "
                                 f"{tuple(t.shape[1:])} (channels, size...); pick stages of the same size")
        if self.projectors is None:
            conv = nn.Conv1d if student_features[0].dim() == 3 else nn.Conv2d
            self.projectors = nn.ModuleList(conv(s.shape[1], t.shape[1], 1).to(device=s.device, dtype=s.dtype)
                                            for s, t in zip(student_features, teacher_features))

    def feature_terms(self, student_features, teacher_features):
        mse = sum(losses.hint_loss(proj(s), t)
                  for proj, s, t in zip(self.projectors, student_features, teacher_features))
        return {"feat": self.weight * mse}
