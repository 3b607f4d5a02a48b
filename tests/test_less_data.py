"""Chapter 4's data and helpers: nested, stratified, seeded fractions; transfer sets for every data
set (fresh MNIST-1D signals, or the training images outside the labelled fraction), nested by
size; a class removed from a training split; the bias correction chosen on validation; students
step-matched at a pair's batch size; and a soft-target grid member that never reads a label."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from kdnb import data as kdata, models, sweep
from kdnb.book import experiments
from kdnb.data import Data, fractions, stratified_pick, transfer_sets, without_class
from kdnb.book.experiments import GridPair
from kdnb.train import fit

FRACTIONS = [0.05, 0.1, 0.25, 0.5, 1.0]


def rows(x):
    return {bytes(r.numpy().tobytes()) for r in x.contiguous()}


def counts(y, classes=10):
    return torch.bincount(y, minlength=classes)


@pytest.fixture(scope="module")
def mnist1d():
    return kdata.load("mnist1d")


# --- fractions ---------------------------------------------------------------------------------

def test_fractions_are_nested(mnist1d):
    subsets = fractions(mnist1d, FRACTIONS)
    assert list(subsets) == FRACTIONS
    sets = [rows(subsets[f].x_train) for f in FRACTIONS]
    for small, big in zip(sets, sets[1:]):
        assert small < big  # the 5 % subset lies inside the 10 %, and so on
    assert subsets[1.0] is mnist1d


def test_fractions_are_stratified_and_leave_val_and_test_alone(mnist1d):
    full = counts(mnist1d.y_train)
    for f, d in fractions(mnist1d, FRACTIONS).items():
        assert ((counts(d.y_train) - f * full).abs() <= 0.5 + 1e-9).all(), f  # rounded per class
        assert torch.equal(d.x_val, mnist1d.x_val) and torch.equal(d.x_test, mnist1d.x_test)


def test_fractions_are_seeded(mnist1d):
    a, b = fractions(mnist1d, [0.1], seed=0)[0.1], fractions(mnist1d, [0.1], seed=0)[0.1]
    assert torch.equal(a.x_train, b.x_train)
    other = fractions(mnist1d, [0.1], seed=1)[0.1]
    assert rows(other.x_train) != rows(a.x_train)
    assert torch.equal(counts(other.y_train), counts(a.y_train))  # same strata, other samples
    # Nested within a seed, whichever seed.
    assert rows(fractions(mnist1d, [0.05], seed=1)[0.05].x_train) < rows(other.x_train)


def old_stratified_pick(y, fraction, seed):
    """The pick as it was before the nested orders were factored out: subsets stay the same."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        n = max(1, round(fraction * len(idx)))
        picks.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(picks).sort().values


@pytest.mark.parametrize("fraction, seed", [(0.05, 0), (0.5, 0), (0.2, 3), (0.001, 7)])
def test_existing_subsets_are_unchanged(digits, fraction, seed):
    assert torch.equal(stratified_pick(digits.y_train, fraction, seed),
                       old_stratified_pick(digits.y_train, fraction, seed))


@pytest.mark.parametrize("bad, match", [
    ([], "non-empty list"), ("0.5", "non-empty list"), (0.5, "non-empty list"),
    ([0.1, 0], r"fractions\[...\] must be in \(0, 1\]"), ([1.5], r"must be in \(0, 1\]"),
])
def test_bad_fractions_are_named(digits, bad, match):
    with pytest.raises(ValueError, match=match):
        fractions(digits, bad)


# --- transfer sets -----------------------------------------------------------------------------

def test_mnist1d_transfer_sets_are_fresh_nested_signals(mnist1d):
    labelled, sets = transfer_sets(mnist1d, [0, 100, 300])
    assert labelled is mnist1d
    n = len(mnist1d.y_train)
    assert torch.equal(sets[0].x_train, mnist1d.x_train)
    for k in (100, 300):
        assert len(sets[k].y_train) == n + k
        assert torch.equal(sets[k].x_train[:n], mnist1d.x_train)  # the labelled split comes first
    assert torch.equal(sets[300].x_train[:n + 100], sets[100].x_train)  # nested by size
    fresh = rows(sets[300].x_train[n:])
    assert len(fresh) == 300 and not fresh & rows(torch.cat([mnist1d.x_train, mnist1d.x_val, mnist1d.x_test]))
    # Scaled with the labelled data's statistics, like every split of it.
    extra = sets[300].x_train[n:]
    assert abs(extra.mean().item()) < 0.2 and abs(extra.std().item() - 1) < 0.2
    assert set(sets[300].y_train[n:].tolist()) <= set(range(10))
    for k in (0, 300):
        assert torch.equal(sets[k].x_val, mnist1d.x_val) and torch.equal(sets[k].x_test, mnist1d.x_test)


def test_mnist1d_transfer_sets_beside_a_labelled_fraction(mnist1d):
    labelled, sets = transfer_sets(mnist1d, [50], labelled_fraction=0.25)
    assert torch.equal(labelled.x_train, mnist1d.subset(0.25).x_train)
    assert len(sets[50].y_train) == len(labelled.y_train) + 50


