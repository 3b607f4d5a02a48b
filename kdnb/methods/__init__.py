"""Distillation methods, one small module per family, all under one protocol (``base``)."""
from .adversarial import FrozenD, GANKD, WGANKD
from .attention import Attention
from ..keys import Uncacheable, code_of, describe
from .base import Batch, Loss, Method, Player, Stackable, as_method
from .features import Hint, TeacherFeatures
from .hinton import CrossEntropy, Distill, ExpDecay, StackedHinton, TeacherLabels
from .projectors import Projected
from .teacher_free import LabelSmoothing, VirtualTeacher

__all__ = ["Attention", "Batch", "CrossEntropy", "Distill", "ExpDecay", "FrozenD", "GANKD", "Hint", "LabelSmoothing", "Loss", "Method",
           "Player", "Projected", "Stackable", "StackedHinton", "TeacherFeatures", "TeacherLabels", "Uncacheable", "VirtualTeacher", "WGANKD", "as_method",
           "code_of", "describe"]
