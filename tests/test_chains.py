"""kdnb.chains: each link distilled from the one before, cached by kdnb.cached.trained and keyed on
its teacher's weights, so a changed link retrains itself and the links after it, nothing before."""
import pytest
import torch

from kdnb import chains, models, store, train
from kdnb.methods import Distill, describe
from kdnb.teachers import FrozenTeacher, TeacherCache

SPEC = {"name": "mlp", "hidden": [16]}
FIT = dict(epochs=2, batch_size=64, lr=3e-3, progress=False)


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(0.5)


@pytest.fixture(scope="module")
def teacher(data):
    model = models.build({"name": "mlp", "hidden": [64]}, data.shape, data.classes, seed=7)
    train.fit(model, data, epochs=3, batch_size=64, lr=3e-3, progress=False)
    return model.eval()


@pytest.fixture
def fits(monkeypatch):
    """Every fit that trained() runs (a cache miss), by the seed it trained."""
    seen, real_fit = [], train.fit

    def counting(model, data, method=None, **kw):
        seen.append(kw["seed"])
        return real_fit(model, data, method, **kw)
    monkeypatch.setattr(train, "fit", counting)
    return seen


def weights(model):
    return torch.cat([v.flatten().float() for v in model.state_dict().values()])


def test_a_chain_trains_each_link_from_the_one_before(data, teacher, fresh_cache, fits):
    links = [chains.Link(SPEC, T=2.0, alpha=0.5, seed=1), chains.Link(SPEC, T=4.0, alpha=0.9, seed=2),
             chains.Link({"name": "mlp", "hidden": [8]}, T=4.0, alpha=1.0, seed=3)]  # a smaller last link
    out = chains.chain(teacher, data, links, **FIT)
    assert fits == [1, 2, 3] and len(out) == 3
    assert all(not m.training and list(h["terms"]) == ["kd"] for m, h in out)
    # Link i was distilled from link i − 1: training it by hand from that model hits its entry.
    for i, link in enumerate(links):
        before = teacher if i == 0 else out[i - 1][0]
        model, _ = chains.distill(before, data, link, **FIT)
        assert torch.equal(weights(model), weights(out[i][0]))
    assert fits == [1, 2, 3]


def test_a_changed_link_retrains_itself_and_the_links_after_it(data, teacher, fresh_cache, fits):
    links = [chains.Link(SPEC, T=2.0, alpha=0.5, seed=s) for s in (1, 2, 3)]
    first = chains.chain(teacher, data, links, **FIT)
    assert fits == [1, 2, 3]
    chains.chain(teacher, data, links, **FIT)
    assert fits == [1, 2, 3]  # all three from the cache
    links[1] = chains.Link(SPEC, T=8.0, alpha=0.5, seed=2)
    second = chains.chain(teacher, data, links, **FIT)
    assert fits == [1, 2, 3, 2, 3]  # the first link is kept
    assert torch.equal(weights(first[0][0]), weights(second[0][0]))
    assert not torch.equal(weights(first[2][0]), weights(second[2][0]))  # its teacher changed


def test_another_teacher_retrains_the_whole_chain(data, teacher, fresh_cache, fits):
    links = [chains.Link(SPEC, seed=1), chains.Link(SPEC, seed=2)]
    chains.chain(teacher, data, links, **FIT)
    other = models.build({"name": "mlp", "hidden": [64]}, data.shape, data.classes, seed=8)
    chains.chain(other, data, links, **FIT)
    assert fits == [1, 2, 1, 2]
    assert len(list((fresh_cache / "models").glob("*.pt"))) == 4


def test_the_key_is_the_teachers_weights_not_its_logits(data, teacher):
    a, b = chains.ModelOutputs(teacher, data.x_train), chains.ModelOutputs(teacher, data.x_train)
    assert isinstance(a, TeacherCache) and torch.equal(a.logits, train.predict(teacher, data.x_train))
    key = lambda t: store.key_of(describe(Distill(t, 4.0, 0.9)))
    assert key(a) == key(b)
    nudged = models.build({"name": "mlp", "hidden": [64]}, data.shape, data.classes)
    nudged.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        next(nudged.parameters())[0, 0] += 1e-3
    assert key(chains.ModelOutputs(nudged, data.x_train)) != key(a)


def test_augmented_batches_get_the_live_teacher(data, teacher):
    assert isinstance(chains.teacher_of(teacher, data, augment=True), FrozenTeacher)
    assert isinstance(chains.teacher_of(teacher, data), chains.ModelOutputs)


def test_a_links_student_starts_from_its_own_seed(data, teacher, fresh_cache):
    # Same teacher and settings, another seed: another student (initial weights and batches).
    a, _ = chains.distill(teacher, data, chains.Link(SPEC, seed=1), **FIT)
    b, _ = chains.distill(teacher, data, chains.Link(SPEC, seed=2), **FIT)
    assert not torch.equal(weights(a), weights(b))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"spec": "mlp"}, TypeError, r"^spec must be a model spec dict with a 'name'"),
    ({"spec": {"hidden": [8]}}, TypeError, r"^spec must be a model spec dict with a 'name'"),
    ({"T": 0.0}, ValueError, r"^T must be in \(0, inf\), got 0\.0"),
    ({"alpha": 1.5}, ValueError, r"^alpha must be in \[0, 1\], got 1\.5"),
    ({"seed": -1}, ValueError, r"^seed must be a non-negative integer, got -1"),
    ({"seed": 1.0}, ValueError, r"^seed must be a non-negative integer, got 1\.0"),
])
def test_bad_links_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        chains.Link(**{"spec": SPEC, **kwargs})


def test_bad_chains_are_refused(data, teacher):
    with pytest.raises(ValueError, match=r"^links must hold at least one kdnb.chains.Link"):
        chains.chain(teacher, data, [], **FIT)
    with pytest.raises(TypeError, match=r"^chain needs fit's epochs"):
        chains.chain(teacher, data, [chains.Link(SPEC)], batch_size=64)
    with pytest.raises(TypeError, match=r"^link must be a kdnb.chains.Link, got dict"):
        chains.distill(teacher, data, {"spec": SPEC}, **FIT)


def test_one_progress_bar_for_the_chain(data, teacher, fresh_cache, monkeypatch):
    bars = []
    real_bar = chains.progress_bar

    def counting(total, desc, progress=None):
        bars.append((total, desc))
        return real_bar(total, desc, False)
    monkeypatch.setattr(chains, "progress_bar", counting)
    chains.chain(teacher, data, [chains.Link(SPEC, seed=1), chains.Link(SPEC, seed=2)], **FIT)
    assert bars == [(4, "chain of 2")]
