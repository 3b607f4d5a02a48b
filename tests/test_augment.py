"""Augmentation in the data path: view makers, the seeded bank of views, and how they meet the
loop, the cache and the teacher."""
import pytest
import torch

from kdnb import augment, store
from kdnb.data import Data
from kdnb.keys import data_key
from kdnb.train import fit


def signals(n=12, length=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, length, generator=g)
    y = torch.arange(n) % classes
    return Data("toy1d", x, y, x[:3], y[:3], x[:3], y[:3], classes, (1, length))


def test_signal_views_is_a_roll_a_scale_and_noise():
    x = signals().x_train
    same = augment.SignalViews(shift=0, scale=(1, 1), noise=0)
    assert torch.equal(same(x, torch.Generator()), x)
    shifted = augment.SignalViews(shift=3, scale=(1, 1), noise=0)(x, torch.Generator().manual_seed(1))
    for i in range(len(x)):  # each row is the input rolled by some k in [-3, 3]
        assert any(torch.equal(shifted[i], torch.roll(x[i], k, -1)) for k in range(-3, 4))
    scaled = augment.SignalViews(shift=0, scale=(0.5, 2.0), noise=0)(x, torch.Generator().manual_seed(1))
    ratio = scaled[:, 0, 0] / x[:, 0, 0]
    assert ((ratio >= 0.5 - 1e-6) & (ratio <= 2.0 + 1e-6)).all()
    assert torch.allclose(scaled, x * ratio[:, None, None], atol=1e-6)  # one scale per signal
    noisy = augment.SignalViews(shift=0, scale=(1, 1), noise=0.1)(torch.zeros(2000, 1, 10), torch.Generator())
    assert abs(noisy.std().item() - 0.1) < 0.005


