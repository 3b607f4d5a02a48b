"""The loops under torchrun (issue 19), on the CPU with gloo and two real ranks
(``torchrun --nproc_per_node=2``, tests/ddp_worker.py): a DDP run ends with the weights of one
process on the same global batch (student, a method's regressor, a GAN's discriminator), every
rank with the same ones; a SIGKILLed
run resumes to the uninterrupted run's weights, on two ranks or one; a bad world size and a
missing rendezvous are refused with errors that name them."""
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdnb import device, models, store, train
from kdnb.device import Ranks, RendezvousError

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

ROOT = Path(__file__).parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def env(tmp):
    clean = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    return dict(clean, KDNB_CACHE=str(tmp / "cache"), KDNB_PROGRESS="0", KDNB_DEVICE="cpu", OMP_NUM_THREADS="1",
                PYTHONPATH=str(ROOT))


def torchrun(tmp, *args, **popen):
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(ROOT / "tests" / "ddp_worker.py"), *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **popen)


def finished(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()[-3000:]
    return out.decode()


def saved(folder, mode, rank=0):
    return store.load(Path(folder) / f"{mode}.rank{rank}.pt")


def assert_close(a, b, where, atol=1e-6):
    assert a.keys() == b.keys(), where
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{where}[{k!r}] differs by {(a[k] - b[k]).abs().max():.2g}"


def assert_equal(a, b, where):
    assert a.keys() == b.keys(), where
    for k in a:
        assert torch.equal(a[k], b[k]), f"{where}[{k!r}] differs"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """One torchrun launch for every mode (start-up dominates on two loaded cores); the last,
    ``stall``, is SIGKILLed mid-epoch 1 with the whole launch (torchrun and both ranks)."""
    tmp = tmp_path_factory.mktemp("ddp")
    proc, notes = torchrun(tmp, tmp, "ce", "gan", "wgan", "hint", "trained", "bad", "stall"), tmp / "notes"
    try:
        deadline = time.monotonic() + 300
        while "stall 1" not in (notes.read_text() if notes.exists() else ""):
            if proc.poll() is not None:
                pytest.fail(f"torchrun exited with {proc.returncode}:\n{proc.stdout.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run never reached epoch 1 of the stalling mode")
            time.sleep(0.05)
    finally:
        kill(proc, tmp / "pids")
    out, _ = proc.communicate(timeout=60)
    shutil.copy(tmp / "run.ckpt", tmp / "killed.ckpt")
    return tmp, out.decode()


def kill(proc, pids):
    """SIGKILL both ranks (each in its own session) and torchrun."""
    for pid in (pids.read_text().split() if pids.exists() else []):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same runs in one process, this one."""
    tmp = tmp_path_factory.mktemp("single")
    for mode in ("ce", "gan", "hint"):
        ddp_worker.run(mode, tmp / f"{mode}.rank0.pt")
    return tmp


@pytest.mark.parametrize("mode", ["ce", "gan", "hint"])
def test_ddp_ends_with_one_process_weights(ddp, single, mode):
    folder, _ = ddp
    ranks = [saved(folder, mode, r) for r in (0, 1)]
    one = saved(single, mode)
    for part in ("state", "method"):  # the student; the regressor (hint), the discriminator (gan)
        assert_equal(ranks[0][part], ranks[1][part], f"{mode} {part} of rank 1 vs rank 0")
        assert_close(ranks[0][part], one[part], f"{mode} {part}, 2 ranks vs 1 process")
    h, h1 = ranks[0]["history"], one["history"]
    for k in ("loss", "train_acc", "val_acc"):  # logged as the global batches', not rank 0's share
        assert h[k] == pytest.approx(h1[k], abs=1e-6), k
    assert h["best_epoch"] == h1["best_epoch"]
    assert h["batching"] == {**h1["batching"], "world_size": 2, "per_rank_batch": 16}
    assert h["world_size"] == [2] * ddp_worker.EPOCHS and h1["world_size"] == [1] * ddp_worker.EPOCHS


def test_a_critic_with_a_gradient_penalty_trains_alike_on_every_rank(ddp):
    folder, _ = ddp
    ranks = [saved(folder, "wgan", r) for r in (0, 1)]
    for part in ("state", "method"):  # each rank its own random points, one averaged gradient
        assert_equal(ranks[0][part], ranks[1][part], f"wgan {part} of rank 1 vs rank 0")
    h = ranks[0]["history"]
    assert all(math.isfinite(v) for v in h["terms"]["critic/gp"]) and h["terms"]["critic/gp"][0] > 0


def test_only_rank_0_prints_the_global_batch_and_lr(ddp):
    _, out = ddp
    line = "DistributedDataParallel over 2 ranks: global batch 32 (16 per rank), lr 0.01 (adam, "
    assert out.count(line) == 6, out  # ce, gan, wgan, hint, trained, stall: once each, from rank 0 alone


def test_only_rank_0_writes_a_cache_entry_and_every_rank_is_served_it(ddp):
    folder, _ = ddp
    assert len(list((folder / "cache.rank0").rglob("models/*.pt"))) == 1
    assert not list((folder / "cache.rank1").rglob("*.pt"))  # rank 1 trained with rank 0, wrote nothing
    runs = [saved(folder, "trained", r) for r in (0, 1)]
    for got in runs:
        assert_equal(got["first"], runs[0]["first"], "a rank's trained model")
        assert_equal(got["again"], got["first"], "the served model")
        untimed = [{k: v for k, v in h.items() if k != "time"} for h in (got["h1"], got["h2"])]  # each rank's clock
        assert untimed[0] == untimed[1] and got["h1"]["world_size"] == [2] * ddp_worker.EPOCHS


def test_a_global_batch_the_ranks_cannot_share_is_refused(ddp, monkeypatch):
    folder, _ = ddp
    for r in (0, 1):  # under torchrun, on every rank (none waits for the other)
        assert "batch_size=33 is the global batch and must be a multiple of the world size 2" in \
            (folder / f"bad.rank{r}.pt").read_text()
    data, model = ddp_worker.toy_data(), models.build(ddp_worker.STUDENT, (1, 8, 8), 4, seed=0)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"the last batch of each epoch holds 4 of the 100 training samples "
                                         r"\(batch_size=32\), fewer than the world size 8"):
        train.fit(model, data, **ddp_worker.FIT)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"\$WORLD_SIZE must be an integer >= 1, got 'two'"):
        train.fit(model, data, **ddp_worker.FIT)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"\$RANK must be an integer in \[0, 1\], got '2'"):
        train.fit(model, data, **ddp_worker.FIT)


def test_a_missing_rendezvous_is_named(monkeypatch):
    data, model = ddp_worker.toy_data(), models.build(ddp_worker.STUDENT, (1, 8, 8), 4, seed=0)
    for k in RANK_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RendezvousError, match=r"\$RANK is not set but \$WORLD_SIZE=2 is: launch with `torchrun"):
        train.fit(model, data, **ddp_worker.FIT)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RendezvousError, match=r"makes this process rank 1 of 2, but MASTER_ADDR and MASTER_PORT "
                                              r"\(the rendezvous, where rank 0 listens\) are not set"):
        train.fit(model, data, **ddp_worker.FIT)
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("KDNB_RENDEZVOUS_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(RendezvousError, match=rf"rank 1 of 2 could not meet the other ranks at 127.0.0.1:{port} "
                                              rf"\(MASTER_ADDR:MASTER_PORT\) within 2 s"):
        train.fit(model, data, **ddp_worker.FIT)
    assert time.monotonic() - t0 < 60
    assert not torch.distributed.is_initialized()


def test_one_rank_without_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert device.ranks() == Ranks() and device.is_main() and device.shared(lambda: 7) == 7
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert device.ranks() == Ranks(2, 1, 1) == device.launched() and not device.is_main()


def test_a_killed_ddp_run_resumes_on_two_ranks_or_one(ddp):
    folder, _ = ddp
    state = store.load(folder / "killed.ckpt")
    assert state["epoch"] == 0 and len(state["rank_rng"]) == 2  # the last whole epoch, rank 1's RNG beside
    assert not (folder / "stall.rank0.pt").exists()

    finished(torchrun(folder, folder, "resume"))
    resumed, uninterrupted = saved(folder, "resume"), saved(folder, "ce")
    assert_equal(resumed["state"], uninterrupted["state"], "weights resumed on 2 ranks")
    assert resumed["history"]["loss"] == uninterrupted["history"]["loss"]
    assert (folder / "notes").read_text().splitlines() == ["epoch 0", "epoch 1", "stall 1", "epoch 1", "epoch 2"]

    # The same checkpoint, resumed by one process: one process's arithmetic from there on.
    ddp_worker.run("ce", folder / "one.pt", checkpoint=folder / "killed.ckpt")
    one = store.load(folder / "one.pt")
    assert_close(one["state"], uninterrupted["state"], "weights resumed in 1 process")
    assert one["history"]["world_size"] == [2, 1, 1]
