"""What a consistent teacher costs per step: a live teacher on every augmented view against a bank
of views labelled once (``kdnb.augment.view_bank``), beside plain CE on the same views.

The quick profile's pair on MNIST-1D (its convnet teacher, its MLP student), ``kdnb.train.fit``
with the same number of steps and batch size, four ways:

- ``CE + views, live``: cross-entropy, every batch augmented on the fly (``augment=SignalViews()``);
- ``KD, live teacher on each view``: the same views, ``Distill(teacher)``: the frozen teacher runs
  forward on every augmented batch;
- ``KD, bank of views``: ``Distill(TeacherCache(logits))`` on a bank of views whose teacher logits
  were computed once (the bank and its logits timed on their own row) and looked up by row;
- ``CE on the bank``: cross-entropy on the bank, the bank's own baseline.

The teacher keeps its seeded initial weights: training it changes no timing. Ratios are to the
first row, side by side in one run; the one-off bank row is its own cost, not per step.

    python bench/consistent_teacher.py [--quick] [--repeats 7] [--threads 1]
"""
import statistics

import torch

import common
from kdnb import augment, data as kdata, models, train
from kdnb.book import profiles
from kdnb.methods import CrossEntropy, Distill
from kdnb.teachers import TeacherCache

T, ALPHA, VIEWS = 4.0, 0.9, 32


def main():
    args = common.parse(common.parser(__doc__.split("\n")[0]))
    p = profiles.get("quick")
    data = kdata.load(p.data)
    steps = 100 if args.quick else 400
    teacher = models.build(p.teacher, data.shape, data.classes, seed=1).eval()
    views = augment.SignalViews()

    def make_bank():
        bank = augment.view_bank(data, views, views=VIEWS, seed=0)
        return bank, TeacherCache.compute(teacher, bank.data.x_train)

    bank, cache = make_bank()
    # The same number of steps on both: `steps` batches of the 4,000 signals or of the bank's rows.
    few = data.with_train(torch.arange(steps * p.batch_size) % len(data.y_train))
    rows = torch.arange(steps * p.batch_size)
    banked = bank.data.with_train(rows)
    cached = TeacherCache(cache.logits[rows])

    def run(d, method, live):
        model = models.build(p.student, data.shape, data.classes, seed=0)
        h = train.fit(model, d, method, epochs=1, batch_size=p.batch_size, lr=p.lr, seed=0, device="cpu",
                      progress=False, augment=views if live else False)
        return {"loss": h["loss"][-1]}

    variants = {
        "CE + views, live": lambda: run(few, CrossEntropy(), True),
        "KD, live teacher on each view": lambda: run(few, Distill(teacher, T, ALPHA), True),
        "KD, bank of views": lambda: run(banked, Distill(cached, T, ALPHA), False),
        "CE on the bank": lambda: run(banked, CrossEntropy(), False),
        f"bank: {VIEWS} views + teacher logits (once)": lambda: {"rows": len(make_bank()[0].samples)},
    }
    print("## A consistent teacher: live on every view vs a bank of views labelled once\n")
    print(common.machine_info(args))
    times, _ = common.time_alternating(variants, args.repeats)
    t = {v: common.median(ts) for v, ts in times.items()}
    base = t["CE + views, live"] / steps
    out = []
    for v in variants:
        once = v.startswith("bank:")
        per = t[v] if once else t[v] / steps
        out.append([v, common.seconds(per) + ("" if once else " / step"), "—" if once else f"{per / base:.2f}×"])
    print()
    print(common.table(["variant", "median", "per step / CE + views, live"], out))
    pairs = common.paired_ratios(variants["KD, live teacher on each view"], variants["KD, bank of views"],
                                 3 * args.repeats)
    print(f"\n- {steps} steps of batch {p.batch_size}; teacher {p.teacher} "
          f"({sum(t.numel() for t in teacher.parameters()):,} parameters), student {p.student}; bank of {VIEWS} views of "
          f"{len(data.y_train):,} signals ({len(bank.samples):,} rows).")
    print(f"- A live teacher's step costs {common.median(pairs):.2f}× a bank step (median of {len(pairs)} "
          f"back-to-back pairs, quartiles {statistics.quantiles(pairs, n=4)[0]:.2f}–"
          f"{statistics.quantiles(pairs, n=4)[2]:.2f}); the bank costs its one-off row, and its rows "
          f"stack in kdnb.sweep's grids, which a live teacher's per-member views cannot.")


if __name__ == "__main__":
    main()
