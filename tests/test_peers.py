"""A peer library's missing T² (book ch. 2, pitfalls): torchdistill 1.1.5's KDLoss returns the bare
KL(q_T || p_T), without β·T², when its CE weight ``alpha`` is 0 or no targets are passed — the
transfer-set case — so against Hinton's T²·KL it is 1/T² too small. With targets and a nonzero CE
weight it is α·CE + (1 − α)·T²·KL, which is kdnb's hinton_loss with the soft weight 1 − α."""
import pytest
import torch

from kdnb.losses import hinton_loss, kd_loss

mid_level = pytest.importorskip("torchdistill.losses.mid_level")  # in pyproject's test extra


def torchdistill_kd(T, alpha):
    from torchdistill.losses.registry import get_mid_level_loss
    kwargs = dict(student_module_path="fc", student_module_io="output", teacher_module_path="fc",
                  teacher_module_io="output", temperature=T, alpha=alpha)
    loss = get_mid_level_loss({"key": "KDLoss", "kwargs": kwargs})  # as a torchdistill config builds it
    assert type(loss) is mid_level.KDLoss
    return lambda s, t, targets=None: loss({"fc": {"output": s}}, {"fc": {"output": t}}, targets)


g = torch.Generator().manual_seed(0)
S, TEACHER = 3 * torch.randn(2, 32, 10, generator=g, dtype=torch.float64)  # student, teacher logits
Y = torch.randint(0, 10, (32,), generator=g)


@pytest.mark.parametrize("T", [3.0, 8.0])
@pytest.mark.parametrize("alpha, targets", [(0.5, None), (0.0, Y)], ids=["no-targets", "ce-weight-0"])
def test_torchdistill_kdloss_drops_T_squared(T, alpha, targets):
    ratio = torchdistill_kd(T, alpha)(S, TEACHER, targets) / kd_loss(S, TEACHER, T)
    assert ratio.item() == pytest.approx(1 / T**2, rel=1e-12)  # 1/9 at T = 3, 1/64 at T = 8


@pytest.mark.parametrize("T", [3.0, 8.0])
def test_torchdistill_kdloss_with_targets_has_T_squared(T):
    ours = hinton_loss(S, TEACHER, Y, T, alpha=0.7)  # 0.7·T²·KL + 0.3·CE
    assert torchdistill_kd(T, alpha=0.3)(S, TEACHER, Y).item() == pytest.approx(ours.item(), rel=1e-12)
