"""Feature methods (chapter 7): FitNets hints, attention transfer, seed 002's projectors, their
cached teacher features and exponential schedules. Per method: output shapes, which parameters
get gradients (never the teacher's), the loss on a hand-computed case, bad arguments refused."""
import types

import pytest
import torch
from torch import nn

from kdnb import losses, models, train
from kdnb.methods import Attention, CrossEntropy, Distill, ExpDecay, Hint, Projected, TeacherFeatures, describe
from kdnb.methods.features import FeatureMethod
from kdnb.teachers import FrozenTeacher, TeacherCache

FAST = dict(epochs=2, batch_size=64, lr=3e-3, device="cpu", progress=False)
# digits are 1 × 8 × 8: conv 0, relu 1, conv 2, relu 3 (8 × 8), pool 4 (4 × 4), conv 5 ... relu 8, pool 9 (2 × 2)
STAGES = [("4", "4"), ("9", "9")]


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(0.3)


def convnet(data, seed=0, width=4):
    return models.build({"name": "convnet", "depth": 4, "width": width, "hidden": 16}, data.shape, data.classes,
                        seed=seed)


@pytest.fixture(scope="module")
def teacher(data):
    return convnet(data, seed=1, width=8).eval()


def batch_of(data, n=16):
    return train.Batch(data.x_train[:n], data.y_train[:n], torch.arange(n))


def grads_after_one_step(method, student, data):
    method.setup(student, data)
    _, terms = method.forward_train(student, batch_of(data))
    sum(terms.values()).backward()
    return terms


@pytest.mark.parametrize("make", [
    lambda t, kd: Hint(t, "4", "4", stage=None, kd=kd),
    lambda t, kd: Attention(t, STAGES, kd=kd),
    lambda t, kd: Projected(t, STAGES, 0.1, kd=kd)], ids=["hint", "attention", "projected"])
def test_gradients_reach_the_student_and_the_method_never_the_teacher(make, data, teacher):
    student = convnet(data)
    method = make(teacher, Distill(teacher, T=2.0, alpha=0.5))
    terms = grads_after_one_step(method, student, data)
    assert "kd" in terms and len(terms) == 2 and all(v.dim() == 0 for v in terms.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in method.parameters())  # regressor / projectors train
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in method.parameters() for q in teacher.parameters())


def test_fitnets_stage_1_gradients_stop_at_the_guided_layer(data, teacher):
    student = convnet(data)
    method = Hint(teacher, "4", "4", stage=1)
    grads_after_one_step(method, student, data)
    reached = {n for n, p in student.named_parameters() if p.grad is not None}
    assert reached == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert {id(p) for p in method.trainable(student)} == {id(p) for n, p in student.named_parameters()
                                                          if n in reached}
    assert isinstance(method.regressor, nn.Conv2d) and (method.regressor.in_channels,
                                                       method.regressor.out_channels) == (4, 8)


def test_hint_loss_by_hand(data, teacher):
    student = convnet(data)
    method = Hint(teacher, "4", "4", weight=2.0, stage=None)
    method.setup(student, data)
    with torch.no_grad():
        method.regressor.weight.zero_()
        method.regressor.bias.fill_(1.0)  # predicts 1 everywhere
    t = torch.randn(3, 8, 4, 4)
    term = method.feature_terms([torch.randn(3, 4, 4, 4)], [t])["hint"]
    assert term.item() == pytest.approx(2.0 * ((1 - t) ** 2).mean().item(), rel=1e-6)


def test_attention_maps_and_loss_by_hand(data, teacher):
    s = torch.ones(1, 2, 4)  # even activity: Q = (½, ½, ½, ½)
    t = torch.zeros(1, 3, 4)
    t[:, :, 0] = 2.0  # all on the first position: Q = (1, 0, 0, 0)
    torch.testing.assert_close(losses.attention_map(s), torch.full((1, 4), 0.5))
    torch.testing.assert_close(losses.attention_map(t), torch.tensor([[1.0, 0, 0, 0]]))
    method = Attention(teacher, STAGES, beta=1000.0)
    # mean((½ − 1)², ¼, ¼, ¼) = ¼, twice (two pairs), times β: the authors' code (cifar.py:
    # opt.beta * sum(loss_groups)) and RepDistiller, whose β = 1000 a reader copies
    term = method.feature_terms([s, s], [t, t])["at"]
    assert term.item() == pytest.approx(1000.0 * 2 * 0.25)
    # the paper's Eq. 2 is half of it at the same β, and says so
    paper = Attention(teacher, STAGES, beta=1000.0, form="paper").feature_terms([s, s], [t, t])["at"]
    assert paper.item() == pytest.approx(term.item() / 2)
    with pytest.raises(ValueError, match=r"form must be 'code' .* or 'paper' .* got 'half'"):
        Attention(teacher, STAGES, form="half")
    # Shapes: one map per sample, flattened over the positions of a 2-D feature.
    student = convnet(data)
    method.setup(student, data)
    out = method._taps(data.x_train[:5])
    assert losses.attention_map(out["4"]).shape == (5, 16) and losses.attention_map(out["9"]).shape == (5, 4)


def test_projected_loss_by_hand_and_shapes(data, teacher):
    student = convnet(data)
    method = Projected(teacher, STAGES, weight=0.1)
    method.setup(student, data)
    assert [(p.in_channels, p.out_channels) for p in method.projectors] == [(4, 8), (8, 16)]
    with torch.no_grad():
        for p in method.projectors:
            p.weight.zero_()
            p.bias.zero_()
    t = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    term = method.feature_terms([torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)], t)["feat"]
    assert term.item() == pytest.approx(0.1 * sum((f ** 2).mean().item() for f in t), rel=1e-6)


