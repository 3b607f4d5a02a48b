"""kdnb.train.fit: the one loop. History, determinism, train/eval modes, the frozen teacher,
cached teacher outputs by sample index, model selection on validation only, resuming, bad args."""
from dataclasses import fields, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdnb import models, train
from kdnb.teachers import TeacherCache
from kdnb.data import Data
from kdnb.methods import CrossEntropy, Distill
from kdnb.train import evaluate, fit, predict

FAST = dict(epochs=3, batch_size=64, lr=3e-3, device="cpu", progress=False)


@pytest.fixture(scope="module")
def data(digits):
    return digits.subset(0.5)  # ~650 training samples: a few ms per epoch


def student(data, seed=0, **kw):
    return models.build({"name": "mlp", "hidden": [32], **kw}, data.shape, data.classes, seed=seed)


def steps(data, batch_size=64):
    return -(-len(data.y_train) // batch_size)


def without_time(history):
    return {k: v for k, v in history.items() if k != "time"}


def test_history_keys_and_lengths(data):
    h = fit(student(data), data, **FAST)
    assert set(h) >= {"epoch", "loss", "train_acc", "val_acc", "lr", "time", "best_epoch", "best_val_acc"}
    for k in ("epoch", "loss", "train_acc", "val_acc", "lr", "time"):
        assert len(h[k]) == 3, k
    assert h["epoch"] == [0, 1, 2]
    assert all(0 <= a <= 1 for a in h["train_acc"] + h["val_acc"])
    assert h["time"] == sorted(h["time"]) and h["time"][0] > 0  # cumulative seconds
    assert h["loss"][-1] < h["loss"][0]  # it learns
    assert h["val_acc"][-1] > 0.5  # far above the 0.1 of chance on digits


def test_deterministic_under_a_seed(data):
    def run(seed):
        model = student(data, seed=seed, dropout=0.2)  # dropout: randomness inside the step too
        return fit(model, data, seed=seed, **FAST), model.state_dict()

    (h1, w1), (h2, w2), (h3, _) = run(0), run(0), run(1)
    assert without_time(h1) == without_time(h2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert h1["loss"] != h3["loss"]  # the seed matters, so the equality above is not vacuous


def test_student_modes(data):
    model = student(data, dropout=0.2)
    modes = []

    def objective(out, batch):
        modes.append(model.training)
        return F.cross_entropy(out, batch.y)

    model.eval()
    fit(model, data, objective, **FAST)
    # Every step, including those after each epoch's validation pass, ran in train mode...
    assert len(modes) == 3 * steps(data) and all(modes)
    # ... and the model is left in train mode.
    assert model.training
    # evaluate and predict put the model back in whichever mode it was in.
    for mode in (True, False):
        model.train(mode)
        evaluate(model, data.x_val, data.y_val)
        assert model.training is mode
        predict(model, data.x_val)
        assert model.training is mode


def test_predict_and_evaluate(data):
    model = student(data, dropout=0.5)
    model.train()
    logits = predict(model, data.x_val, batch_size=7)
    model.eval()
    with torch.no_grad():
        expected = model(data.x_val)
    assert torch.allclose(logits, expected, atol=1e-6)  # eval mode (no dropout), any batch size
    assert not logits.requires_grad
    acc = evaluate(model, data.x_val, data.y_val)
    assert acc == pytest.approx((expected.argmax(1) == data.y_val).float().mean().item())


class TeacherSpy(Distill):
    """Distill that records what the teacher looks like from inside the training step."""

    def losses(self, logits, batch):
        t1, t2 = self.teacher(batch), self.teacher(batch)
        self._seen.append({"eval": not self.teacher.model.training, "same": torch.equal(t1, t2),
                           "no_graph": not t1.requires_grad and t1.grad_fn is None})
        return super().losses(logits, batch)


def test_teacher_is_frozen(data):
    teacher = student(data, seed=5, dropout=0.5).train()  # dropout: any train-mode call would show
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    objective = TeacherSpy(teacher, T=4.0, alpha=0.5)
    objective._seen = []
    objective.train()  # putting the objective in train mode must not unfreeze the teacher
    model = student(data)
    fit(model, data, objective, **FAST)
    assert len(objective._seen) == 3 * steps(data)
    assert all(s["eval"] and s["same"] and s["no_graph"] for s in objective._seen), objective._seen[:3]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    # The objective offers no teacher parameter to the optimiser.
    assert not [p for p in objective.parameters() if p.requires_grad]


def test_teacher_cache_lines_up_with_shuffled_batches(data):
    n = len(data.y_train)
    # Each cached row encodes its own sample index, so a mix-up cannot go unnoticed.
    logits = torch.zeros(n, data.classes)
    logits[:, 0] = torch.arange(n, dtype=torch.float32)
    by_index = TeacherCache(logits)
    # And the real thing: a teacher's outputs computed once on x_train, checked against live calls.
    teacher = student(data, seed=7)
    cached = TeacherCache.compute(teacher, data.x_train)
    orders = []

    def objective(out, batch):
        assert torch.equal(by_index(batch)[:, 0], batch.idx.float())
        assert torch.equal(batch.x, data.x_train[batch.idx]) and torch.equal(batch.y, data.y_train[batch.idx])
        with torch.no_grad():
            live = teacher.eval()(batch.x)
        assert torch.allclose(cached(batch), live, atol=1e-5)
        orders.append(batch.idx.clone())
        return F.cross_entropy(out, batch.y)

    fit(student(data), data, objective, **FAST)
    first = orders[0]
    assert not torch.equal(first, torch.arange(len(first)))  # batches really are shuffled
    for epoch in range(3):  # and each epoch visits every sample once
        seen = torch.cat(orders[steps(data) * epoch:steps(data) * (epoch + 1)])
        assert torch.equal(seen.sort().values, torch.arange(n))
    # Distill with the cache trains end to end.
    h = fit(student(data), data, Distill(cached, T=4.0, alpha=0.5), **FAST)
    assert h["val_acc"][-1] > 0.5


class Sabotage(nn.Module):
    """Cross-entropy with the right labels for 3 epochs, then with wrong ones: validation accuracy
    collapses, so the best epoch is an early one and the final weights must be restored."""

    def start_epoch(self, epoch, epochs):
        self.wrong = epoch >= 3

    def forward(self, out, batch):
        return F.cross_entropy(out, (batch.y + 1) % 10 if self.wrong else batch.y)


def test_model_selection_uses_validation_never_test(data):
    garbage = replace(data, x_test=torch.full_like(data.x_test, float("nan")), y_test=torch.full_like(data.y_test, -7))
    model = student(data)
    h = fit(model, garbage, Sabotage(), **{**FAST, "epochs": 5, "lr": 1e-2})
    best = max(range(5), key=lambda e: (h["val_acc"][e], -e))
    assert h["best_epoch"] == best < 3
    assert h["best_val_acc"] == h["val_acc"][best]
    assert h["val_acc"][-1] < h["best_val_acc"] - 0.3
    assert evaluate(model, data.x_val, data.y_val) == h["best_val_acc"]  # best weights restored

    last = student(data)
    h = fit(last, garbage, Sabotage(), **{**FAST, "epochs": 5, "lr": 1e-2}, select="last")
    assert h["best_epoch"] == 4
    assert evaluate(last, data.x_val, data.y_val) == h["val_acc"][-1]


def test_fit_never_touches_the_test_split(data):
    class NoTest(Data):
        def __getattribute__(self, name):
            if name in ("x_test", "y_test"):
                raise AssertionError(f"fit read data.{name}")
            return super().__getattribute__(name)

    guarded = NoTest(**{f.name: getattr(data, f.name) for f in fields(Data)})
    h = fit(student(data), guarded, **{**FAST, "epochs": 2})
    assert len(h["val_acc"]) == 2


def test_trainable_objective_parameters_are_optimised(data):
    class ScaledCE(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_scale = nn.Parameter(torch.zeros(()))

        def forward(self, out, batch):
            return F.cross_entropy(out * self.log_scale.exp(), batch.y)

    objective = ScaledCE()
    fit(student(data), data, objective, **FAST)
    assert objective.log_scale.item() != 0.0


def test_killed_run_resumes_to_the_same_result(data, tmp_path):
    class Killed(Exception):
        pass

    class DiesAtEpoch2(CrossEntropy):  # the same method as the resumed run's: only its runtime state differs
        def start_epoch(self, epoch, epochs):
            if epoch == 2 and getattr(self, "_dies", False):
                raise Killed

    kw = {**FAST, "epochs": 4}
    whole_model = student(data, dropout=0.2)
    whole = fit(whole_model, data, **kw)
    path = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        dies = DiesAtEpoch2()
        dies._dies = True
        fit(student(data, dropout=0.2), data, dies, checkpoint=path, **kw)
    assert path.exists()
    resumed_model = student(data, dropout=0.2)
    resumed = fit(resumed_model, data, DiesAtEpoch2(), checkpoint=path, **kw)
    assert without_time(resumed) == without_time(whole)
    assert all(torch.equal(v, whole_model.state_dict()[k]) for k, v in resumed_model.state_dict().items())
    with pytest.raises(ValueError, match=r"checkpoint .*run.ckpt.*lr"):
        fit(student(data, dropout=0.2), data, DiesAtEpoch2(), checkpoint=path, **{**kw, "lr": 1e-4})
    with pytest.raises(ValueError, match=r"checkpoint .*run.ckpt.*method"):  # another method: refused too
        fit(student(data, dropout=0.2), data, CrossEntropy(label_smoothing=0.1), checkpoint=path, **kw)


def test_non_finite_loss_stops_with_a_clear_error(data):
    calls = []

    def objective(out, batch):
        calls.append(1)
        loss = F.cross_entropy(out, batch.y)
        return loss * float("nan") if len(calls) == steps(data) + 3 else loss  # step 2 of epoch 1

    with pytest.raises(train.NonFiniteLoss, match="step 2 of epoch 1"):
        fit(student(data), data, objective, **FAST)


def test_schedules_and_optimizers(data):
    h = fit(student(data), data, **FAST, schedule="cosine")
    assert h["lr"][0] > h["lr"][1] > h["lr"][2] == pytest.approx(0, abs=1e-9)
    h = fit(student(data), data, **FAST)
    assert h["lr"] == [3e-3] * 3
    for opt in ("sgd", "adamw"):
        h = fit(student(data), data, **{**FAST, "lr": 0.05 if opt == "sgd" else 3e-3}, optimizer=opt,
                weight_decay=1e-4)
        assert h["val_acc"][-1] > 0.5, opt


def test_output_classes_must_match_the_data(data):
    with pytest.raises(ValueError, match="model outputs 5 classes but data 'digits' has 10"):
        fit(models.mlp(data.shape, classes=5), data, **FAST)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": 0}, ValueError, "epochs must be a positive integer"),
    ({"epochs": 2.5}, ValueError, "epochs must be a positive integer"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"lr": 0}, ValueError, r"lr must be in \(0, inf\)"),
    ({"lr": float("nan")}, ValueError, "lr must be a finite number"),
    ({"weight_decay": -1}, ValueError, r"weight_decay must be in \[0, inf\)"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer must be 'adam', 'adamw' or 'sgd'"),
    ({"schedule": "step"}, ValueError, "schedule must be 'constant' or 'cosine'"),
    ({"select": "worst"}, ValueError, "select must be 'best' or 'last'"),
])
def test_bad_arguments(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(student(data), data, **{**FAST, **kwargs})


def test_bad_argument_types(data):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fit(lambda x: x, data, **FAST)
    with pytest.raises(TypeError, match="data must be a kdnb.data.Data"):
        fit(student(data), (data.x_train, data.y_train), **FAST)
    with pytest.raises(TypeError, match="method must be a kdnb.methods.Method or callable"):
        fit(student(data), data, "kd", **FAST)


def test_default_device(monkeypatch):
    monkeypatch.setenv("KDNB_DEVICE", "cpu")
    assert train.default_device() == torch.device("cpu")
    monkeypatch.delenv("KDNB_DEVICE")
    assert train.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_augment_images():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = train.augment_images(x, torch.Generator().manual_seed(0))
    b = train.augment_images(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # Each output is a crop of the zero-padded input, maybe mirrored: every non-zero value it holds
    # comes from the same image, and the channels move together.
    for i in range(2):
        assert set(a[i][a[i] != 0].tolist()) <= set(x[i].flatten().tolist())
        assert torch.equal((a[i, 0] != 0), (a[i, 2] != 0))
    assert not torch.equal(train.augment_images(x, torch.Generator().manual_seed(1)), a)


def test_distill_objective(data):
    from kdnb.losses import kd_loss
    teacher, model = student(data, seed=3), student(data, seed=4)
    batch = train.Batch(data.x_train[:32], data.y_train[:32], torch.arange(32))
    out = model(batch.x)
    with torch.no_grad():
        t = teacher.eval()(batch.x)
    hinton = 0.25 * kd_loss(out, t, 3.0) + 0.75 * F.cross_entropy(out, batch.y)
    assert Distill(teacher, T=3.0, alpha=0.25)(out, batch).item() == pytest.approx(hinton.item(), rel=1e-5)
    # labels=False: the student never sees a label, whatever alpha says.
    pure = Distill(teacher, T=3.0, alpha=0.25, labels=False)(out, batch)
    assert pure.item() == pytest.approx(kd_loss(out, t, 3.0).item(), rel=1e-5)
    # T and alpha may follow a schedule over the epochs: f(epoch, epochs).
    scheduled = Distill(teacher, T=lambda epoch, epochs: 1 + 3 * epoch / max(1, epochs - 1), alpha=0.5)
    scheduled.start_epoch(0, 5)
    assert scheduled._T == 1.0
    scheduled.start_epoch(4, 5)
    assert scheduled._T == 4.0
    with pytest.raises(ValueError, match=r"T must be in \(0, inf\)"):
        Distill(teacher, T=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        Distill(teacher, alpha=lambda epoch, epochs: 2.0)


def test_thread_count_comes_from_the_profile_never_the_load(monkeypatch):
    """The profile fixes the thread count ($KDNB_THREADS overrides it); the machine's load never
    picks it, and the training cache keys a run by the threads it ran on."""
    from kdnb import device
    from kdnb.book import profiles
    assert not hasattr(device, "cpu_threads")
    monkeypatch.setattr(profiles.os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    assert profiles.get("quick").threads == 1
    monkeypatch.setenv("KDNB_THREADS", "2")
    assert profiles.get("quick").threads == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("KDNB_THREADS", bad)
        with pytest.raises(ValueError, match=r"\$KDNB_THREADS must be an integer >= 1"):
            profiles.get("quick")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = device.numerics("cpu")
        torch.set_num_threads(2)
        assert device.numerics("cpu") != one
    finally:
        torch.set_num_threads(before)


def test_seed_offset_shifts_every_profile_seed(monkeypatch):
    from kdnb.book import profiles
    monkeypatch.setenv("KDNB_SEED_OFFSET", "1000")
    p = profiles.get("quick")
    assert p.seeds == (1000, 1001, 1002) and p.seed(0) == 1000 and p.seed(100) == 1100
    assert p.seed_list(10) == tuple(range(1000, 1010))
    monkeypatch.setenv("KDNB_SEED_OFFSET", "-3")
    with pytest.raises(ValueError, match=r"\$KDNB_SEED_OFFSET must be an integer >= 0, got '-3'"):
        profiles.get("quick")
