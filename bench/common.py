"""Shared helpers for the benchmarks in bench/: arguments, machine info, alternating timing,
peak memory and markdown tables. Not a benchmark itself (``make bench`` runs it and it returns).

Timing protocol: every variant runs ``warmup`` times untimed, then ``repeats`` rounds in which
each variant runs once, in a rotated order (the machine is shared and its load drifts: rotating
spreads the drift over all variants). The table reports the median.
"""
import argparse
import ctypes
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.utils.data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/x.py` from a checkout imports this kdnb


def parser(description, repeats=7, quick_repeats=3):
    """An argument parser with ``--quick``, ``--repeats`` and ``--threads``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="few repeats and steps (for `make bench`)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed rounds after the warm-up (default {repeats}; {quick_repeats} with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1: the quick profile's small models gain nothing from more)")
    p.set_defaults(default_repeats=repeats, quick_repeats=quick_repeats)
    return p


def parse(p, argv=None):
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = args.quick_repeats if args.quick else args.default_repeats
    if args.repeats < 1 or args.threads < 1:
        p.error(f"--repeats and --threads must be positive, got {args.repeats} and {args.threads}")
    torch.set_num_threads(args.threads)
    return args


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def command():
    script = Path(sys.argv[0]).resolve()
    script = script.relative_to(ROOT).as_posix() if script.is_relative_to(ROOT) else sys.argv[0]
    return " ".join(["python", script, *sys.argv[1:]])


def machine_info(args, device="cpu", protocol=None):
    """A header naming the machine, the software, the threads and the date."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- machine: {platform.platform()}, {os.cpu_count()} CPUs ({device_name('cpu')}), load average {load}",
             f"- software: Python {platform.python_version()}, torch {torch.__version__}",
             f"- device: {device} ({device_name(device)}); torch threads: {torch.get_num_threads()} "
             f"(set by --threads {args.threads})",
             f"- command: {command()}",
             f"- protocol: {protocol or f'{args.repeats} timed rounds after a warm-up, variants alternated; median shown'}"]
    return "\n".join(lines)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(variants, repeats, warmup=1, device="cpu"):
    """Run each ``variants[name]()`` ``warmup`` times, then ``repeats`` timed rounds, each
    running every variant once in a rotated order. Returns ``(times, results)``: the list of
    wall times per name and the value each variant's last call returned."""
    names = list(variants)
    results = {}
    for _ in range(warmup):
        for name in names:
            results[name] = variants[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            results[name] = variants[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times, results


def paired_ratios(numerator, denominator, pairs, device="cpu"):
    """``pairs`` ratios time(numerator()) / time(denominator()), each from two runs back to back
    (which goes first alternates). On a shared machine whose speed drifts by tens of percent over
    seconds, the ratio of two adjacent runs is far steadier than the ratio of two medians."""
    ratios = []
    for i in range(pairs):
        t = {}
        for name, fn in ((("n", numerator), ("d", denominator)) if i % 2 == 0 else (("d", denominator), ("n", numerator))):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            t[name] = time.perf_counter() - t0
        ratios.append(t["n"] / t["d"])
    return ratios


class SameOrderSampler(torch.utils.data.Sampler):
    """``RandomSampler`` minus its extra draw per epoch: one ``randperm`` per epoch from a
    generator seeded with ``seed``, exactly as ``kdnb.train.fit`` shuffles, so a reference
    ``DataLoader`` loop sees the same batches in the same order as ``fit``."""

    def __init__(self, n, seed=0):
        self.n, self.g = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.g).tolist())

    def __len__(self):
        return self.n


def median(xs):
    return statistics.median(xs)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim_heap():
    """Give freed heap memory back to the OS, so RSS growth measured next is this run's own."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn, device="cpu", interval=0.0005):
    """Peak memory ``fn()`` adds while it runs, in bytes: CUDA's peak allocation on a GPU; on the
    CPU the peak resident-set growth over the RSS at its start, sampled every ``interval`` s by a
    thread (an untimed run of its own: the sampler costs time)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    trim_heap()
    base = rss_bytes()
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], rss_bytes()) - base


def mib(n):
    return f"{n / 2 ** 20:.1f} MiB"


def seconds(t):
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} µs"


def table(headers, rows):
    """A markdown table as a string."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


if __name__ == "__main__":
    print("bench/common.py holds the helpers of the other benchmarks; run those (`make bench`).")


def reference_kd_loss(student_logits, teacher_logits, y, T, alpha):
    """The KD loss as the PyTorch KD tutorial and popular repositories write it (our reference)."""
    import torch.nn.functional as F
    soft_targets = F.softmax(teacher_logits / T, dim=-1)
    soft_prob = F.log_softmax(student_logits / T, dim=-1)
    soft_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size(0) * T ** 2
    return alpha * soft_loss + (1 - alpha) * F.cross_entropy(student_logits, y)


def reference_sgd_loop(model, data, batch_size, device, teacher=None, *, lr, momentum, weight_decay, T, alpha, seed=0):
    """One epoch of the usual training loop, our reference: fp32, a ``DataLoader`` that copies each
    batch to the device, SGD (Nesterov), the KD loss as tutorials write it when ``teacher`` is
    given, and a ``loss.item()`` per step. Returns the mean loss; batches in ``fit``'s order."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x_train, data.y_train),
                                         batch_size=batch_size, sampler=SameOrderSampler(len(data.y_train), seed),
                                         pin_memory=torch.device(device).type == "cuda")
    if teacher is not None:
        teacher.to(device).eval()
    total = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        logits = model(x)
        if teacher is None:
            loss = torch.nn.functional.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                t = teacher(x)
            loss = reference_kd_loss(logits, t, y, T, alpha)
        loss.backward()
        opt.step()
        total += loss.item()
    return total / len(loader)


def reference_val_acc(model, val_loader, n):
    """The reference loops' per-epoch validation: eval mode, no_grad, a .item() per batch."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in val_loader:
            correct += (model(x).argmax(1) == y).sum().item()
    return correct / n