def test_image_transfer_sets_are_the_unlabelled_rest(digits):
    labelled, sets = transfer_sets(digits, [0, 200, 500], labelled_fraction=0.4)
    assert torch.equal(labelled.x_train, digits.subset(0.4).x_train)
    n = len(labelled.y_train)
    everything, lab = rows(digits.x_train), rows(labelled.x_train)
    pool = rows(sets[500].x_train[n:])
    assert len(pool) == 500 and pool <= everything and not pool & lab  # never a labelled image again
    assert torch.equal(sets[500].x_train[:n + 200], sets[200].x_train)  # nested by size
    assert torch.equal(sets[0].x_train, labelled.x_train)
    # The pool's true labels ride along (for the true-label control), row for row.
    by_row = {bytes(r.numpy().tobytes()): int(c) for r, c in zip(digits.x_train, digits.y_train)}
    assert [by_row[bytes(r.numpy().tobytes())] for r in sets[500].x_train[n:]] == sets[500].y_train[n:].tolist()
    # All of the rest, in a seeded order: another seed, another order of the same images.
    rest = len(digits.y_train) - n
    _, all_of_it = transfer_sets(digits, [rest], labelled_fraction=0.4)
    assert rows(all_of_it[rest].x_train) == everything
    _, again = transfer_sets(digits, [200], labelled_fraction=0.4, seed=2)
    assert not torch.equal(again[200].x_train, sets[200].x_train)


def test_image_transfer_set_larger_than_the_pool_is_refused(digits):
    labelled = digits.subset(0.4)
    rest = len(digits.y_train) - len(labelled.y_train)
    with pytest.raises(ValueError, match=f"has {rest} training images outside the labelled 0.4"):
        transfer_sets(digits, [rest + 1], labelled_fraction=0.4)
    with pytest.raises(ValueError, match="has 0 training images outside"):
        transfer_sets(digits, [10])  # everything is labelled: no pool


def test_transfer_room(mnist1d, digits):
    assert kdata.transfer_room(mnist1d) == float("inf")  # a generator: as many as asked for
    rest = len(digits.y_train) - len(digits.subset(0.4).y_train)
    assert kdata.transfer_room(digits, 0.4) == rest and kdata.transfer_room(digits) == 0
    _, sets = transfer_sets(digits, [rest], labelled_fraction=0.4)  # exactly the room fits
    assert len(sets[rest].y_train) == len(digits.y_train)


@pytest.mark.parametrize("sizes, match", [([], "non-empty list"), ([-1], "non-negative integers"),
                                          ([1.5], "non-negative integers"), ([True], "non-negative")])
def test_bad_transfer_sizes_are_named(digits, sizes, match):
    with pytest.raises(ValueError, match=match):
        transfer_sets(digits, sizes, labelled_fraction=0.5)


def test_bad_labelled_fraction_is_named(digits):
    with pytest.raises(ValueError, match=r"labelled_fraction must be in \(0, 1\]"):
        transfer_sets(digits, [1], labelled_fraction=0)


def test_fresh_signals_need_mnist1d(digits):
    with pytest.raises(ValueError, match="must be the mnist1d data set"):
        kdata.fresh_signals(digits, 10)


# --- removing a class --------------------------------------------------------------------------

def test_without_class_drops_it_from_training_only(digits):
    d = without_class(digits, 3)
    assert 3 not in d.y_train.tolist()
    before, after = counts(digits.y_train), counts(d.y_train)
    assert after[3] == 0 and torch.equal(torch.cat([after[:3], after[4:]]), torch.cat([before[:3], before[4:]]))
    assert rows(d.x_train) == rows(digits.x_train[digits.y_train != 3])
    assert torch.equal(d.x_val, digits.x_val) and torch.equal(d.x_test, digits.x_test)
    assert 3 in d.y_val.tolist() and d.classes == 10  # still a 10-class problem, measured on 3s


@pytest.mark.parametrize("c", [-1, 10, 2.0, True, "3"])
def test_without_class_names_a_bad_class(digits, c):
    with pytest.raises(ValueError, match=r"c must be a class index in \[0, 9\]"):
        without_class(digits, c)


def test_without_the_only_class_is_refused(digits):
    only_threes = digits.with_train(digits.y_train == 3)
    with pytest.raises(ValueError, match="leaves data 'digits' no training samples"):
        without_class(only_threes, 3)


# --- the bias correction -----------------------------------------------------------------------

def toy(n_per_class=20, seed=0):
    """Inputs that are their label's one-hot vector, so a linear model's logits are its choice."""
    y = torch.arange(10).repeat(n_per_class)
    x = nn.functional.one_hot(y, 10).float()
    return Data("toy", x, y, x.clone(), y.clone(), x.clone(), y.clone(), 10, (10,))


def biased_model(low=10.0):
    model = nn.Linear(10, 10)
    with torch.no_grad():
        model.weight.copy_(5 * torch.eye(10))
        model.bias.zero_()
        model.bias[3] = -low  # class 3's bias much too low: a 3 scores -5, its rival 0
    return model


