"""What a model costs at inference, measured: parameters, bytes of the saved file, FLOPs per input,
latency and throughput; and shipping it: ``torch.export``, ONNX run by onnxruntime, dynamic int8.

Latencies are taken side by side in one process (:func:`compare`): every entry is warmed up, then
timed in rounds of short blocks whose order rotates, so a slow spell of a shared machine falls on
every entry alike. A latency is the median over the rounds, with its interquartile range; a ratio
of two entries is the median of their per-round ratios (:func:`ratio`), which pairs measurements
taken moments apart, as :func:`kdnb.book.plots.paired` pairs seeds. Only ratios travel between
machines; a chapter asserts those, never an absolute time.
"""
import contextlib
import copy
import logging
import os
import re
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checks import check_number, check_positive_int

# torch.utils.benchmark imports cpp_extension, which warns when CUDA_HOME exists without a GPU:
# a line of noise under every chapter cell on a CPU machine, and no information.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402
from torch.utils.benchmark.utils.common import TaskSpec  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


class ExportError(RuntimeError):
    """A model that can't be exported; the message names the op (or the line) that fails."""


def parameters(model):
    """Every parameter of ``model``, trainable or frozen."""
    return sum(p.numel() for p in model.parameters())


def file_bytes(model, path=None):
    """Bytes of ``model``'s state dict as ``torch.save`` writes it: the file a deployment ships.
    Written to ``path`` when given (and kept), else to a temporary file."""
    if path is not None:
        torch.save(model.state_dict(), path)
        return Path(path).stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        return file_bytes(model, Path(tmp) / "model.pt")


def flops(model, x):
    """FLOPs per input of one forward pass on the batch ``x``, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is 2; matmuls and convolutions
    only, which is where the arithmetic is: activations, pooling and norms are not counted)."""
    check_input(x)
    counter, was_training = FlopCounterMode(display=False), model.training
    try:
        with counter, torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // len(x)


