"""What distillation costs per epoch: cached teacher outputs against a live teacher.

The quick profile's pair on MNIST-1D — its convnet teacher and MLP student — trained with
``kdnb.train.fit`` for the same epochs, batches and per-epoch validation, four ways:

- ``CE only``: ``fit(student, data)`` with labels alone, the baseline;
- ``KD, cached teacher``: ``Distill(TeacherCache(logits))``: the teacher's logits on every training
  sample are computed once (timed on its own row, ``TeacherCache.compute``) and looked up by index;
- ``KD, live teacher``: ``Distill(teacher)``: the frozen teacher runs forward on every batch;
- ``KD, reference loop``: the PyTorch KD tutorial's loop — a ``DataLoader``, the teacher under
  ``no_grad`` on every batch, its soft-target loss, ``loss.item()`` per step — with the same
  validation pass per epoch, batches in the same order as ``fit``'s.

All three KD variants minimise ``0.9 · T² · KL + 0.1 · CE`` at T = 4 and must end with the same
loss. The teacher keeps its seeded initial weights: training it would cost minutes and change no
timing (its outputs are as costly to compute either way).

    python bench/teacher_cache.py [--quick] [--repeats 7] [--threads 1]
"""
import math
import statistics

import torch
from torch.utils.data import DataLoader, TensorDataset

import common
from kdnb import data as kdata, models, train
from kdnb.book import profiles
from kdnb.teachers import TeacherCache
from kdnb.methods import CrossEntropy, Distill

T, ALPHA = 4.0, 0.9


def student(p, data, seed=0):
    return models.build(p.student, data.shape, data.classes, seed=seed)


def fit_with(p, data, objective, epochs, seed=0):
    h = train.fit(student(p, data, seed), data, objective, epochs=epochs, batch_size=p.batch_size, lr=p.lr, seed=seed,
                  device="cpu", progress=False)
    return {"loss": h["loss"][-1], "val_acc": h["val_acc"][-1]}


def reference_kd(p, data, teacher, epochs, seed=0):
    model = student(p, data, seed)
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=p.batch_size,
                              sampler=common.SameOrderSampler(len(data.y_train), seed))
    val_loader = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=p.batch_size)
    teacher.eval()
    for epoch in range(epochs):
        model.train()
        running_loss = 0.0
        for x, y in train_loader:
            opt.zero_grad()
            with torch.no_grad():
                teacher_logits = teacher(x)
            student_logits = model(x)
            loss = common.reference_kd_loss(student_logits, teacher_logits, y, T, ALPHA)
            loss.backward()
            opt.step()
            running_loss += loss.item()
        val_acc = common.reference_val_acc(model, val_loader, len(data.y_val))
    return {"loss": running_loss / len(train_loader), "val_acc": val_acc}


def main():
    args = common.parse(common.parser(__doc__.split("\n")[0]))
    p = profiles.get("quick")
    data = kdata.load(p.data)
    epochs = 3 if args.quick else 10
    teacher = models.build(p.teacher, data.shape, data.classes, seed=1).eval()
    logits = TeacherCache.compute(teacher, data.x_train).logits
    variants = {
        "CE only": lambda: fit_with(p, data, CrossEntropy(), epochs),
        "KD, cached teacher": lambda: fit_with(p, data, Distill(TeacherCache(logits), T, ALPHA), epochs),
        "KD, live teacher": lambda: fit_with(p, data, Distill(teacher, T, ALPHA), epochs),
        "KD, reference loop": lambda: reference_kd(p, data, teacher, epochs),
        "TeacherCache.compute": lambda: {"logits": TeacherCache.compute(teacher, data.x_train).logits},
    }
    print("## Teacher cache: a KD epoch with cached teacher outputs vs a live teacher vs CE only\n")
    print(common.machine_info(args))
    times, results = common.time_alternating(variants, args.repeats)
    memory = {v: common.peak_memory(fn) for v, fn in variants.items()}
    t = {v: common.median(ts) for v, ts in times.items()}
    ce = t["CE only"] / epochs
    rows = []
    for v in variants:
        per = t[v] if v == "TeacherCache.compute" else t[v] / epochs
        r = results[v]
        rows.append([v, common.seconds(per), common.seconds(min(times[v]) / (1 if v == "TeacherCache.compute" else epochs)),
                     f"{per / ce:.2f}×", common.mib(memory[v]),
                     f"{r['loss']:.4f}" if "loss" in r else "—", f"{r['val_acc']:.3f}" if "val_acc" in r else "—"])
    steps = math.ceil(len(data.y_train) / p.batch_size)
    print()
    print(common.table(["variant", "median per epoch", "best per epoch", "time / CE epoch", "peak mem (RSS growth)",
                        "final train loss", "final val acc"], rows))
    kd = [results[v]["loss"] for v in ("KD, cached teacher", "KD, live teacher", "KD, reference loop")]
    same = max(kd) - min(kd) < 1e-3 and torch.equal(results["TeacherCache.compute"]["logits"], logits)
    # The headline ratio from back-to-back pairs: the medians above drift with the machine's load.
    pairs = common.paired_ratios(variants["KD, cached teacher"], variants["CE only"], 3 * args.repeats)
    cached = common.median(pairs)
    print(f"\n- {epochs} epochs × {steps} steps of batch {p.batch_size} ({len(data.y_train)} train samples); teacher "
          f"{p.teacher} ({sum(t.numel() for t in teacher.parameters()):,} parameters), student {p.student} "
          f"({models.count_params(student(p, data)):,}). TeacherCache.compute's row is one call, not per epoch.")
    print(f"- KD epoch with the cache: {cached:.2f}× the CE-only epoch, the median of {len(pairs)} back-to-back pairs "
          f"(quartiles {statistics.quantiles(pairs, n=4)[0]:.2f}–{statistics.quantiles(pairs, n=4)[2]:.2f}; goal ≤ 1.15×: "
          f"{'met' if cached <= 1.15 else 'NOT met'}); the live teacher costs "
          f"{t['KD, live teacher'] / t['CE only']:.2f}×, the tutorial's loop {t['KD, reference loop'] / t['CE only']:.2f}×. "
          f"Counting the one-off TeacherCache.compute, {epochs} cached KD epochs cost "
          f"{(t['KD, cached teacher'] + t['TeacherCache.compute']) / t['CE only']:.2f}× {epochs} CE epochs.")
    print(f"- Same computation (the three KD runs' final loss within 1e-3, the cache recomputed identically): "
          f"{'yes' if same else 'NO'} (spread {max(kd) - min(kd):.1e}).")


if __name__ == "__main__":
    main()