def test_raised_bias_recovers_the_class_and_is_chosen_on_validation():
    data, model = toy(), biased_model()
    r = experiments.raised_bias(model, data, 3)
    assert r["class_acc_before"] == 0 and r["test_acc_before"] == pytest.approx(0.9)
    assert r["class_acc"] == 1 and r["test_acc"] == 1 and r["val_acc"] == 1
    assert 5 < r["shift"] < 15  # above 5 a 3 wins; from 15 on the 3 beats every other class
    # The test split never moves the choice: a test split that would want another shift
    # (only 3s, where any large shift is right) leaves it where validation put it.
    threes = data.y_test == 3
    other = replace(data, x_test=data.x_test[threes], y_test=data.y_test[threes])
    assert experiments.raised_bias(model, other, 3, shifts=[0, 6, 30])["shift"] == 6
    assert experiments.raised_bias(model, data, 3, shifts=[0, 6, 30])["shift"] == 6


# --- step matching and a student that never reads a label ---------------------------------------

def test_budget_and_epochs_for_follow_the_pairs_batch_size():
    pair = GridPair(None, None, {}, {"epochs": 10, "batch_size": 100})
    assert experiments.budget(pair, 1000) == 100
    assert experiments.epochs_for(pair, 4000, 100) == 2 and experiments.epochs_for(pair, 100000, 100) == 1


def test_students_step_match_at_the_batch_size_they_train_with(digits):
    p = experiments.profiles.Profile(name="test", data="digits", teacher={"name": "mlp", "hidden": [8]},
                                     student={"name": "mlp", "hidden": [8]}, epochs=1, teacher_epochs=1,
                                     batch_size=64, lr=1e-3, teacher_lr=1e-3)
    small = digits.subset(0.2)  # ~260 samples: 9 batches of 32
    r = experiments.students(small, profile=p, seeds=[0], steps=18, batch_size=32, device="cpu", progress=False)
    assert r["epochs"] == 2 and r["steps"] == 18


def test_an_alpha_one_member_never_reads_a_label(mnist1d):
    small = mnist1d.subset(0.1)
    shuffled = replace(small, y_train=small.y_train[torch.randperm(len(small.y_train),
                                                                   generator=torch.Generator().manual_seed(0))])
    logits = torch.randn(len(small.y_train), 10, generator=torch.Generator().manual_seed(1)) * 3
    members = [{"alpha": 1.0, "T": 2.0, "seed": 0}, {"alpha": 0.0, "T": 1.0, "seed": 0}]
    args = dict(epochs=2, batch_size=64, lr=1e-2, device="cpu", progress=False)
    a, b = (sweep.fit_grid({"name": "mlp", "hidden": [16]}, d, logits, members, **args) for d in (small, shuffled))
    for (k, v), w in zip(a.models[0].state_dict().items(), b.models[0].state_dict().values()):
        assert torch.equal(v, w), k  # soft targets alone: the labels can be anything
    assert any(not torch.equal(v, w) for v, w in zip(a.models[1].state_dict().values(),
                                                      b.models[1].state_dict().values()))  # α = 0 reads them


def test_stacked_runs_are_step_matched_named_and_on_their_own_samples(mnist1d, fresh_cache):
    small = mnist1d.subset(0.2)  # 800 samples: 13 batches of 64
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    pair = GridPair(small, teacher.eval(), {"name": "mlp", "hidden": [8]},
                    {"epochs": 1, "batch_size": 64, "lr": 1e-2, "device": "cpu"})
    few = stratified_pick(small.y_train, 0.1, 0)  # 80 samples: 2 batches
    runs = {"CE": {"alpha": 0.0, "T": 1.0}, ("few", "KD"): {"alpha": 0.9, "T": 4.0, "train": few},
            "hard": {"alpha": 0.0, "T": 1.0, "labels": "teacher", "steps": 36}}
    out = experiments.stacked(pair, small, runs, 12, seeds=(0, 1), progress=False)
    assert list(out) == list(runs)
    batches = -(-len(small.y_train) // 64)
    assert batches == 13 and -(-len(few) // 64) == 2
    assert (out["CE"]["epochs"], out["CE"]["steps"]) == (1, batches)  # the whole epoch closest to 12 steps
    assert (out["few", "KD"]["epochs"], out["few", "KD"]["steps"]) == (6, 12)  # step-matched on 80 samples
    assert (out["hard"]["epochs"], out["hard"]["steps"]) == (3, 3 * batches)  # closest to its own 36
    assert all(len(r["test_acc"]) == len(r["models"]) == len(r["histories"]) == 2 for r in out.values())
    # the KD students trained on their 72 samples: the same as fit on that subset
    d, method = sweep.member_fit({"alpha": 0.9, "T": 4.0, "seed": 1, "train": few}, small, [teacher],
                                 [experiments.teacher_outputs(teacher, small).logits])
    ref = models.build(pair.student, small.shape, small.classes, seed=1)
    h = fit(ref, d, method, seed=1, epochs=6, batch_size=64, lr=1e-2, device="cpu", progress=False)
    assert out["few", "KD"]["histories"][1]["val_acc"] == pytest.approx(h["val_acc"], abs=1e-6)
