"""Attention transfer (Zagoruyko & Komodakis 2017): the student matches the teacher's spatial
attention maps, ``Q = mean over channels of |A|^p`` flattened and L2-normalised per sample, at
pairs of layers of one spatial size; usually beside Hinton KD."""
from .. import losses
from ..checks import check_number
from .features import FeatureMethod


class Attention(FeatureMethod):
    """The attention term ``"at"``, plus ``kd`` (a :class:`Distill`, optional). ``pairs`` are
    ``(student node, teacher node)``; their maps must have one size (channels may differ).

    Two forms of the same loss are in use, and a β means one or the other:

    * ``form="code"`` (the default): ``beta · Σ_pairs mean((Q_s − Q_t)²)``, the authors' code
      (``opt.beta * sum(loss_groups)`` in szagoruyko/attention-transfer's ``cifar.py``) and
      RepDistiller's; their β = 1000 means this;
    * ``form="paper"``: ``beta / 2 · Σ_pairs ‖Q_s − Q_t‖²`` averaged the same way, the paper's Eq. 2:
      half the code's term at the same β."""

    FORMS = {"code": 1.0, "paper": 0.5}

    def __init__(self, teacher, pairs, beta=1000.0, p=2, kd=None, form="code"):
        super().__init__(teacher, pairs, kd)
        self.beta = check_number("beta", beta, low=0)
        self.p = check_number("p", p, low=0, low_open=True)
        if form not in self.FORMS:
            raise ValueError(f"form must be 'code' (beta · Σ, the authors' code and RepDistiller) or 'paper' "
                             f"(beta / 2 · Σ, the paper's Eq. 2), got {form!r}")
        self.form = form

    def build(self, student_features, teacher_features):
        for (s_node, t_node), s, t in zip(self.pairs, student_features, teacher_features):
            if s.dim() < 3 or s.shape[2:] != t.shape[2:]:
                raise ValueError(f"attention maps need features of one spatial size: student node {s_node!r} "
                                 f"is {tuple(s.shape[1:])}, teacher node {t_node!r} is {tuple(t.shape[1:])} "
                                 f"(channels, size...); pick nodes of the same size")

    def feature_terms(self, student_features, teacher_features):
        at = sum(losses.attention_loss(s, t, self.p) for s, t in zip(student_features, teacher_features))
        return {"at": self.beta * self.FORMS[self.form] * at}