def test_views_follow_the_generator():
    x, views = signals().x_train, augment.SignalViews()
    a = views(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, views(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, views(x, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("kwargs, match", [
    ({"shift": -1}, "shift must be a non-negative integer"),
    ({"shift": 1.5}, "shift must be a non-negative integer"),
    ({"scale": 1.0}, r"scale must be a \(low, high\) pair"),
    ({"scale": (0, 1)}, r"scale\[0\]"),
    ({"scale": (1.2, 0.8)}, r"scale\[1\]"),
    ({"noise": -0.1}, "noise"),
])
def test_signal_views_refuse_bad_settings(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        augment.SignalViews(**kwargs)


def test_signal_views_refuse_images():
    with pytest.raises(ValueError, match=r"shape \(n, channels, length\)"):
        augment.SignalViews()(torch.zeros(2, 1, 4, 4), torch.Generator())


def test_image_views_crop_and_flip_with_torchvision():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    flip_only = augment.ImageViews(pad=0, flip=True)
    seen = set()
    for s in range(12):
        out = flip_only(x, torch.Generator().manual_seed(s))
        assert out.shape == x.shape
        for i in range(2):
            assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
            seen.add(torch.equal(out[i], x[i]))
    assert seen == {True, False}
    views = augment.ImageViews(pad=2)
    assert torch.equal(views(x, torch.Generator().manual_seed(5)), views(x, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="flip must be True or False"):
        augment.ImageViews(flip="yes")


def test_bank_rows_are_views_of_samples():
    d = signals()
    bank = augment.view_bank(d, augment.SignalViews(shift=2), views=4, seed=7)
    n = len(d.y_train)
    assert len(bank.data.y_train) == 4 * n and bank.count == 4
    assert torch.equal(bank.data.x_train[:n], d.x_train)  # view 0: the samples themselves
    assert torch.equal(bank.data.y_train, d.y_train.repeat(4))
    assert torch.equal(bank.samples, torch.arange(n).repeat(4))
    assert torch.equal(bank.views, torch.arange(4).repeat_interleave(n))
    assert torch.equal(bank.data.x_val, d.x_val) and torch.equal(bank.data.x_test, d.x_test)
    assert torch.equal(bank.rows(1), torch.arange(n))
    again = augment.view_bank(d, augment.SignalViews(shift=2), views=4, seed=7)
    assert torch.equal(again.data.x_train, bank.data.x_train)
    other = augment.view_bank(d, augment.SignalViews(shift=2), views=4, seed=8)
    # The cache keys a bank by its contents: another seed or other settings are another data set.
    assert store.key_of(data_key(other.data)) != store.key_of(data_key(bank.data))
    milder = augment.view_bank(d, augment.SignalViews(shift=1), views=4, seed=7)
    assert store.key_of(data_key(milder.data)) != store.key_of(data_key(bank.data))
    assert bank.describe() == {"augment": {"views": "signal", "shift": 2, "scale": [0.8, 1.2], "noise": 0.1},
                               "views": 4, "seed": 7}


def test_bank_refuses_bad_arguments():
    d = signals()
    with pytest.raises(TypeError, match="data must be a kdnb.data.Data"):
        augment.view_bank(d.x_train)
    with pytest.raises(ValueError, match="views must be at least 2"):
        augment.view_bank(d, views=1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        augment.view_bank(d, seed=-1)
    with pytest.raises(TypeError, match="augment must be"):
        augment.view_bank(d, augment=lambda x, g: x)
    with pytest.raises(ValueError, match="views must be at most the bank's 3"):
        augment.view_bank(d, views=3).rows(4)


def test_fit_takes_signal_views_live():
    d = signals(n=64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    h = fit(model, d, epochs=2, batch_size=16, augment=augment.SignalViews(), seed=0)
    assert len(h["val_acc"]) == 2
    torch.manual_seed(0)
    model2 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    h2 = fit(model2, d, epochs=2, batch_size=16, augment=augment.SignalViews(), seed=0)
    assert h["loss"] == h2["loss"]  # one seed, the same views


def test_a_grid_member_on_a_bank_sees_what_fit_sees():
    """One seed gives a stacked member and ``fit`` the same views and the same teacher answers:
    the member on the bank's consistent table ends as ``fit`` with that table does."""
    from kdnb import models, sweep
    from kdnb.book import experiments
    from kdnb.methods import Distill
    from kdnb.teachers import TeacherCache
    d = signals(n=48, length=10)
    bank = augment.view_bank(d, augment.SignalViews(shift=2), views=3, seed=1)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    tables = experiments.bank_tables(teacher, bank)
    # fixed targets: every view of a sample gets the teacher's answer on the sample itself
    assert torch.equal(tables["fixed"], tables["consistent"][:48].repeat(3, 1))
    spec, fast = {"name": "mlp", "hidden": [8]}, dict(epochs=2, batch_size=16, lr=3e-3, device="cpu", progress=False)
    members = [{"alpha": 0.9, "T": 4.0, "seed": 3, "teacher": 0}, {"alpha": 0.9, "T": 4.0, "seed": 3, "teacher": 1}]
    r = sweep.fit_grid(spec, bank.data, [tables["consistent"], tables["fixed"]], members, **fast)
    assert r.vectorized
    for m, h in zip(members, r.histories):
        ref = models.build(spec, d.shape, d.classes, seed=3)
        table = [tables["consistent"], tables["fixed"]][m["teacher"]]
        ref_h = fit(ref, bank.data, Distill(TeacherCache(table), 4.0, 0.9), seed=3, **fast)
        assert h["loss"] == pytest.approx(ref_h["loss"], abs=1e-5)
    assert r.histories[0]["loss"] != pytest.approx(r.histories[1]["loss"], abs=1e-5)


def test_fidelity_is_agreement_and_kl():
    from kdnb.book import experiments
    d = signals(n=12, length=10)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    same = experiments.fidelity([model], model, d)[0]
    assert same["agreement"] == 1.0 and abs(same["kl"]) < 1e-6
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3))
    f = experiments.fidelity([other], model, d)[0]
    assert 0 <= f["agreement"] <= 1 and f["kl"] > 0
