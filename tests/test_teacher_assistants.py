"""kdnb.book.capacity and chains.Root: a chain from a teacher trained in the same call, each stage
cached, so another assistant retrains only what changed; the ladder's settings and measures."""
import math

import pytest
import torch

from kdnb import cached, chains, models, train
from kdnb.book import capacity, settings

SPEC = {"name": "mlp", "hidden": [16]}
FIT = dict(epochs=2, batch_size=64, lr=3e-3, progress=False)
TINY = {"data": "digits", "depths": (1, 2, 3),
        "spec": {"name": "convnet", "width": 2, "hidden": 8, "norm": True},
        "fit": {"epochs": 1, "batch_size": 128, "lr": 1e-2}, "teacher_epochs": 2, "teacher_seed": 100,
        "seeds": 2, "cells": ((0.5, 2.0),)}


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(0.3)


@pytest.fixture
def fits(monkeypatch):
    """(spec, seed) of every fit that trained() runs (a cache miss)."""
    seen, real_fit = [], train.fit

    def counting(model, data, method=None, **kw):
        seen.append((type(method).__name__, kw["seed"]))
        return real_fit(model, data, method, **kw)
    monkeypatch.setattr(train, "fit", counting)
    return seen


@pytest.fixture
def tiny(monkeypatch):
    """A three-rung ladder of 1-D convnets on the digits, read as the quick profile's settings."""
    monkeypatch.setitem(settings.CAPACITY, "quick", TINY)
    monkeypatch.delenv("KDNB_SMOKE", raising=False)


def flat(model):
    return torch.cat([v.flatten().float() for v in model.state_dict().values()])


def test_a_root_is_trained_first_and_shares_trained_s_entry(data, fresh_cache, fits):
    root = chains.Root({"name": "mlp", "hidden": [32]}, seed=5, fit={"epochs": 3})
    out = chains.chain(root, data, [chains.Link(SPEC, seed=1)], **FIT)
    assert fits == [("CrossEntropy", 5), ("Distill", 1)] and len(out) == 2
    assert len(out[0][1]["epoch"]) == 3 and len(out[1][1]["epoch"]) == 2  # the root's own epochs
    alone, _ = cached.trained(root.spec, data, seed=5, **{**FIT, "epochs": 3})
    assert torch.equal(flat(alone), flat(out[0][0])) and len(fits) == 2


def test_another_assistant_retrains_only_what_changed(data, fresh_cache, fits):
    root = chains.Root({"name": "mlp", "hidden": [32]}, seed=9)
    student = chains.Link(SPEC, seed=2)
    first = chains.chain(root, data, [chains.Link({"name": "mlp", "hidden": [24]}, seed=2), student], **FIT)
    assert [k for k, _ in fits] == ["CrossEntropy", "Distill", "Distill"]
    del fits[:]
    second = chains.chain(root, data, [chains.Link({"name": "mlp", "hidden": [20]}, seed=2), student], **FIT)
    assert fits == [("Distill", 2), ("Distill", 2)]  # the new assistant and its student; no teacher
    assert torch.equal(flat(first[0][0]), flat(second[0][0]))
    del fits[:]
    chains.chain(root, data, [chains.Link({"name": "mlp", "hidden": [20]}, seed=2), student], **FIT)
    assert fits == []  # all from the cache


def test_a_path_is_one_call_and_shares_its_prefix(data, fresh_cache, fits, tiny):
    out = capacity.run_path((3, 2, 1), 0, data, 0.5, 2.0)
    assert fits == [("CrossEntropy", 100), ("Distill", 0), ("Distill", 0)]  # the teacher from its own seed
    assert [sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) for m, _ in out] == [3, 2, 1]
    assert len(out[0][1]["epoch"]) == 2 and len(out[1][1]["epoch"]) == 1  # teacher_epochs, then the students'
    capacity.run_path((3, 1), 0, data, 0.5, 2.0)
    assert fits[3:] == [("Distill", 0)]  # the 3-layer teacher came from the cache
    models_, histories = capacity.run_paths([(3, 2), (3, 1)], data, 0.5, 2.0, seeds=(0, 1))
    assert fits[4:] == [("Distill", 1), ("Distill", 1)]  # seed 1's students; one teacher for all seeds
    assert [len(v) for v in models_.values()] == [2, 2]
    assert all(isinstance(h[0]["best_val_acc"], float) for h in histories.values())
    teachers, _ = capacity.teachers([3], data)
    assert torch.equal(flat(teachers[3]), flat(out[0][0])) and len(fits) == 6


def test_baselines_are_cross_entropy_on_the_students_budget(data, fresh_cache, fits, tiny):
    ms, hs = capacity.baselines([1, 2], data, seeds=(0, 1))
    assert fits == [("CrossEntropy", 0), ("CrossEntropy", 1)] * 2
    assert list(ms) == [1, 2] and all(len(h["epoch"]) == 1 for v in hs.values() for h in v)


