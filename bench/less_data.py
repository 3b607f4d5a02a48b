"""What stacking saves in chapter 4: its students trained as one kdnb.sweep grid per data set vs one
at a time with kdnb.train.fit (what experiments.students does), side by side.

The workloads are the chapter's own grids, on a shorter step budget (``--steps``, the same for
every data set, as in the chapter): six students (CE and KD, α = 0.9, T = 4, three seeds) on 5 %
and on 100 % of MNIST-1D's training split, and six (soft targets alone and true labels, three
seeds) on the labelled split plus 10,000 fresh signals. Each ratio is one-by-one time over stacked
time from two runs back to back (which goes first alternates, ``bench.common.paired_ratios``); the
table gives the median and range over ``--repeats`` pairs, and the largest difference in best
validation accuracy between the two ways (they do the same arithmetic, summed in another order).

    python bench/less_data.py [--quick] [--repeats 5] [--steps 290] [--threads 1]
"""
import statistics

import torch

from common import machine_info, paired_ratios, parse, parser, table
from kdnb import data as kdata, experiments, profiles, sweep

CE, KD, SOFT = (0.0, 1.0), (0.9, 4.0), (1.0, 2.0)


def main(argv=None):
    p = parser(__doc__.splitlines()[0], repeats=5, quick_repeats=2)
    p.add_argument("--steps", type=int, default=None, help="steps per student (default 290; 116 with --quick)")
    args = parse(p, argv)
    steps = args.steps or (116 if args.quick else 290)
    profile = profiles.get("quick")
    pair = experiments.distill_pair(profile)
    data = pair.data
    _, sets = kdata.transfer_sets(data, [10000])
    workloads = {"5 % of the training split, CE + KD": (data.subset(0.05), (CE, KD)),
                 "100 %, CE + KD": (data, (CE, KD)),
                 "+10,000 fresh signals, soft + true labels": (sets[10000], (SOFT, CE))}
    print(machine_info(args, protocol=f"{args.repeats} back-to-back pairs per workload, first one "
                                      f"alternating; median ratio and range"))
    rows = []
    for name, (d, settings) in workloads.items():
        members = [{"alpha": a, "T": T, "seed": s} for a, T in settings for s in profile.seeds]
        epochs = experiments.epochs_for(pair, len(d.y_train), steps)
        logits = experiments.teacher_outputs(pair.teacher, d).logits
        run = lambda vectorize: sweep.fit_grid(profile.student, d, logits, members, epochs=epochs,
                                               batch_size=profile.batch_size, lr=profile.lr, device="cpu",
                                               vectorize=vectorize, progress=False)
        stacked, one_by_one = run(True), run(False)  # warm-up, and the accuracies compared
        off = max(abs(a["best_val_acc"] - b["best_val_acc"]) for a, b in
                  zip(stacked.histories, one_by_one.histories))
        ratios = paired_ratios(lambda: run(False), lambda: run(True), args.repeats)
        rows.append([name, len(members), f"{epochs} × {-(-len(d.y_train) // profile.batch_size)}",
                     f"{statistics.median(ratios):.2f}×", f"{min(ratios):.2f}–{max(ratios):.2f}×",
                     f"{off * len(d.y_val):.0f} of {len(d.y_val)}"])
    print()
    print(table(["workload", "students", "epochs × steps", "one-by-one / stacked (median)", "range",
                 "best val. accuracy, largest difference (samples)"], rows))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