def test_teacher_features_are_the_live_teachers_looked_up_by_index(data, teacher):
    cache = TeacherFeatures.compute(teacher, data.x_train, ["4", "9"])
    assert len(cache) == len(data.y_train) and cache.nodes == ("4", "9")
    idx = torch.tensor([5, 0, 7])
    live = FrozenTeacher(teacher, ["4", "9"])(types.SimpleNamespace(x=data.x_train[idx]))
    got = cache(train.Batch(data.x_train[idx], data.y_train[idx], idx))
    for n in ("4", "9"):
        torch.testing.assert_close(got[n], live[n])
    with pytest.raises(ValueError, match="un-augmented"):
        cache(train.Batch(data.x_train[idx], data.y_train[idx], idx, augmented=True))
    other = TeacherFeatures.compute(convnet(data, seed=2, width=8), data.x_train, ["4", "9"])
    assert describe(Attention(cache, STAGES)) != describe(Attention(other, STAGES))
    # Cached or live, the method trains the same student.
    a, b = convnet(data), convnet(data)
    kd = TeacherCache.compute(teacher, data.x_train)
    ha = train.fit(a, data, Projected(cache, STAGES, kd=Distill(kd, T=0.5, alpha=0.7)), **FAST)
    hb = train.fit(b, data, Projected(teacher, STAGES, kd=Distill(teacher, T=0.5, alpha=0.7)), **FAST)
    assert ha["terms"]["feat"] == pytest.approx(hb["terms"]["feat"], rel=1e-4)


def test_schedules_decay_epoch_by_epoch_and_run_inside_feature_methods(data, teacher):
    T = ExpDecay(0.5, 0.3, 0.95)
    values = [T(e, 8) for e in range(8)]
    assert values[0] == 0.5 and values[1] == pytest.approx(0.475) and values == sorted(values, reverse=True)
    assert ExpDecay(0.5, 0.3, 0.95)(29, 30) == 0.3  # the floor
    kd = Distill(teacher, T=T, alpha=ExpDecay(0.8, 0.5, 0.95))
    method = Projected(teacher, STAGES, kd=kd)
    method.start_epoch(3, 8)
    assert kd._T == pytest.approx(0.5 * 0.95 ** 3) and kd._alpha == pytest.approx(0.8 * 0.95 ** 3)


def test_bad_arguments_are_refused_clearly(data, teacher):
    with pytest.raises(ValueError, match=r"teacher nodes \['99'\] are not graph nodes of Sequential; allowed: "
                                         r"input, 0, 1, .*\b14\b|nodes \['99'\] are not graph nodes"):
        Attention(teacher, [("4", "99")])
    student = convnet(data)
    with pytest.raises(ValueError, match=r"nodes \['nope'\] are not graph nodes of Sequential; allowed: input, 0, 1"):
        Projected(teacher, [("nope", "4")]).setup(student, data)
    cache = TeacherFeatures.compute(teacher, data.x_train[:8], ["4"])
    with pytest.raises(ValueError, match=r"teacher nodes \['9'\] are not among .* it holds: 4$"):
        Attention(cache, STAGES)
    with pytest.raises(ValueError, match=r"attention maps need features of one spatial size: student node '4' is "
                                         r"\(4, 4, 4\), teacher node '9' is \(16, 2, 2\)"):
        Attention(teacher, [("4", "9")]).setup(student, data)
    with pytest.raises(ValueError, match=r"1x1 projector needs conv features of one spatial size"):
        Projected(teacher, [("9", "4")]).setup(student, data)
    with pytest.raises(ValueError, match=r"^teacher_features shape \(2, 8\) must equal student_features shape "
                                         r"\(2, 4\); add a projector"):
        losses.hint_loss(torch.zeros(2, 4), torch.zeros(2, 8))
    for make, name in [(lambda: Projected(teacher, STAGES, weight=-0.1), "weight"),
                       (lambda: Attention(teacher, STAGES, beta=-1.0), "beta"),
                       (lambda: Hint(teacher, "4", "4", weight=-1.0), "weight"),
                       (lambda: ExpDecay(0.5, 0.3, 1.5), "rate")]:
        with pytest.raises(ValueError, match=rf"^{name} must be in (\[|\()"):
            make()
    with pytest.raises(ValueError, match=r"^pairs must be a non-empty list of \(student node, teacher node\)"):
        Projected(teacher, ["4"])
    with pytest.raises(TypeError, match=r"^kd must be a kdnb.methods.Distill or None, got CrossEntropy"):
        Attention(teacher, STAGES, kd=CrossEntropy())
    with pytest.raises(TypeError, match=r"^teacher must be an nn.Module, a FrozenTeacher or a TeacherFeatures"):
        Projected("resnet", STAGES)
    assert issubclass(Projected, FeatureMethod) and issubclass(Attention, FeatureMethod)


def test_the_pairs_seeds_follow_the_seed_offset(monkeypatch):
    from kdnb.book import feature_pairs, profiles, settings
    monkeypatch.delenv("KDNB_SMOKE", raising=False)
    monkeypatch.setenv("KDNB_SEED_OFFSET", "1000")
    for name, table in settings.FEATURE_PAIRS.items():
        n = table["seeds"]
        assert feature_pairs.seeds(profiles.get(name)) == tuple(range(1000, 1000 + n))
    monkeypatch.setenv("KDNB_SEED_OFFSET", "0")
    assert feature_pairs.seeds(profiles.get("quick")) == tuple(range(settings.FEATURE_PAIRS["quick"]["seeds"]))
    monkeypatch.setenv("KDNB_SMOKE", "1")
    assert feature_pairs.seeds(profiles.get("quick")) == (0, 1)
