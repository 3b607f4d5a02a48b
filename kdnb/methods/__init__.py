"""Distillation methods, one small module per family, all under one protocol (``base``)."""
from .adversarial import FrozenD, GANKD, WGANKD
from .attention import Attention
from .base import Loss, Method, Player, Uncacheable, as_method, code_of, describe
from .features import Hint, TeacherFeatures
from .hinton import CrossEntropy, Distill, TeacherLabels
from .projectors import ExpDecay, Projected
from .teacher_free import LabelSmoothing, VirtualTeacher

__all__ = ["Attention", "CrossEntropy", "Distill", "ExpDecay", "FrozenD", "GANKD", "Hint", "LabelSmoothing", "Loss", "Method",
           "Player", "Projected", "TeacherFeatures", "TeacherLabels", "Uncacheable", "VirtualTeacher", "WGANKD", "as_method",
           "code_of", "describe"]
