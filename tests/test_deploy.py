"""kdnb.deploy: parameters, saved-file size and FLOPs against hand counts; side-by-side timing
(rotation, blocks, budget, inference mode, threads restored, CUDA events through a stand-in
clock); export round trips (torch.export saved and loaded, ONNX run by onnxruntime) equal to
float32 rounding at a batch size they were not traced with; export failures that name the op, the
line or the class; dynamic int8 in PyTorch and in onnxruntime; bad arguments."""
import time

import pytest
import torch
from torch import nn

from kdnb import deploy, models

SHAPE = (1, 40)


def mlp(seed=0):
    return models.build({"name": "mlp", "hidden": [32]}, SHAPE, 10, seed=seed).eval()


def batch(n, shape=SHAPE):
    return deploy.example(shape, n)


# --- what a model costs ---------------------------------------------------------------------

def test_parameters_and_file_bytes():
    m = mlp()
    n = 40 * 32 + 32 + 32 * 10 + 10
    assert deploy.parameters(m) == n
    m[1].requires_grad_(False)  # frozen parameters are still shipped
    assert deploy.parameters(m) == n
    size = deploy.file_bytes(m)
    assert 4 * n <= size < 4 * n + 4096  # float32 weights plus the zip's bookkeeping


def test_file_bytes_writes_the_file_it_measures(tmp_path):
    m, path = mlp(), tmp_path / "student.pt"
    assert deploy.file_bytes(m, path) == path.stat().st_size
    loaded = mlp(seed=1)
    loaded.load_state_dict(torch.load(path, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))


def test_flops_per_input_by_hand():
    m = mlp().train()
    assert deploy.flops(m, batch(1)) == 2 * (40 * 32 + 32 * 10)  # a multiply-add is 2
    assert deploy.flops(m, batch(8)) == deploy.flops(m, batch(1))  # per input, whatever the batch
    assert m.training  # the model's mode is left as it was
    conv = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(160, 10))
    assert deploy.flops(conv, batch(2)) == 2 * (40 * 4 * 3) + 2 * 160 * 10


def test_batch_for_caps_a_call():
    assert deploy.batch_for(1e6) == 256
    assert deploy.batch_for(1e6, max_flops=64e6) == 64
    assert deploy.batch_for(1e12, max_flops=1e9) == 1  # never below one input
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        deploy.batch_for(1e6, batch=0)
    with pytest.raises(ValueError, match="max_flops"):
        deploy.batch_for(1e6, max_flops=-1)


def test_costs_rows():
    rows = deploy.costs({"small": mlp(), "big": models.build({"name": "mlp", "hidden": [256, 256]}, SHAPE, 10)},
                        SHAPE, big=64, max_flops=64 * 2 * (40 * 32 + 32 * 10), rounds=5, budget=0.05)
    assert rows["small"]["batch"] == 64 and rows["big"]["batch"] < 64  # the cap halves the big one's batch
    for r in rows.values():
        assert {"params", "bytes", "flops", "batch", "latency", "big"} <= set(r)
        assert r["latency"].batch == 1 and r["big"].batch == r["batch"]
        assert r["big"].throughput == pytest.approx(r["batch"] / r["big"].median)
    with pytest.raises(ValueError, match="no input shape for 'big'"):
        deploy.costs({"small": mlp(), "big": mlp()}, {"small": SHAPE})


def test_accuracy_of_any_function():
    m = mlp().train()
    x = batch(50)
    y = m.eval()(x).argmax(1)
    m.train()
    assert deploy.accuracy(m, x, y, batch_size=16) == 1.0
    assert m.training  # put back in train mode
    assert deploy.accuracy(lambda xb: -m.eval()(xb), x, y) < 1.0
    with pytest.raises(ValueError, match="one label per input"):
        deploy.accuracy(m, x, y[:10])


# --- timing ---------------------------------------------------------------------------------

