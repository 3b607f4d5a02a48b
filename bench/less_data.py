"""What stacking saves in chapter 4: its students trained one at a time with kdnb.train.fit, as one
kdnb.sweep grid per training set (the chapter until now), and as one grid of members that each have
their own samples and loss (the chapter now), side by side.

The workloads are the chapter's own, on a shorter step budget (``--steps``, the same for every
training set, as in the chapter): the CE and KD students (α = 0.9, T = 4) of five nested fractions
of MNIST-1D's training split, and the soft-target, true-label and teacher's-hard-label students of
four transfer sets (0 to 40,000 fresh signals beside the labelled ones), three seeds each. Each
ratio is one way's time over the one-grid time, from runs back to back (the order rotates,
``bench.common.paired_ratios``); the table gives the median and range over ``--repeats`` rounds,
and the largest difference in best validation accuracy from the one-by-one students (the same
arithmetic, summed in another order).

The last table is the floor under the chapter's cold time: the matrix products alone of every
student step the chapter takes (forward, and the backward's weight and input gradients, for the
quick MLP 40-100-100-10 at batch 128, stacked 30 members at a time as ``torch.bmm``), timed on
this machine with ``torch.utils.benchmark`` and multiplied by the chapter's member-steps.

    python bench/less_data.py [--quick] [--repeats 3] [--steps 290] [--threads 1]
"""
import statistics
import time

import torch
from torch.utils import benchmark

from common import machine_info, parse, parser, table
from kdnb import data as kdata, sweep
from kdnb.book import experiments, profiles

CE, KD, SOFT = {"alpha": 0.0, "T": 1.0}, {"alpha": 0.9, "T": 4.0}, {"alpha": 1.0, "T": 2.0}
HARD = {**CE, "labels": "teacher"}


def members_of(runs, n_train, steps, batch_size, seeds):
    return [{**run, "seed": s, "epochs": profiles.epochs_for(len(run.get("train", range(n_train))), steps, batch_size)}
            for run in runs for s in seeds]


def main(argv=None):
    p = parser(__doc__.splitlines()[0], repeats=3, quick_repeats=1)
    p.add_argument("--steps", type=int, default=None, help="steps per student (default 290; 116 with --quick)")
    args = parse(p, argv)
    steps = args.steps or (116 if args.quick else 290)
    profile = profiles.get("quick")
    pair = experiments.distill_pair(profile)
    data, B = pair.data, profile.batch_size
    fractions = [kdata.stratified_pick(data.y_train, f, 0) for f in (0.05, 0.1, 0.25, 0.5, 1.0)]
    labelled, sets = kdata.transfer_sets(data, [0, 2500, 10000, 40000])
    pool = sets[40000]
    prefixes = [torch.arange(len(labelled.y_train) + n) for n in sets]
    workloads = {"5 fractions × CE, KD × 3 seeds": (data, [{**loss, "train": idx} for idx in fractions
                                                           for loss in (CE, KD)]),
                 "4 transfer sets × soft, true, hard labels × 3 seeds": (pool, [{**loss, "train": idx}
                                                                              for idx in prefixes
                                                                              for loss in (SOFT, CE, HARD)])}
    print(machine_info(args, protocol=f"{args.repeats} rounds per workload, the order of the three ways "
                                      f"rotating; median ratio and range"))
    rows = []
    for name, (d, runs) in workloads.items():
        members = members_of(runs, len(d.y_train), steps, B, profile.seeds)
        logits = experiments.teacher_outputs(pair.teacher, d).logits
        fit = dict(batch_size=B, lr=profile.lr, device="cpu", progress=False)
        one_grid = lambda: sweep.fit_grid(profile.student, d, logits, members, vectorize=True, **fit)
        one_by_one = lambda: sweep.fit_grid(profile.student, d, logits, members, vectorize=False, **fit)

        def per_set():  # one grid per training set: the members that share their samples
            out = []
            for idx in {id(m["train"]): m["train"] for m in members}.values():
                same = [m for m in members if m["train"] is idx]
                out += sweep.fit_grid(profile.student, d, logits, same, vectorize=True, **fit).histories
            return out

        ways = {"one by one": one_by_one, "a grid per training set": per_set, "one grid": one_grid}
        ref, grid = one_by_one(), one_grid()  # warm-up, and the accuracies compared
        off = max(abs(a["best_val_acc"] - b["best_val_acc"]) for a, b in zip(ref.histories, grid.histories))
        times = {w: [] for w in ways}
        for r in range(args.repeats):
            order = list(ways)[r % 3:] + list(ways)[:r % 3]
            for w in order:
                t0 = time.perf_counter()
                ways[w]()
                times[w].append(time.perf_counter() - t0)
        for w in ("one by one", "a grid per training set"):
            ratios = [a / b for a, b in zip(times[w], times["one grid"])]
            rows.append([name, len(members), w, f"{statistics.median(times[w]):.1f} s",
                         f"{statistics.median(ratios):.2f}×", f"{min(ratios):.2f}–{max(ratios):.2f}×",
                         f"{off * len(d.y_val):.0f} of {len(d.y_val)}"])
        rows.append([name, len(members), "one grid", f"{statistics.median(times['one grid']):.1f} s", "1", "", ""])
    print()
    print(table(["workload", "students", "way", "time (median)", "its time / one grid's (median)", "range",
                 "best val. accuracy vs one by one, largest difference (samples)"], rows))
    member_steps = sum(m * s for m, s in CHAPTER)
    rows = []
    for threads in (1, 2):
        per, rate = floor(threads)
        rows.append([threads, f"{rate:.1f}", f"{per * 1e6:.0f} µs", f"{member_steps:,}", f"{per * member_steps:.0f} s"])
    torch.set_num_threads(args.threads)
    print()
    print(table(["threads", "bare stacked matmul GFLOP/s", "per member-step", "chapter 4's member-steps",
                 "floor: its matmuls alone"], rows))


# Chapter 4's training: (members, steps each) of its stacked grids at the quick profile's budget
# (fractions; transfer sets, controls and the omitted class; the 3x-steps check).
CHAPTER = [(30, 2900), (45, 2900), (6, 8700)]


def floor(threads, members=30, batch=128, widths=(40, 100, 100, 10)):
    """Seconds per member-step of the bare matrix products of a stacked MLP step, and GFLOP/s."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    shapes = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        shapes += [((batch, a), (a, b)), ((b, batch), (batch, a))]  # forward; weight gradient
        if i:
            shapes.append(((batch, b), (b, a)))  # input gradient (none for the first layer)
    xs = [(torch.randn(members, *l, generator=g), torch.randn(members, *r, generator=g)) for l, r in shapes]
    flops = sum(2 * members * l[0] * l[1] * r[1] for l, r in shapes)
    t = benchmark.Timer("[torch.bmm(a, b) for a, b in xs]", globals={"torch": torch, "xs": xs},
                        num_threads=threads).blocked_autorange(min_run_time=1).median
    return t / members, flops / t / 1e9


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
