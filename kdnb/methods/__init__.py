"""Distillation methods, one small module per family, all under one protocol (``base``)."""
from .adversarial import GANKD
from .base import Loss, Method, Player, Uncacheable, as_method, code_of, describe
from .features import Hint
from .hinton import CrossEntropy, Distill, TeacherLabels
from .teacher_free import LabelSmoothing, VirtualTeacher

__all__ = ["CrossEntropy", "Distill", "GANKD", "Hint", "LabelSmoothing", "Loss", "Method", "Player", "TeacherLabels",
           "Uncacheable", "VirtualTeacher", "as_method", "code_of", "describe"]