def test_compare_rotates_the_order_and_runs_without_autograd():
    calls = []

    def entry(name):
        def fn(x):
            assert torch.is_inference_mode_enabled()
            calls.append(name)
            time.sleep(2e-4)  # one call per block
            return x
        return fn

    x = batch(1)
    threads = torch.get_num_threads()
    out = deploy.compare({k: (entry(k), x) for k in "ABC"}, rounds=3, threads=2, warmup=1)
    assert torch.get_num_threads() == threads
    timed = [c for c in calls[3:] if c]  # after one warm-up call each
    firsts = [timed[i] for i in range(0, len(timed), len(timed) // 3)]
    assert firsts == ["A", "B", "C"]  # the order rotates by one entry a round
    for t in out.values():
        assert len(t.rounds) == 3 and t.threads == 2 and "Timer" in t.how
        assert t.median >= 2e-4 and t.iqr >= 0


def test_compare_budget_stops_a_slow_entry_after_three_rounds():
    slow = (lambda x: time.sleep(0.01) or x, batch(1))
    fast = (lambda x: x, batch(1))
    out = deploy.compare({"slow": slow, "fast": fast}, rounds=20, budget=0.02)
    assert len(out["slow"].rounds) == 3
    assert len(out["fast"].rounds) == 20


def test_ratio_of_twice_the_work():
    """Side by side, twice the work times about twice (noise-tolerant: a shared machine)."""
    w = torch.randn(256, 256)
    once = lambda x: x @ w
    twice = lambda x: (x @ w) @ w
    x = torch.randn(64, 256)
    out = deploy.compare({"once": (once, x), "twice": (twice, x), "again": (once, x)}, rounds=40)
    r = deploy.ratio(out["twice"], out["once"])
    assert 1.3 < r.median < 3.5 and r.low <= r.median <= r.high and r.se >= 0
    assert 0.7 < deploy.ratio(out["again"], out["once"]).median < 1.4
    with pytest.raises(TypeError, match="Timings"):
        deploy.ratio(out["once"], 1.0)


class FakeEvent:
    """A CUDA event's interface on the host clock."""
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3  # ms, as CUDA events report


def test_cuda_block_reads_events_in_milliseconds():
    per_call = deploy.cuda_block(lambda x: time.sleep(1e-3), None, 5, event=FakeEvent)
    assert 1e-3 <= per_call < 0.05  # seconds per call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_compare_times_cuda_with_events():
    m = mlp().cuda()
    out = deploy.compare({"gpu": (m, batch(8).cuda())}, rounds=5)
    assert out["gpu"].how == "CUDA events" and out["gpu"].median > 0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"entries": {}}, ValueError, "entries must be a non-empty dict"),
    ({"entries": [1]}, ValueError, "entries must be a non-empty dict"),
    ({"entries": {"a": mlp()}}, TypeError, r"entries\['a'\] must be a pair"),
    ({"entries": {"a": (mlp(), torch.ones(3, dtype=torch.long))}}, TypeError, "floating-point batch"),
    ({"rounds": 0}, ValueError, "rounds must be a positive integer"),
    ({"threads": 1.5}, ValueError, "threads must be a positive integer"),
    ({"block": 0}, ValueError, r"block must be in \(0"),
    ({"budget": float("inf")}, ValueError, "budget must be a finite number"),
    ({"warmup": 0}, ValueError, "warmup must be a positive integer"),
])
def test_compare_bad_arguments(kwargs, error, match):
    kwargs = {"entries": {"a": (mlp(), batch(1))}, **kwargs}
    with pytest.raises(error, match=match):
        deploy.compare(**kwargs)


# --- shipping -------------------------------------------------------------------------------

def test_torch_export_round_trip(tmp_path):
    m = mlp()
    program = deploy.export_program(m, batch(2), tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2").stat().st_size > 0
    x = batch(37)  # another batch size than the one traced
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), m(x), rtol=1e-5, atol=1e-6)
    reloaded = torch.export.load(tmp_path / "m.pt2")  # the saved file alone, no model source
    torch.testing.assert_close(reloaded.module()(x), program.module()(x), rtol=0, atol=0)