def accuracy(fn, x, y, batch_size=1024):
    """Fraction of ``x`` that ``fn`` (a model in eval mode for the call, or any function from a
    batch to logits: an exported program, an onnxruntime session) labels ``y``."""
    check_input(x)
    check_positive_int("batch_size", batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y must have one label per input, got {len(x)} inputs and {len(y)} labels")
    was_training = isinstance(fn, nn.Module) and fn.training
    if isinstance(fn, nn.Module):
        fn.eval()
    try:
        with torch.inference_mode():
            hits = sum((fn(x[i:i + batch_size]).argmax(1).cpu() == y[i:i + batch_size].cpu()).sum().item()
                       for i in range(0, len(x), batch_size))
    finally:
        if was_training:
            fn.train()
    return hits / len(y)


def batch_for(flops_per_input, batch=256, max_flops=None):
    """``batch``, halved until one call costs at most ``max_flops`` (None: no cap). On a CPU the
    biggest image networks would otherwise take seconds per call."""
    check_positive_int("batch", batch)
    if max_flops is not None:
        check_number("max_flops", max_flops, low=0, low_open=True)
        while batch > 1 and batch * flops_per_input > max_flops:
            batch //= 2
    return batch


def si(n):
    """A count with an SI prefix: 30 k, 74 M, 1.11 G."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}"
    return f"{n:.3g}"


def megabytes(n):
    """Bytes as the seeds print them: MB (10^6 bytes) or KB below one MB."""
    return f"{n / 1e6:.3g} MB" if n >= 1e6 else f"{n / 1e3:.3g} KB"


def millis(seconds, iqr=None):
    """A time in ms, with its IQR when given."""
    text = f"{seconds * 1e3:.3g} ms"
    return text + (f" (IQR {iqr * 1e3:.2g})" if iqr is not None else "")


def check_input(x):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise TypeError(f"x must be a floating-point batch tensor (batch >= 1, features...), got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                        f"{' of dtype ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")


@dataclass
class Timing:
    """One entry's latency: the median and interquartile range (seconds per call) over all its
    blocks, each round's time, and how it was taken."""
    name: str
    batch: int
    median: float
    iqr: float
    rounds: list = field(repr=False)
    threads: int
    how: str

    @property
    def throughput(self):
        """Inputs per second at this batch size."""
        return self.batch / self.median

    def __str__(self):
        return (f"{self.name}: {millis(self.median, self.iqr)} per batch of {self.batch}, "
                f"{len(self.rounds)} rounds, {self.how}")


def inference(fn):
    """``fn`` called without autograd, as a deployment calls it."""
    def run(x):
        with torch.inference_mode():
            return fn(x)
    return run


def cuda_block(fn, x, number, event=None):
    """Seconds per call of ``number`` calls of ``fn(x)``, timed by CUDA events (the GPU's own
    clock: the host's returns before the kernels finish). ``event`` stands in for tests."""
    event = event or (lambda: torch.cuda.Event(enable_timing=True))
    start, end = event(), event()
    start.record()
    for _ in range(number):
        fn(x)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / number  # ms → s


def compare(entries, rounds=50, block=2.5e-4, budget=0.5, threads=1, warmup=3, event=None):
    """Time every ``name: (fn, x)`` of ``entries`` side by side, in one process.

    Each entry is warmed up (``warmup`` calls) and given a block size: as many calls as take
    about ``block`` seconds (at least one). Then ``rounds`` rounds, each timing one block of
    every entry in an order that rotates by one entry per round, with
    ``torch.utils.benchmark.Timer.timeit`` (CUDA events when ``x`` is on a GPU). Short blocks
    (a quarter of a millisecond: shorter than the slices a busy scheduler hands out, long
    beside the clock's resolution) mostly run uninterrupted, so the median steps over the ones
    another program cut into; the rotation spreads a slow spell over all entries. An entry whose
    blocks are slow stops after ``budget`` seconds of blocks (at least 3 rounds). ``fn(x)`` runs
    under ``torch.inference_mode``, on ``threads`` CPU threads. Returns ``{name: Timing}``."""
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"entries must be a non-empty dict name -> (fn, x), got "
                         f"{'an empty dict' if isinstance(entries, dict) else type(entries).__name__}")
    for name, entry in entries.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
            raise TypeError(f"entries[{name!r}] must be a pair (callable, input batch), got {entry!r:.80}")
        check_input(entry[1])
    check_positive_int("rounds", rounds)
    check_positive_int("threads", threads)
    check_positive_int("warmup", warmup)
    check_number("block", block, low=0, low_open=True)
    check_number("budget", budget, low=0, low_open=True)
    names = list(entries)
    runs = {k: inference(fn) for k, (fn, _) in entries.items()}
    timers = {k: benchmark.Timer("fn(x)", globals={"fn": runs[k], "x": x}, sub_label=k, num_threads=threads)
              for k, (_, x) in entries.items()}

    def timed(k, number):
        x = entries[k][1]
        return cuda_block(runs[k], x, number, event) if x.is_cuda else timers[k].timeit(number).median

    def plain(k):  # one call, its time: the warm-up, and the first estimate of a call's cost
        x = entries[k][1]
        if x.is_cuda:
            return cuda_block(runs[k], x, 1, event)
        start = time.perf_counter()
        runs[k](x)
        return time.perf_counter() - start

    number, planned = {}, {}
    with set_threads(threads):
        for k in names:
            one = min(plain(k) for _ in range(warmup))
            number[k] = max(1, int(block / one))
            per_round = one * (number[k] + (0 if entries[k][1].is_cuda else 2))  # timeit warms up too
            planned[k] = max(3, min(rounds, int(budget / per_round)))
        times = {k: [] for k in names}
        for r in range(max(planned.values())):
            for k in names[r % len(names):] + names[:r % len(names)]:
                if r < planned[k]:
                    times[k].append(timed(k, number[k]))
    out = {}
    for k in names:
        spec = TaskSpec("fn(x)", "pass", sub_label=k, num_threads=threads)
        m = benchmark.Measurement(1, times[k], spec)
        how = "CUDA events" if entries[k][1].is_cuda else f"torch.utils.benchmark.Timer, {threads} thread(s)"
        out[k] = Timing(k, len(entries[k][1]), m.median, m.iqr, times[k], threads, how)
    return out