def test_settings_follow_the_profile_and_smoke(monkeypatch):
    monkeypatch.delenv("KDNB_SEED_OFFSET", raising=False)
    quick = capacity.settings("quick")
    assert quick["depths"] == (2, 4, 6, 8, 10) and quick["seeds"] == tuple(range(settings.CAPACITY["quick"]["seeds"]))
    assert len(quick["seeds"]) >= 8 and quick["teacher_seed"] not in quick["seeds"]
    assert capacity.settings("full")["fit"]["epochs"] == 100 and capacity.settings("full")["data"] == "cifar10"
    assert capacity.spec(6, "quick") == {**quick["spec"], "depth": 6}
    assert quick["teacher_epochs"] == 3 * quick["fit"]["epochs"]
    monkeypatch.setenv("KDNB_SMOKE", "1")
    assert capacity.settings("full")["fit"]["epochs"] == 1 == capacity.settings("full")["teacher_epochs"]
    assert settings.CAPACITY["full"]["fit"]["epochs"] == 100  # a copy, not the table


def test_every_seed_follows_the_seed_offset(monkeypatch, data, fresh_cache, fits, tiny):
    monkeypatch.setenv("KDNB_SEED_OFFSET", "1000")
    s = capacity.settings()
    assert s["seeds"] == (1000, 1001) and s["teacher_seed"] == 1100
    assert capacity.teacher_root(3).seed == 1100
    capacity.run_paths([(3, 1)], data, 0.5, 2.0)
    assert fits == [("CrossEntropy", 1100), ("Distill", 1000), ("Distill", 1001)]
    del fits[:]
    capacity.baselines([1], data)
    assert fits == [("CrossEntropy", 1000), ("CrossEntropy", 1001)]


def test_the_quick_ladder_differs_in_size_and_view():
    built = [models.build(capacity.spec(d, "quick"), (1, 40), 10) for d in (2, 4, 6, 8, 10)]
    params = [models.count_params(m) for m in built]
    fields = [capacity.receptive_field(m) for m in built]
    assert params == sorted(params) and fields == sorted(fields)
    assert fields[0] < 10 and fields[-1] >= 40  # 2 layers see a few samples, 10 the whole signal


def test_entropy_agreement_and_kl():
    uniform, sharp = torch.zeros(4, 10), torch.eye(10)[:4] * 50
    assert math.isclose(capacity.mean_entropy(uniform), math.log(10), rel_tol=1e-6)
    assert capacity.mean_entropy(sharp) < 1e-6 < capacity.mean_entropy(sharp, T=100.0)
    torch.manual_seed(0)
    a, b = models.mlp((5,), (8,), 3), models.mlp((5,), (8,), 3)
    x = torch.randn(64, 5)
    assert capacity.agreement(a, a, x) == 1.0 and 0 <= capacity.agreement(a, b, x) <= 1
    assert abs(capacity.soft_kl(a, a, x, 2.0)) < 1e-6 < capacity.soft_kl(a, b, x, 2.0)


def test_the_receptive_field_of_a_2d_convnet():
    m = models.convnet((3, 32, 32), depth=4, width=4)
    assert capacity.receptive_field(m) == 1 + 2 + 2 + 1 + 4 + 4 + 2  # conv conv pool conv conv pool


@pytest.mark.parametrize("call, error, message", [
    (lambda: chains.Root("mlp"), TypeError, r"^spec must be a model spec dict with a 'name'"),
    (lambda: chains.Root(SPEC, seed=-2), ValueError, r"^seed must be a non-negative integer, got -2"),
    (lambda: chains.Root(SPEC, fit=[("epochs", 3)]), TypeError, r"^fit must be None or a dict"),
    (lambda: capacity.spec(0), ValueError, r"^depth must be a positive integer, got 0"),
    (lambda: capacity.settings("nope"), ValueError, r"^profile must be one of quick, full"),
    (lambda: capacity.check_path(()), ValueError, r"^path must hold at least one depth"),
    (lambda: capacity.run_path((10,), 0, None, 0.5, 2.0), ValueError, r"^path must hold a teacher's depth and at "),
    (lambda: capacity.check_path("10-2"), TypeError, r"^path must be a sequence of depths"),
    (lambda: capacity.check_path((10, 2.5)), ValueError, r"^path depth must be a positive integer, got 2\.5"),
    (lambda: capacity.mean_entropy(torch.zeros(2, 3), T=0), ValueError, r"^T must be in \(0, inf\), got 0"),
])
def test_bad_input_is_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_bad_paths_and_chains_are_refused(data, tiny):
    with pytest.raises(ValueError, match=r"^alpha must be in \[0, 1\], got 2"):
        capacity.run_path((2, 1), 0, data, 2, 4.0)
    with pytest.raises(ValueError, match=r"^T must be in \(0, inf\), got -1"):
        capacity.run_path((2, 1), 0, data, 0.5, -1)
    with pytest.raises(TypeError, match=r"^teacher must be a trained torch.nn.Module or a kdnb.chains.Root, got dict"):
        chains.chain(SPEC, data, [chains.Link(SPEC)], **FIT)
    with pytest.raises(TypeError, match=r"^links\[1\] must be a kdnb.chains.Link, got dict"):
        chains.chain(chains.Root(SPEC), data, [chains.Link(SPEC), SPEC], **FIT)


def test_one_progress_bar_for_a_rooted_chain(data, fresh_cache, monkeypatch):
    bars = []
    real_bar = chains.progress_bar

    def counting(total, desc, progress=None):
        bars.append((total, desc))
        return real_bar(total, desc, False)
    monkeypatch.setattr(chains, "progress_bar", counting)
    chains.chain(chains.Root(SPEC, fit={"epochs": 3}), data, [chains.Link(SPEC, seed=1)], **FIT)
    assert bars == [(5, "chain of 2")]
