"""kdnb.sweep.fit_grid: every member of a stacked grid matches training it alone with fit + Distill
(same seed, same batches); chunks and the one-by-one fallback change nothing; selection on
validation; dropout masks differ per member; clear errors for BatchNorm and bad members."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdnb import cached, data as kdata, models, sweep
from kdnb.teachers import TeacherCache
from kdnb.methods import Distill, Stackable
from kdnb.methods.hinton import TeacherOutputs
from kdnb.train import NonFiniteLoss, evaluate, fit

FAST = dict(epochs=3, batch_size=32, lr=3e-3, device="cpu", progress=False)
MLP = {"name": "mlp", "hidden": [16]}


@pytest.fixture(scope="module")
def small():
    return kdata.load("mnist1d").subset(0.1)  # ~360 training samples


@pytest.fixture(scope="module")
def data(small):
    return replace(small, x_test=None, y_test=None)  # no test split at all: any look at it would crash


@pytest.fixture(scope="module")
def teacher(data):
    return torch.randn(len(data.y_train), data.classes, generator=torch.Generator().manual_seed(1)) * 3


def convnet(data):
    return lambda: models.convnet(data.shape, depth=2, width=4, hidden=8, classes=data.classes, dims=1, norm=False)


def assert_same_member(h, model, ref_h, ref_model, atol=1e-5):
    for k in ("loss", "train_acc", "val_acc"):
        assert h[k] == pytest.approx(ref_h[k], abs=atol), k
    assert h["best_epoch"] == ref_h["best_epoch"]
    assert h["best_val_acc"] == pytest.approx(ref_h["best_val_acc"], abs=atol)
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4, msg=name)


def test_grid_helper():
    members = sweep.grid([0, 0.5], [1, 4, 8], seeds=[0, 1])
    assert len(members) == 12
    assert members[0] == {"alpha": 0, "T": 1, "seed": 0} and members[-1] == {"alpha": 0.5, "T": 8, "seed": 1}


def test_mlp_members_match_fit_each_with_its_own_seed_and_batches(data, teacher):
    members = sweep.grid([0, 0.5, 1], [1, 4], seeds=[0, 1])
    r = sweep.fit_grid(MLP, data, teacher, members, **FAST)
    assert r.vectorized and len(r.histories) == len(r.models) == len(members)
    for m, h, model in zip(members, r.histories, r.models):
        ref = models.build(MLP, data.shape, data.classes, seed=m["seed"])
        ref_h = fit(ref, data, Distill(TeacherCache(teacher), m["T"], m["alpha"]), seed=m["seed"], **FAST)
        assert_same_member(h, model, ref_h, ref)
    # alpha = 0 is plain cross-entropy: T must not matter.
    assert r.history(0, 1, 0)["loss"] == pytest.approx(r.history(0, 4, 0)["loss"], abs=1e-6)


def test_convnet_members_match_fit_with_shared_batches(data, teacher):
    make = convnet(data)
    members = [{"alpha": 0.9, "T": 4, "seed": 3}, {"alpha": 0.25, "T": 2, "seed": 5}]
    kw = {**FAST, "optimizer": "adamw", "weight_decay": 1e-2, "schedule": "cosine"}
    r = sweep.fit_grid(make, data, TeacherCache(teacher), members, data_seed=7, **kw)
    for m, h, model in zip(members, r.histories, r.models):
        torch.manual_seed(m["seed"])
        ref = make()
        ref_h = fit(ref, data, Distill(TeacherCache(teacher), m["T"], m["alpha"]), seed=m["seed"], shuffle_seed=7, **kw)
        assert h["lr"] == pytest.approx(ref_h["lr"])
        assert_same_member(h, model, ref_h, ref)


def test_chunks_and_one_by_one_give_the_same_members(data, teacher, monkeypatch):
    members = sweep.grid([0.1, 0.9], [2, 16], seeds=[0])
    whole = sweep.fit_grid(MLP, data, teacher, members, **FAST)
    chunked = sweep.fit_grid(MLP, data, teacher, members, max_members_per_chunk=3, **FAST)
    assert "2 chunk(s)" in chunked.note
    monkeypatch.setattr(sweep, "SEQUENTIAL_ABOVE_FLOPS", 0)  # every student now counts as too wide to stack
    with pytest.warns(UserWarning, match="one by one"):
        alone = sweep.fit_grid(MLP, data, teacher, members, **FAST)
    assert not alone.vectorized and "one by one" in alone.note
    for other in (chunked, alone):
        for h, model, ref_h, ref in zip(other.histories, other.models, whole.histories, whole.models):
            assert_same_member(h, model, ref_h, ref)


def test_members_keep_their_best_validation_weights_in_train_mode(data, teacher):
    r = sweep.fit_grid(MLP, data, teacher, sweep.grid([0.5], [4], seeds=[0, 1]), **{**FAST, "epochs": 4})
    for h, model in zip(r.histories, r.models):
        assert model.training
        assert h["best_val_acc"] == max(h["val_acc"]) and h["val_acc"][h["best_epoch"]] == h["best_val_acc"]
        assert evaluate(model, data.x_val, data.y_val) == pytest.approx(h["best_val_acc"], abs=1e-6)
    last = sweep.fit_grid(MLP, data, teacher, sweep.grid([0.5], [4], seeds=[0]), select="last", **FAST)
    assert last.histories[0]["best_epoch"] == FAST["epochs"] - 1


def test_dropout_masks_differ_between_members(data, teacher):
    twins = [{"alpha": 0.5, "T": 4, "seed": 0}] * 2
    same = sweep.fit_grid(MLP, data, teacher, twins, **FAST)
    torch.testing.assert_close(same.models[0].state_dict(), same.models[1].state_dict())
    dropped = sweep.fit_grid({**MLP, "dropout": 0.5}, data, teacher, twins, **FAST)
    assert not torch.equal(dropped.models[0][1].weight, dropped.models[1][1].weight)


def test_batchnorm_trains_one_by_one_and_refuses_to_be_stacked(data, teacher):
    make = lambda: models.convnet(data.shape, depth=2, width=4, hidden=8, classes=data.classes, dims=1, norm=True)
    with pytest.raises(ValueError, match=r"BatchNorm1d.*norm=False.*GroupNorm.*kdnb\.train\.fit"):
        sweep.fit_grid(make, data, teacher, sweep.grid([0.5], [4]), vectorize=True, **FAST)
    members = sweep.grid([0.5, 1.0], [4], seeds=[0])
    r = sweep.fit_grid(make, data, teacher, members, **FAST)  # "auto": one by one, with fit
    assert not r.vectorized and "BatchNorm1d" in r.note
    for m, h, model in zip(members, r.histories, r.models):
        torch.manual_seed(m["seed"])
        ref = make()
        ref_h = fit(ref, data, Distill(TeacherCache(teacher), m["T"], m["alpha"]), seed=m["seed"], **FAST)
        assert_same_member(h, model, ref_h, ref, atol=0)


def test_augmented_grid_runs_the_teacher_model_live(digits):
    """Seed 001's CIFAR-10 grid in miniature: a batch-norm student, augmented batches, and the
    teacher model itself (cached logits would be of the un-augmented images)."""
    small = digits.subset(0.2)
    teacher = models.mlp(small.shape, hidden=(16,))
    spec = {"name": "convnet", "depth": 2, "width": 4, "hidden": 8, "norm": True}
    members = sweep.grid([0.5], [2, 4], seeds=[0])
    with pytest.raises(ValueError, match="augment=True needs the teacher model itself"):
        sweep.fit_grid(spec, small, TeacherCache.compute(teacher, small.x_train), members, augment=True, **FAST)
    with pytest.raises(ValueError, match="augment=True can't be stacked"):
        sweep.fit_grid(spec, small, teacher, members, augment=True, vectorize=True, **FAST)
    r = sweep.fit_grid(spec, small, teacher, members, augment=True, **FAST)
    assert not r.vectorized and "one by one" in r.note
    for m, h, model in zip(members, r.histories, r.models):
        ref = models.build(spec, small.shape, small.classes, seed=m["seed"])
        ref_h = fit(ref, small, Distill(teacher, m["T"], m["alpha"]), seed=m["seed"], augment=True, **FAST)
        assert_same_member(h, model, ref_h, ref, atol=0)
    unaugmented = sweep.fit_grid(spec, small, teacher, members, **FAST)  # the model stands for its cached logits
    ref = models.build(spec, small.shape, small.classes, seed=0)
    ref_h = fit(ref, small, Distill(TeacherCache.compute(teacher, small.x_train), 2, 0.5), seed=0, **FAST)
    assert_same_member(unaugmented.histories[0], unaugmented.models[0], ref_h, ref, atol=0)


@pytest.mark.parametrize("bad, match", [
    ({"alpha": 1.5, "T": 4, "seed": 0}, r"members\[1\].*alpha must be in \[0, 1\], got 1\.5"),
    ({"alpha": 0.5, "T": 0, "seed": 0}, r"members\[1\].*T must be in \(0, inf\), got 0"),
    ({"alpha": 0.5, "T": -2.0, "seed": 0}, r"members\[1\].*T must be in"),
    ({"alpha": 0.5, "T": 4}, r"members\[1\].*exactly the keys alpha, T, seed"),
    ({"alpha": 0.5, "T": 4, "seed": -1}, r"members\[1\].*seed must be a non-negative integer, got -1"),
])
def test_bad_member_is_named(data, teacher, bad, match):
    with pytest.raises(ValueError, match=match):
        sweep.fit_grid(MLP, data, teacher, [{"alpha": 0.5, "T": 4, "seed": 0}, bad], **FAST)


def test_bad_arguments(data, teacher):
    members = sweep.grid([0.5], [4])
    with pytest.raises(ValueError, match="members must be a non-empty list"):
        sweep.fit_grid(MLP, data, teacher, [], **FAST)
    with pytest.raises(ValueError, match=r"teacher_logits must have shape \(\d+, 10\)"):
        sweep.fit_grid(MLP, data, teacher[:-1], members, **FAST)
    with pytest.raises(ValueError, match="max_members_per_chunk must be a positive integer"):
        sweep.fit_grid(MLP, data, teacher, members, max_members_per_chunk=0, **FAST)
    with pytest.raises(ValueError, match="vectorize must be"):
        sweep.fit_grid(MLP, data, teacher, members, vectorize="yes", **FAST)
    with pytest.raises(TypeError, match="make_student must build a fresh student.*got the model Linear"):
        sweep.fit_grid(nn.Linear(40, 10), data, teacher, members, **FAST)
    with pytest.raises(ValueError, match="outputs 5 classes but data 'mnist1d' has 10"):
        sweep.fit_grid(lambda: models.mlp(data.shape, [8], classes=5), data, teacher, members, **FAST)


def test_diverging_member_is_named(data, teacher):
    with pytest.raises(NonFiniteLoss, match=r"members\[0\] = \{'alpha': 0.5, 'T': 1, 'seed': 0\}"):
        sweep.fit_grid(MLP, data, teacher, sweep.grid([0.5], [1, 4]), **{**FAST, "lr": 1e30})


def test_trained_grid_is_computed_once(small, teacher, fresh_cache, monkeypatch):
    data = small  # with its test split: the cache key hashes the data
    members = sweep.grid([0, 1], [4])
    first = cached.trained_grid(MLP, data, teacher, members, **FAST)
    monkeypatch.setattr(sweep, "fit_grid", lambda *a, **k: pytest.fail("trained again instead of loaded"))
    again = cached.trained_grid(MLP, data, teacher, members, **FAST)
    assert again.histories == first.histories and again.rows() == first.rows()
    torch.testing.assert_close(again.models[1].state_dict(), first.models[1].state_dict(), check_device=False)


def test_trained_grid_names_a_teacher_model_by_its_weights(small, fresh_cache, monkeypatch):
    teacher, other = (models.build(MLP, small.shape, small.classes, seed=s) for s in (1, 2))
    passes = []
    real = TeacherCache.compute
    monkeypatch.setattr(TeacherCache, "compute", classmethod(lambda cls, *a, **k: passes.append(1) or real(*a, **k)))
    members = sweep.grid([0.5], [4])
    first = cached.trained_grid(MLP, small, teacher, members, **FAST)
    assert len(passes) == 1  # one pass over the training split, in fit_grid: none for the cache key
    again = cached.trained_grid(MLP, small, teacher, members, **FAST)
    assert len(passes) == 1 and again.histories == first.histories  # loaded, not trained again
    cached.trained_grid(MLP, small, other, members, **FAST)
    assert len(passes) == 2  # another teacher's weights: another entry


def test_full_profile_grid_is_seed_001s_cifar_pair(tmp_path, monkeypatch):
    """The full profile's grid on tiny CIFAR-10 files in the real format: the same call trains the
    ResNet-18 teacher and the batch-norm student, augmented, the teacher run live (no GPU here)."""
    import importlib
    from test_data import existence_only, tiny_images, write_cifar10
    from kdnb.book import experiments, profiles
    existence_only(monkeypatch, importlib.import_module("torchvision.datasets.cifar"))
    write_cifar10(tmp_path, tiny_images(40, 3, 32, 32, 0, 250, seed=1), tiny_images(10, 3, 32, 32, 0, 250, seed=2))
    full = profiles.get("full")
    cifar = full.extra["seed001_cifar"]
    tiny = replace(full, extra={"seed001_cifar": {**cifar, "teacher_fit": {**cifar["teacher_fit"], "epochs": 1},
                                                  "student_fit": {**cifar["student_fit"], "epochs": 1}}})
    pair = experiments.grid_pair(tiny, root=tmp_path)
    assert pair.data.name == "cifar10" and pair.student == {"name": "cifar_cnn"}
    assert models.count_params(pair.teacher) == 11_173_962 and not pair.teacher.training
    assert pair.fit_args["augment"] is True and pair.fit_args["optimizer"] == "sgd"
    r = sweep.fit_grid(pair.student, pair.data, pair.teacher, sweep.grid([0.5], [4]), device="cpu", **pair.fit_args)
    assert not r.vectorized and "BatchNorm2d" in r.note
    assert len(r.histories[0]["val_acc"]) == 1


# --- members with their own samples, labels, epochs and teachers (chapter 4's fractions, transfer
# sets and controls in one grid): each still ends as fit would leave it ---

def mixed_members(data):
    n = len(data.y_train)
    g = torch.Generator().manual_seed(3)
    few = torch.randperm(n, generator=g)[:50].sort().values  # 2 batches of 32: 32 + 18
    most = torch.arange(n - 100)  # 8 batches, the last 4 short of the full data's
    return [{"alpha": 0.9, "T": 4, "seed": 0, "train": few, "epochs": 9},  # about step-matched
            {"alpha": 0.0, "T": 1, "seed": 1, "train": few, "epochs": 9, "labels": "teacher"},
            {"alpha": 1.0, "T": 2, "seed": 0, "train": most, "epochs": 2},
            {"alpha": 0.0, "T": 1, "seed": 2, "epochs": 2, "teacher": 1},
            {"alpha": 0.5, "T": 4, "seed": 1, "epochs": 2, "teacher": 1}]


def test_members_with_their_own_samples_labels_epochs_and_teachers_match_fit(data, teacher):
    other = teacher.flip(0)  # a second teacher: another row per sample
    members = mixed_members(data)
    r = sweep.fit_grid(MLP, data, [teacher, other], members, **FAST)
    assert r.vectorized
    for m, h, model in zip(members, r.histories, r.models):
        d, method = sweep.member_fit(m, data, [teacher, other], [teacher, other])
        ref = models.build(MLP, data.shape, data.classes, seed=m["seed"])
        ref_h = fit(ref, d, method, seed=m["seed"], **{**FAST, "epochs": m["epochs"]})
        assert len(h["val_acc"]) == m["epochs"]
        assert_same_member(h, model, ref_h, ref)


def test_member_fit_is_what_a_member_means(data, teacher):
    m = mixed_members(data)[1]
    d, method = sweep.member_fit(m, data, [teacher], [teacher])
    assert torch.equal(d.x_train, data.x_train[m["train"]]) and torch.equal(d.x_val, data.x_val)
    assert type(method).__name__ == "TeacherLabels"
    assert torch.equal(method.teacher.logits, teacher[m["train"]])  # looked up by the subset's own index


def test_stacks_group_members_by_step_count(data):
    n = len(data.y_train)
    members = [{"alpha": 0, "T": 1, "seed": 0, "epochs": e} for e in (3, 30, 3, 32)]
    assert sweep.stacks(members, n, 3, 32, "constant") == [[0, 2], [1, 3]]
    assert sweep.stacks(members, n, 3, 32, "cosine") == [[0, 2], [1], [3]]
    assert sweep.stacks(members, n, 3, 32, "constant", most=1) == [[0], [2], [1], [3]]


def test_one_by_one_fallback_takes_members_own_samples(data, teacher):
    members = mixed_members(data)[:3]
    stacked = sweep.fit_grid(MLP, data, teacher, members, **FAST)
    alone = sweep.fit_grid(MLP, data, teacher, members, vectorize=False, **FAST)
    for a, b, ma, mb in zip(stacked.histories, alone.histories, stacked.models, alone.models):
        assert_same_member(a, ma, b, mb)


@pytest.mark.parametrize("extra, match", [
    ({"train": [0, 1]}, r"members\[1\]: train must be a non-empty 1-D int64 tensor"),
    ({"train": torch.tensor([0, 10 ** 6])}, r"members\[1\]: train must hold indices in \[0, \d+\]"),
    ({"labels": "soft"}, r"labels must be one of 'true', 'teacher', got 'soft'"),
    ({"labels": "teacher"}, r"labels='teacher' is cross-entropy .* alpha must be 0, got 0.5"),
    ({"epochs": 0}, r"members\[1\].*epochs must be a positive integer"),
    ({"teacher": 1}, r"teacher must be an index into the 1 teacher\(s\) given, in \[0, 0\], got 1"),
    ({"lr": 1e-3}, r"exactly the keys alpha, T, seed, and optionally train, labels, epochs, teacher"),
])
def test_bad_member_options_are_named(data, teacher, extra, match):
    with pytest.raises(ValueError, match=match):
        sweep.fit_grid(MLP, data, teacher, [{"alpha": 0.5, "T": 4, "seed": 0},
                                            {"alpha": 0.5, "T": 4, "seed": 0, **extra}], **FAST)


def test_trained_grid_keys_a_members_samples(small, teacher, fresh_cache, monkeypatch):
    n = len(small.y_train)
    member = lambda idx: [{"alpha": 0.5, "T": 4, "seed": 0, "train": idx}]
    first = cached.trained_grid(MLP, small, teacher, member(torch.arange(n - 10)), **FAST)
    calls = []
    real = sweep.fit_grid
    monkeypatch.setattr(sweep, "fit_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cached.trained_grid(MLP, small, teacher, member(torch.arange(n - 10)), **FAST)
    assert not calls and again.histories == first.histories  # equal indices: a hit
    cached.trained_grid(MLP, small, teacher, member(torch.arange(10, n)), **FAST)
    assert calls == [1]  # as many samples, other ones: trained


# --- a stackable loss the loop has never seen ---------------------------------------------------

class SoftMSE(TeacherOutputs):
    """A logit-matching loss defined here alone: ``β · MSE(student logits, teacher logits) +
    (1 − β) · CE``, as fit trains it."""

    def __init__(self, teacher, beta):
        super().__init__(teacher)
        self.beta = beta

    def losses(self, logits, batch):
        mse = ((logits - self.teacher_logits(batch)) ** 2).mean()
        return {"mse": self.beta * mse + (1 - self.beta) * F.cross_entropy(logits, batch.y)}


class StackedSoftMSE(Stackable):
    """The same loss for a stack of members, each with its own β: nothing of it is in kdnb.sweep."""
    params = ("beta",)

    def check(self, member):
        if not 0 <= member["beta"] <= 1:
            raise ValueError(f"beta must be in [0, 1], got {member['beta']!r}")

    def targets(self, logits, params):  # the teacher's logits themselves, sample-major (n, members, K)
        n_members = len(params["beta"])
        logits = logits.expand(n_members, -1, -1) if logits.dim() == 2 else logits
        return logits.transpose(0, 1).contiguous()

    def loss(self, out, targets, labels, params, weights):
        beta = params["beta"][:, None]
        mse = ((out - targets) ** 2).mean(-1)
        ce = F.cross_entropy(out.transpose(1, 2), labels, reduction="none")
        per_sample = beta * mse + (1 - beta) * ce
        return per_sample.mean(-1) if weights is None else (per_sample * weights).sum(-1) / weights.sum(-1)

    def method(self, teacher, member):
        return SoftMSE(teacher, member["beta"])

    def term(self, member):
        return "mse"


def test_a_new_stackable_loss_stacks_and_its_members_match_fit(data, small, teacher, fresh_cache):
    """A loss kdnb.sweep has never seen, defined in this file, stacks: every member (its own β and
    seed, one on its own samples for more epochs, so batches are padded) ends as fit with the
    loss's method leaves it, and its history has fit's keys."""
    members = [{"beta": 0.5, "seed": 0}, {"beta": 1.0, "seed": 1}, {"beta": 0.2, "seed": 2},
               {"beta": 0.7, "seed": 3, "train": torch.arange(0, len(data.y_train), 3), "epochs": 4}]
    loss = StackedSoftMSE()
    r = sweep.fit_grid(MLP, data, teacher, members, loss=loss, **FAST)
    assert r.vectorized
    for m, h, model in zip(members, r.histories, r.models):
        d, method = sweep.member_fit(m, data, [teacher], [teacher], loss)
        assert isinstance(method, SoftMSE)
        ref = models.build(MLP, data.shape, data.classes, seed=m["seed"])
        ref_h = fit(ref, d, method, seed=m["seed"], **{**FAST, "epochs": m.get("epochs", FAST["epochs"])})
        assert_same_member(h, model, ref_h, ref)
        assert set(h) == set(ref_h) and set(h["terms"]) == {"mse"}
        assert h["terms"]["mse"] == pytest.approx(ref_h["terms"]["mse"], abs=1e-5)
        assert h["batching"] == ref_h["batching"] and h["world_size"] == ref_h["world_size"]
    stored = cached.trained_grid(MLP, small, teacher, members, loss=loss, **FAST)  # data_key reads a test split
    assert [h["best_val_acc"] for h in stored.histories] == [h["best_val_acc"] for h in r.histories]
    with pytest.raises(ValueError, match=r"members\[0\] = .*beta must be in \[0, 1\], got 2"):
        sweep.fit_grid(MLP, data, teacher, [{"beta": 2, "seed": 0}], loss=loss, **FAST)
    with pytest.raises(ValueError, match=r"exactly the keys beta, seed"):
        sweep.fit_grid(MLP, data, teacher, [{"alpha": 0.5, "T": 2, "seed": 0}], loss=loss, **FAST)
    with pytest.raises(TypeError, match=r"loss must be a kdnb.methods.Stackable"):
        sweep.fit_grid(MLP, data, teacher, members, loss=F.mse_loss, **FAST)


def test_stacked_members_histories_have_fits_keys(data, teacher):
    members = [{"alpha": 0.5, "T": 2, "seed": 0}, {"alpha": 0, "T": 1, "seed": 1, "labels": "teacher"}]
    r = sweep.fit_grid(MLP, data, teacher, members, **FAST)
    for m, h in zip(members, r.histories):
        d, method = sweep.member_fit(m, data, [teacher], [teacher])
        ref_h = fit(models.build(MLP, data.shape, data.classes, seed=m["seed"]), d, method, seed=m["seed"], **FAST)
        assert set(h) == set(ref_h) and set(h["terms"]) == set(ref_h["terms"])
        assert h["batching"] == ref_h["batching"] and h["world_size"] == ref_h["world_size"] == [1] * 3