@contextlib.contextmanager
def set_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Ratio:
    """``a / b`` of two timings: the median of the per-round ratios, their quartiles, and the
    standard error of that median (from the IQR, as for a normal spread: 1.253 σ / √n)."""
    median: float
    low: float
    high: float
    se: float

    def __str__(self):
        return f"{self.median:.2f}× (quartiles {self.low:.2f}–{self.high:.2f})"


def ratio(a, b):
    """How many times slower ``a`` is than ``b`` (Timings from one :func:`compare` call), from the
    ratios of their blocks in each round: a round's blocks are timed moments apart, so a slow
    spell of the machine divides out."""
    if not isinstance(a, Timing) or not isinstance(b, Timing):
        raise TypeError(f"a and b must be Timings from one compare() call, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    rs = sorted(x / y for x, y in zip(a.rounds, b.rounds))  # the rounds both took part in
    q = statistics.quantiles(rs, n=4, method="inclusive") if len(rs) > 1 else [rs[0]] * 3
    return Ratio(statistics.median(rs), q[0], q[2], 1.253 * (q[2] - q[0]) / 1.349 / len(rs) ** 0.5)


def example(shape, batch, device=None):
    """A seeded random batch of ``batch`` inputs of ``shape``: latency does not depend on values."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *shape, generator=g).to(device or "cpu")


def costs(models, shape_of, big=256, max_flops=None, device=None, **timing):
    """Every model of ``{name: model}`` measured: parameters, saved file, FLOPs per input and
    latency at batch 1 and at a big batch (``big``, capped by :func:`batch_for` at ``max_flops``
    per call), all models timed side by side in one :func:`compare` per batch size (``timing``:
    its arguments). Models are put in eval mode on ``device``. ``shape_of``: one input shape for
    all, or ``{name: shape}``. Returns ``{name: row}``."""
    device = torch.device(device or "cpu")
    shapes = shape_of if isinstance(shape_of, dict) else {k: shape_of for k in models}
    missing = sorted(set(models) - set(shapes))
    if missing:
        raise ValueError(f"shape_of has no input shape for {', '.join(map(repr, missing))}")
    rows, ones, bigs = {}, {}, {}
    for k, model in models.items():
        model = model.eval().to(device)
        n_flops = flops(model, example(shapes[k], 1, device))
        batch = batch_for(n_flops, big, max_flops if device.type == "cpu" else None)
        rows[k] = {"params": parameters(model), "bytes": file_bytes(model), "flops": n_flops, "batch": batch}
        ones[k] = (model, example(shapes[k], 1, device))
        bigs[k] = (model, example(shapes[k], batch, device))
    one, many = compare(ones, **timing), compare(bigs, **timing)
    for k, row in rows.items():
        row["latency"], row["big"] = one[k], many[k]
    return rows


# --- shipping a model ---------------------------------------------------------------------

FAILURES = [  # (what, pattern): how the exporters name what they could not handle
    ("op", r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>"),
    ("op", r"target=torch\.ops\.([\w.]+)\]"),
    ("TorchScript class", r"__torch__\.torch\.classes\.([\w.]+)"),
    ("line", r"The following call raised this error:\s*\n\s*File \"[^\"]*\", line \d+, in \w+\n\s*(.+)"),
]


def errors(err):
    """``err`` and the errors it was raised from, outermost first."""
    seen = []
    while err is not None and all(err is not e for e in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def failing_op(err):
    """``(what, name)`` of what an exporter's error says failed, read from the error and the
    errors it was raised from: an ``"op"`` (``"aten.kthvalue"``), a ``"TorchScript class"`` or a
    ``"line"`` of the model's forward; None when none is named."""
    chain = [str(e) for e in errors(err)]
    for what, pattern in FAILURES:
        for text in chain:
            m = re.search(pattern, text)
            if m:
                return what, ".".join(g for g in m.groups() if g and g != "default").strip()
    return None


def reason(err):
    """The innermost error's first line, without the exporters' terminal colours."""
    inner = errors(err)[-1]
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip()
    return f"{type(inner).__name__}: {text.splitlines()[0] if text else ''}"


HINTS = {"op": " ONNX has no translation for it: replace it in the model, or give torch.onnx.export a "
               "custom_translation_table.",
         "line": " Control flow that depends on the input's values can't be traced: use torch.where or "
                 "torch.cond.",
         "TorchScript class": " torch.export can't trace objects like this one (torch.ao's packed int8 "
                              "weights are one): export the float model."}


def refused(stage, model, err):
    found = failing_op(err)
    where = f"at {found[0]} {found[1]!r}" if found else "(no op named in the error)"
    hint = HINTS.get(found[0], "") if found and (found[0] != "op" or stage == "ONNX export") else ""
    return ExportError(f"{stage} of {type(model).__name__} failed {where}: {reason(err).rstrip(' .')}.{hint}")


@contextlib.contextmanager
def quiet():
    """The exporters' progress lines and their warnings about themselves, kept off a chapter."""
    with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        warnings.simplefilter("ignore")
        yield


def export_program(model, x, path):
    """``model`` through ``torch.export`` (batch size dynamic), saved to ``path`` with
    ``torch.export.save`` and loaded back; returns the loaded ``ExportedProgram`` (call it with
    ``.module()``); ``model`` is put in eval mode. A model torch.export can't trace raises
    :class:`ExportError` naming what fails."""
    check_input(x)
    batch = torch.export.Dim("batch", min=1)
    try:
        with quiet():
            program = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: batch},))
    except Exception as err:  # noqa: BLE001 - any tracing failure becomes one clear error
        raise refused("torch.export", model, err) from err
    torch.export.save(program, path)
    return torch.export.load(path)


