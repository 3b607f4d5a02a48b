"""Killed runs resume (issue 5): a real training process is SIGKILLed mid-epoch, twice, and
the resumed run ends with exactly the weights and history of a run that was never interrupted.
A checkpoint made under another config or model is refused, not resumed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdnb import store, models, train

sys.path.insert(0, str(Path(__file__).parent))
from resume_worker import EPOCHS, SPEC, STALL_STEP, toy_data  # noqa: E402

WORKER = Path(__file__).parent / "resume_worker.py"
ROOT = Path(__file__).parent.parent


def start(tmp_path, checkpoint, out, log, stall_epoch=None):
    cmd = [sys.executable, str(WORKER), str(checkpoint), str(out), str(log)]
    cmd += ["--stall-epoch", str(stall_epoch)] if stall_epoch is not None else []
    env = dict(os.environ, KDNB_CACHE=str(tmp_path / "cache"), KDNB_PROGRESS="0",
               KDNB_DEVICE=os.environ.get("KDNB_DEVICE", "cpu"))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def lines(log):
    return log.read_text().splitlines() if log.exists() else []


def kill_when_stalled(proc, log, epoch, timeout=180):
    """SIGKILL ``proc`` once it reports it is inside ``epoch`` (mid-epoch, past some steps)."""
    deadline = time.monotonic() + timeout
    while f"{proc.pid} stall {epoch}" not in lines(log):
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode} before stalling:\n{proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker did not reach epoch {epoch} in {timeout} s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def assert_identical(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differ after resuming"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()


def epochs_started(log, pid):
    return [int(t.split()[2]) for t in lines(log) if t.startswith(f"{pid} epoch ")]


def test_sigkilled_twice_mid_epoch_then_resumed_equals_uninterrupted_run(tmp_path):
    ckpt, log = tmp_path / "run.ckpt", tmp_path / "epochs.log"
    # The reference run (no checkpoint) goes alongside the interrupted one.
    reference = start(tmp_path, tmp_path / "reference.ckpt", tmp_path / "reference.pt", tmp_path / "reference.log")

    first = start(tmp_path, ckpt, tmp_path / "never.pt", log, stall_epoch=2)
    kill_when_stalled(first, log, 2)
    state = store.load(ckpt)
    assert state["epoch"] == 1, "the kill should land inside epoch 2, after epoch 1's checkpoint"

    second = start(tmp_path, ckpt, tmp_path / "never.pt", log, stall_epoch=4)
    kill_when_stalled(second, log, 4)
    assert store.load(ckpt)["epoch"] == 3

    third = start(tmp_path, ckpt, tmp_path / "resumed.pt", log)
    finish(third)
    finish(reference)

    # Each process picked up where the last checkpoint left off (not from scratch).
    assert epochs_started(log, first.pid) == [0, 1, 2]
    assert epochs_started(log, second.pid) == [2, 3, 4]
    assert epochs_started(log, third.pid) == [4, 5]
    assert not (tmp_path / "never.pt").exists()

    resumed, uninterrupted = store.load(tmp_path / "resumed.pt"), store.load(tmp_path / "reference.pt")
    assert_identical(resumed["state"], uninterrupted["state"], "selected weights")
    drop_time = lambda h: {k: v for k, v in h.items() if k != "time"}
    assert drop_time(resumed["history"]) == drop_time(uninterrupted["history"])
    assert resumed["history"]["epoch"] == list(range(EPOCHS))
    # The last epoch's weights and optimizer moments too, not only the selected (best) epoch's.
    last, last_reference = store.load(ckpt), store.load(tmp_path / "reference.ckpt")
    for part in ("model", "optimizer", "scheduler", "rng", "generator", "best_state"):
        assert_identical(last[part], last_reference[part], part)
    assert STALL_STEP > 0  # the killed epochs had taken optimizer steps the checkpoint lacks


def small_fit(model, data, checkpoint, **kwargs):
    args = dict(epochs=2, batch_size=32, lr=3e-3, seed=0, device="cpu", checkpoint=checkpoint, progress=False)
    return train.fit(model, data, **{**args, **kwargs})


@pytest.fixture(scope="module")
def data():
    return toy_data()


@pytest.fixture
def checkpoint(tmp_path, data):
    path = tmp_path / "run.ckpt"
    small_fit(models.build(SPEC, data.shape, data.classes, seed=0), data, path)
    return path


@pytest.mark.parametrize("key, there, here", [
    ("epochs", 2, 3), ("lr", 0.003, 0.01), ("batch_size", 32, 16), ("seed", 0, 1), ("optimizer", "adam", "sgd"),
    ("schedule", "constant", "cosine"), ("weight_decay", 0.0, 1e-4), ("select", "best", "last"),
    ("augment", False, True), ("shuffle_seed", None, 7)])
def test_checkpoint_from_another_config_is_refused(checkpoint, data, key, there, here):
    model = models.build(SPEC, data.shape, data.classes, seed=0)
    with pytest.raises(ValueError) as err:
        small_fit(model, data, checkpoint, **{key: here})
    # Names the file, the one setting that differs with both values, and the way out.
    assert str(err.value) == (f"checkpoint {str(checkpoint)!r} was made for another run "
                              f"({key}={there!r} there, {here!r} here); delete it or pass another path")


@pytest.mark.parametrize("spec", [{"name": "mlp", "hidden": [32], "dropout": 0.0},   # same shapes
                                  {"name": "mlp", "hidden": [16], "dropout": 0.3}])
def test_checkpoint_of_another_model_is_refused(checkpoint, data, spec):
    with pytest.raises(ValueError, match=rf"checkpoint '{checkpoint}' was made for another run \(model='\w+' there"):
        small_fit(models.build(spec, data.shape, data.classes, seed=0), data, checkpoint)


def test_checkpoint_of_another_training_set_is_refused(checkpoint, data):
    smaller = data.subset(0.5)
    with pytest.raises(ValueError, match=rf"checkpoint '{checkpoint}' was made for another run \(n_train=128 there, 64 here\)"):
        small_fit(models.build(SPEC, data.shape, data.classes, seed=0), smaller, checkpoint)


def test_resuming_a_finished_run_returns_its_result_without_training(tmp_path, data):
    path = tmp_path / "run.ckpt"
    first = models.build(SPEC, data.shape, data.classes, seed=0)
    history = small_fit(first, data, path)
    again = models.build(SPEC, data.shape, data.classes, seed=5)
    assert small_fit(again, data, path) == history
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
