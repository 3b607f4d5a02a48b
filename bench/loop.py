"""Loop overhead: ``kdnb.train.fit`` against the loop readers of the PyTorch KD tutorial write.

Two workloads: the quick profile's MNIST-1D MLP student, and a small CNN
(``kdnb.models.convnet``) on scikit-learn's digits. For each, three variants do the same work —
the same model and initial weights, data, batch size, optimizer (Adam), epochs and the same
per-epoch validation accuracy:

- ``kdnb fit``: ``fit(model, data, epochs=E, batch_size=B, lr=lr)``;
- ``reference``: ``DataLoader(TensorDataset(x, y), batch_size=B)`` and, per batch,
  ``opt.zero_grad(); loss = ce(model(x), y); loss.backward(); opt.step(); running += loss.item()``,
  then a validation pass over a ``DataLoader`` of the validation split. Its sampler draws the same
  permutation per epoch as ``fit`` (``randperm`` from a generator seeded alike), so both see the
  same batches in the same order and must end with the same loss (to float rounding: ``fit`` uses
  Adam's fused kernel);
- ``floor``: the bare compute — forward, backward and update on one fixed, pre-built batch, as
  many steps, plus the same validation — with no data loop or bookkeeping around it.

    python bench/loop.py [--quick] [--repeats 7] [--threads 1]
"""
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import common
from kdnb import data as kdata, models, train
from kdnb.book import profiles


def run_fit(spec, data, epochs, batch_size, lr, seed=0):
    model = models.build(spec, data.shape, data.classes, seed=seed)
    h = train.fit(model, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device="cpu", progress=False)
    return {"loss": h["loss"][-1], "val_acc": h["val_acc"][-1]}


def run_reference(spec, data, epochs, batch_size, lr, seed=0):
    model = models.build(spec, data.shape, data.classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size,
                              sampler=common.SameOrderSampler(len(data.y_train), seed))
    val_loader = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=batch_size)
    for epoch in range(epochs):
        model.train()
        running_loss = 0.0
        for x, y in train_loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            running_loss += loss.item()
        val_acc = common.reference_val_acc(model, val_loader, len(data.y_val))
    return {"loss": running_loss / len(train_loader), "val_acc": val_acc}


def run_floor(spec, data, epochs, batch_size, lr, seed=0):
    model = models.build(spec, data.shape, data.classes, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # the step fit takes
    x, y = data.x_train[:batch_size].contiguous(), data.y_train[:batch_size].contiguous()
    steps = math.ceil(len(data.y_train) / batch_size)
    for epoch in range(epochs):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        val_acc = train.evaluate(model, data.x_val, data.y_val)
    return {"loss": loss.item(), "val_acc": val_acc}


VARIANTS = {"kdnb fit": run_fit, "reference": run_reference, "floor": run_floor}


def workloads(quick):
    p = profiles.get("quick")
    return [
        ("MNIST-1D MLP " + "-".join(map(str, p.student["hidden"])), p.student, kdata.load("mnist1d"),
         5 if quick else p.epochs, p.batch_size, p.lr),
        ("digits CNN (convnet depth 2, width 16)", {"name": "convnet", "depth": 2, "width": 16}, kdata.load("digits"),
         10 if quick else 30, p.batch_size, p.lr),
    ]


def main():
    args = common.parse(common.parser(__doc__.split("\n")[0]))
    print("## Loop overhead: kdnb.train.fit vs a DataLoader loop\n")
    print(common.machine_info(args))
    rows, checks = [], []
    for name, spec, data, epochs, batch_size, lr in workloads(args.quick):
        steps = epochs * math.ceil(len(data.y_train) / batch_size)
        fns = {v: (lambda f=f: f(spec, data, epochs, batch_size, lr)) for v, f in VARIANTS.items()}
        times, results = common.time_alternating(fns, args.repeats)
        memory = {v: common.peak_memory(fn) for v, fn in fns.items()}
        t = {v: common.median(ts) for v, ts in times.items()}
        for v in VARIANTS:
            r = results[v]
            rows.append([name if v == "kdnb fit" else "", v, common.seconds(t[v]), common.seconds(min(times[v])),
                         common.seconds(t[v] / steps),
                         f"{t[v] / t['kdnb fit']:.2f}×" if v != "kdnb fit" else "1.00×",
                         common.mib(memory[v]), *([f"{r['loss']:.4f}", f"{r['val_acc']:.3f}"] if v != "floor"
                                                  else ["—", "—"])])
        same = (abs(results["kdnb fit"]["loss"] - results["reference"]["loss"]) < 1e-3
                and abs(results["kdnb fit"]["val_acc"] - results["reference"]["val_acc"]) <= 0.01)
        checks.append(f"- {name}: {epochs} epochs × {steps // epochs} steps of batch {batch_size} "
                      f"({len(data.y_train)} train, {len(data.y_val)} val samples). kdnb is "
                      f"{t['reference'] / t['kdnb fit']:.2f}× faster than the reference loop (best of each: "
                      f"{min(times['reference']) / min(times['kdnb fit']):.2f}×) and "
                      f"{t['kdnb fit'] / t['floor']:.2f}× the floor. Same computation (|Δ final loss| < 1e-3, "
                      f"|Δ val acc| ≤ 0.01): {'yes' if same else 'NO'} (Δ loss "
                      f"{abs(results['kdnb fit']['loss'] - results['reference']['loss']):.1e}).")
    print()
    print(common.table(["workload", "variant", "median", "best", "per step", "time / kdnb", "peak mem (RSS growth)",
                        "final train loss", "final val acc"], rows))
    print()
    print("\n".join(checks))
    print("\nfloor: forward, backward and Adam step on one fixed pre-built batch, as many steps, plus the same "
          "per-epoch validation (no loss is comparable: it trains on one batch).")


if __name__ == "__main__":
    main()