def to_onnx(model, x, path):
    """``model`` saved as ONNX at ``path`` by ``torch.onnx.export`` (the dynamo exporter; input
    ``"x"`` with a dynamic batch, output ``"logits"``). A model it can't translate raises
    :class:`ExportError` naming the op."""
    check_input(x)
    try:
        with quiet():
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, input_names=["x"],
                              output_names=["logits"], dynamic_shapes=({0: "batch"},), verbose=False,
                              external_data=False)  # one file: the weights inside
    except Exception as err:  # noqa: BLE001
        raise refused("ONNX export", model, err) from err
    return Path(path)


def onnx_runner(path, threads=1):
    """A function ``x -> logits`` running the ONNX file with onnxruntime on the CPU, ``threads``
    threads (so it is timed like the PyTorch models beside it)."""
    import onnxruntime as ort
    check_positive_int("threads", threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x):
        return torch.from_numpy(session.run(None, {"x": x.detach().cpu().numpy()})[0])
    return run


def quantize_onnx(path, out):
    """The ONNX file at ``path`` with its weights quantised to int8 by onnxruntime's own
    ``quantize_dynamic`` (the ONNX route to what :func:`quantize` does in PyTorch), saved at ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    logging.disable(logging.WARNING)  # its advice to pre-process, printed through the root logger
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return Path(out)


def quantize(model):
    """A dynamic int8 copy of ``model`` (``torch.ao.quantization.quantize_dynamic``): every
    ``nn.Linear``'s weights stored as int8, activations quantised on the fly; CPU only. The model
    itself is left as it was."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError(f"model must hold an nn.Linear to quantise dynamically; {type(model).__name__} "
                         f"has none")
    float_copy = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated in favour of torchao's quantize_ API;
        # in torch 2.14 it still works and still is the one-call way to do this.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(float_copy, {nn.Linear}, dtype=torch.qint8)