def test_onnx_round_trip_with_onnxruntime(tmp_path):
    m = models.build({"name": "convnet", "depth": 2, "width": 8, "hidden": 16}, SHAPE, 10, seed=0).eval()
    path = deploy.to_onnx(m, batch(2), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the weights inside, one file
    run = deploy.onnx_runner(path, threads=1)
    x = batch(37)
    with torch.no_grad():
        torch.testing.assert_close(run(x), m(x), rtol=1e-4, atol=1e-5)
    assert deploy.accuracy(run, x, m(x).argmax(1)) == 1.0


def test_onnx_int8_runs_close_to_float(tmp_path):
    m = mlp()
    path = deploy.quantize_onnx(deploy.to_onnx(m, batch(2), tmp_path / "m.onnx"), tmp_path / "m8.onnx")
    assert path.stat().st_size < (tmp_path / "m.onnx").stat().st_size
    x = batch(200)
    with torch.no_grad():
        ref = m(x)
    out = deploy.onnx_runner(path)(x)
    # What int8 can promise, not what one CPU's kernels happened to give (another CPU's int8
    # kernels gave twice the error of ours): every sample within the rounding bound, and the same
    # answer wherever the float logits' margin is wider than twice that bound.
    bound = int8_error_bound(m, x)
    assert ((out - ref).abs() <= bound[:, None] * (1 + 1e-3) + 1e-5).all()
    top2 = ref.topk(2, dim=1).values
    sure = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert sure.any() and torch.equal(out.argmax(1)[sure], ref.argmax(1)[sure])


def int8_error_bound(model, x):
    """Per sample, the most dynamic int8 can move an MLP's logits: each Linear's weights rounded to a
    per-tensor int8 step (max |W| / 127; per-channel steps are smaller), its inputs to a uint8 step
    over [min(x, 0), max(x, 0)] of the batch (range / 255), each off by at most half a step; the
    error of one layer carried into the next (ReLU is 1-Lipschitz, Flatten exact)."""
    h = x.flatten(1).double()
    e = torch.zeros_like(h)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                w = layer.weight.double()
                sw = w.abs().max() / 127
                sx = ((h + e).max().clamp_min(0) - (h - e).min().clamp_max(0)) / 255
                e = (e + sx / 2) @ w.abs().T + sw / 2 * (h.abs() + e + sx / 2).sum(1, keepdim=True)
                h = h @ w.T + layer.bias.double()
            elif isinstance(layer, nn.ReLU):
                h = h.relu()
            elif not isinstance(layer, nn.Flatten):
                raise TypeError(f"no int8 bound for {type(layer).__name__}")
    return e.max(1).values.float()


class KthValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return z - z.kthvalue(3, dim=1, keepdim=True).values


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        z = self.fc(x.flatten(1))
        return z if z.sum() > 0 else -z


@torch.library.custom_op("kdnb_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        return mystery(self.fc(x.flatten(1)))


def test_onnx_export_error_names_the_op(tmp_path):
    with pytest.raises(deploy.ExportError, match=r"ONNX export of KthValue failed at op 'aten\.kthvalue'.*"
                                                 r"custom_translation_table"):
        deploy.to_onnx(KthValue(), batch(2), tmp_path / "k.onnx")
    # an op of the user's own: torch.export traces it, ONNX has nothing to translate it to
    deploy.export_program(Mystery(), batch(2), tmp_path / "m.pt2")
    with pytest.raises(deploy.ExportError, match=r"failed at op 'kdnb_test\.mystery'"):
        deploy.to_onnx(Mystery(), batch(2), tmp_path / "m.onnx")


def test_export_error_names_the_line_or_the_class(tmp_path):
    with pytest.raises(deploy.ExportError, match=r"torch\.export of ValueBranch failed at line "
                                                 r"'return z if z\.sum\(\) > 0 else -z'.*torch\.cond"):
        deploy.export_program(ValueBranch(), batch(2), tmp_path / "v.pt2")
    with pytest.raises(deploy.ExportError, match=r"TorchScript class 'quantized\.LinearPackedParamsBase'"):
        deploy.export_program(deploy.quantize(mlp()), batch(2), tmp_path / "q.pt2")


def test_failing_op_reads_the_chain():
    try:
        try:
            raise RuntimeError("No ONNX function found for <OpOverload(op='aten.foo', overload='bar')>")
        except RuntimeError as inner:
            raise ValueError("\x1b[96mstep 3/3\x1b[0m failed") from inner
    except ValueError as err:
        assert deploy.failing_op(err) == ("op", "aten.foo.bar")
        assert deploy.reason(err).startswith("RuntimeError: No ONNX function")
    assert deploy.failing_op(RuntimeError("nothing named")) is None


def test_export_bad_input(tmp_path):
    with pytest.raises(TypeError, match="x must be a floating-point batch tensor"):
        deploy.to_onnx(mlp(), [1.0], tmp_path / "m.onnx")
    with pytest.raises(TypeError, match="x must be a floating-point batch tensor"):
        deploy.export_program(mlp(), torch.ones(2, 1, 40, dtype=torch.long), tmp_path / "m.pt2")


def test_quantize_is_an_int8_copy():
    m = models.build({"name": "mlp", "hidden": [256]}, SHAPE, 10, seed=0).eval()
    q = deploy.quantize(m)
    assert all(type(l) is nn.Linear for l in m if isinstance(l, nn.Linear))  # the float model is untouched
    assert not any(type(l) is nn.Linear for l in q.modules())
    assert deploy.file_bytes(q) < deploy.file_bytes(m) / 2
    x = batch(200)
    with torch.no_grad():
        ref, out = m(x), q(x)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    with pytest.raises(ValueError, match="model must hold an nn.Linear"):
        deploy.quantize(nn.Sequential(nn.Conv1d(1, 2, 3)))


def test_formatting():
    assert deploy.si(30_000) == "30 k" and deploy.si(1.11e9) == "1.11 G" and deploy.si(7) == "7"
    assert deploy.megabytes(63_613) == "63.6 KB" and deploy.megabytes(44_766_603) == "44.8 MB"
    assert deploy.millis(0.0123, 0.0011) == "12.3 ms (IQR 1.1)"
