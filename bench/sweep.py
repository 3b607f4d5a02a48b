"""How much faster is an α × T grid trained as one stacked model?

Trains the same 35 members (α ∈ {0, .1, .25, .5, .75, .9, 1} × T ∈ {1, 2, 4, 8, 16}, one seed) of
the quick profile's MNIST-1D MLP student three ways, with the same batches, steps and batch size:

- ``sequential``: one ``kdnb.train.fit`` per member (``Distill(TeacherCache(...), T, alpha)``);
- ``grid``: one ``kdnb.sweep.fit_grid`` (stacked weights, ``vmap``, one optimizer);
- ``floor``: a bare loop of batched matrix products doing the same arithmetic by hand —
  forward, backward, Adam and the per-epoch validation — with no autograd or modules.

Each variant runs in its own process (so its peak memory is its own), alternating, ``--repeats``
times; the table gives the median and best wall time, the peak RSS growth while training, and the
largest accuracy difference from the sequential run. ``--widths 64,256,800`` also times grid
against sequential for wider [w, w] students: where the grid stops paying is
``kdnb.sweep.SEQUENTIAL_ABOVE_FLOPS``.

    python bench/sweep.py [--epochs 5] [--repeats 3] [--threads 2] [--widths 64,256,800]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdnb import cached, data as kdata, losses, models, sweep, train
from kdnb.book import profiles
from kdnb.teachers import TeacherCache
from kdnb.methods import Distill

ALPHAS = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)
TS = (1, 2, 4, 8, 16)
VARIANTS = ("sequential", "grid", "floor")


def teacher_logits(profile, data, teacher_epochs):
    teacher, _ = cached.trained(profile.teacher, data, seed=0, epochs=teacher_epochs,
                               batch_size=profile.batch_size, lr=profile.lr)
    return TeacherCache.compute(teacher, data.x_train).logits.cpu()


def run_sequential(spec, data, logits, members, fit_kwargs):
    out = []
    for m in members:
        model = models.build(spec, data.shape, data.classes, seed=m["seed"])
        h = train.fit(model, data, Distill(TeacherCache(logits), m["T"], m["alpha"]), seed=m["seed"],
                      progress=False, **fit_kwargs)
        out.append((model, h))
    return [m for m, _ in out], [h for _, h in out]


def run_grid(spec, data, logits, members, fit_kwargs):
    r = sweep.fit_grid(spec, data, logits, members, vectorize=True, progress=False, **fit_kwargs)
    return r.models, r.histories


def run_floor(spec, data, logits, members, fit_kwargs, beta1=0.9, beta2=0.999, eps=1e-8):
    """The grid's arithmetic by hand: an MLP's forward and backward as batched matrix products
    over the member axis, Hinton's loss gradient in closed form with the teacher's softened
    outputs computed once (as fit_grid does), Adam with foreach ops."""
    epochs, batch_size, lr = fit_kwargs["epochs"], fit_kwargs["batch_size"], fit_kwargs["lr"]
    inits = [models.build(spec, data.shape, data.classes, seed=m["seed"]) for m in members]
    linears = [[layer for layer in net if isinstance(layer, nn.Linear)] for net in inits]
    if any(not isinstance(layer, (nn.Flatten, nn.Linear, nn.ReLU)) for layer in inits[0]):
        raise ValueError("the floor is written for Flatten/Linear/ReLU students only")
    Ws = [torch.stack([net[i].weight.detach() for net in linears]).contiguous() for i in range(len(linears[0]))]
    bs = [torch.stack([net[i].bias.detach() for net in linears]).contiguous() for i in range(len(linears[0]))]
    params = [p for pair in zip(Ws, bs) for p in pair]
    exp_avg = [torch.zeros_like(p) for p in params]
    exp_avg_sq = [torch.zeros_like(p) for p in params]
    alpha = torch.tensor([float(m["alpha"]) for m in members])[:, None, None]
    T = torch.tensor([float(m["T"]) for m in members])[:, None, None]
    aT, aTT, one_minus_alpha = alpha * T, alpha * T * T, 1 - alpha
    x, y, xv, yv = data.x_train.flatten(1), data.y_train, data.x_val.flatten(1), data.y_val
    # The teacher's softened distributions once per member, sample-major, as fit_grid's table is.
    log_p_all = losses.log_softmax(logits[None] / T).transpose(0, 1).contiguous()  # (n, members, classes)
    p_all = log_p_all.exp()
    n, n_members, classes = len(y), len(members), data.classes

    def forward(a):
        pre, act = [], [a]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = torch.baddbmm(b[:, None], act[-1], W.transpose(1, 2)) if act[-1].dim() == 3 else \
                torch.addmm(b.view(-1), a, W.view(-1, W.shape[-1]).t()).view(len(a), n_members, -1).transpose(0, 1)
            if i < len(Ws) - 1:
                pre.append(z)
                z = z.relu()
            act.append(z)
        return pre, act

    g = torch.Generator().manual_seed(members[0]["seed"])
    best = [p.clone() for p in params]
    best_acc = torch.full((n_members,), -1.0)
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            log_p, p = log_p_all[idx].transpose(0, 1), p_all[idx].transpose(0, 1)  # (members, B, classes)
            B = len(idx)
            pre, act = forward(xb)
            z = act[-1]  # (members, B, classes)
            log_q = losses.log_softmax(z / T)
            log_r = losses.log_softmax(z)
            onehot = F.one_hot(yb, classes).to(z.dtype)
            loss = (aTT * p * (log_p - log_q) - one_minus_alpha * log_r * onehot).sum((1, 2)) / B  # logged, as fit does
            # d loss / dz = alpha·T/B·(softmax(z/T) − p) + (1 − alpha)/B·(softmax(z) − onehot)
            dz = (aT / B) * (log_q.exp() - p) + (one_minus_alpha / B) * (log_r.exp() - onehot)
            correct = (z.argmax(-1) == yb).sum(-1)
            grads = [None] * len(params)
            for layer in range(len(Ws) - 1, -1, -1):
                a = act[layer]
                grads[2 * layer] = dz.transpose(1, 2) @ a  # a is (B, in) for the first layer: broadcast
                grads[2 * layer + 1] = dz.sum(1)
                if layer:
                    dz = torch.bmm(dz, Ws[layer]) * (pre[layer - 1] > 0)
            step += 1
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, math.sqrt(1 - beta2 ** step))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avg, denom, -lr / (1 - beta1 ** step))
        del loss, correct  # computed each step, as the other variants do
        val_acc = (forward(xv)[1][-1].argmax(-1) == yv).float().mean(-1)
        improved = val_acc > best_acc
        for b_, p_ in zip(best, params):
            b_[improved] = p_[improved]
        best_acc = torch.where(improved, val_acc, best_acc)
    for i, net in enumerate(linears):
        for j, layer in enumerate(net):
            layer.weight.data.copy_(best[2 * j][i])
            layer.bias.data.copy_(best[2 * j + 1][i])
    return inits, [{"best_val_acc": float(a)} for a in best_acc]


def status_bytes(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5) and return the RSS now, so the peak read
    after training is training's own, not data loading's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")


def peak_rss():
    return status_bytes("VmHWM")


def child(args):
    """One timed run of one variant; prints a JSON line."""
    torch.set_num_threads(args.threads)
    profile = profiles.get("quick")
    data = kdata.load(profile.data)
    logits = torch.load(args.logits)  # the parent's teacher, so every child distils from the same one
    members = sweep.grid(ALPHAS, TS, seeds=[0])
    fit_kwargs = {"epochs": args.epochs, "batch_size": profile.batch_size, "lr": profile.lr, "device": "cpu"}
    run = {"sequential": run_sequential, "grid": run_grid, "floor": run_floor}[args.variant]
    # The first optimizer a process builds imports torch._dynamo (~2 s of CPU): a one-off start-up
    # cost every variant but the floor would pay, so it is paid before the clock starts.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rss_before = reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    nets, histories = run(profile.student, data, logits, members, fit_kwargs)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_peak = peak_rss()
    test = [train.evaluate(net, data.x_test, data.y_test) for net in nets]
    weights = torch.cat([torch.cat([p.detach().flatten() for p in net.parameters()]) for net in nets])
    print(json.dumps({"variant": args.variant, "wall": wall, "cpu": cpu, "rss_growth_mb": (rss_peak - rss_before) / 2**20,
                      "rss_peak_mb": rss_peak / 2**20, "val": [h["best_val_acc"] for h in histories], "test": test,
                      "weights": weights.tolist()}))


def width_study(args, widths):
    """Grid vs sequential for [w, w] students: the step FLOPs above which stacking stops paying."""
    profile = profiles.get("quick")
    data = kdata.load(profile.data)
    logits = teacher_logits(profile, data, args.teacher_epochs)
    members = sweep.grid([0.5], [1, 2, 4, 8], seeds=[0, 1])
    fit_kwargs = {"epochs": 1, "batch_size": profile.batch_size, "lr": profile.lr, "device": "cpu"}
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the one-off torch._dynamo import, off the clock
    print(f"\n{len(members)} members, 1 epoch, MNIST-1D, batch {profile.batch_size}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats} alternating repeats\n")
    print("| student | forward FLOPs / member / step | sequential, CPU (s) | grid, CPU (s) | speed-up | fit_grid's rule |")
    print("|---|---|---|---|---|---|")
    for w in widths:
        spec = {"name": "mlp", "hidden": [w, w]}
        flops = sweep.step_flops(models.build(spec, data.shape, data.classes), data.x_train, profile.batch_size)
        times = {"sequential": [], "grid": []}
        for rep in range(args.repeats):
            for name in (("sequential", "grid") if rep % 2 == 0 else ("grid", "sequential")):
                c0 = time.process_time()  # CPU time: on a shared machine wall time mostly measures the others
                (run_sequential if name == "sequential" else run_grid)(spec, data, logits, members, fit_kwargs)
                times[name].append(time.process_time() - c0)
        seq, grd = statistics.median(times["sequential"]), statistics.median(times["grid"])
        rule = "one by one" if flops > sweep.SEQUENTIAL_ABOVE_FLOPS else "stack"
        print(f"| 40-{w}-{w}-10 | {flops:.2g} | {seq:.2f} | {grd:.2f} | {seq / grd:.2f}x | {rule} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="1: on a shared 2-core machine two threads wait on each other")
    ap.add_argument("--teacher-epochs", type=int, default=10, help="the teacher only needs to be fair, not best")
    ap.add_argument("--widths", default="", help="comma-separated hidden widths for the fallback study")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--logits", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return child(args)
    torch.set_num_threads(args.threads)
    profile = profiles.get("quick")
    data = kdata.load(profile.data)
    t0 = time.perf_counter()
    results = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="kdnb-bench-") as tmp:
        logits_file = os.path.join(tmp, "teacher_logits.pt")
        torch.save(teacher_logits(profile, data, args.teacher_epochs), logits_file)
        print(f"teacher ready in {time.perf_counter() - t0:.1f} s")
        for rep in range(args.repeats):
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]  # rotate, so drifting machine load hits all alike
            for variant in order:
                cmd = [sys.executable, __file__, "--variant", variant, "--epochs", str(args.epochs),
                       "--threads", str(args.threads), "--logits", logits_file]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results[variant].append(json.loads(out.strip().splitlines()[-1]))
                r = results[variant][-1]
                print(f"  repeat {rep}: {variant:10s} wall {r['wall']:6.2f} s  cpu {r['cpu']:6.2f} s", flush=True)

    steps = args.epochs * math.ceil(len(data.y_train) / profile.batch_size)
    ref = results["sequential"][0]
    wall = {v: statistics.median(r["wall"] for r in results[v]) for v in VARIANTS}
    cpu = {v: statistics.median(r["cpu"] for r in results[v]) for v in VARIANTS}
    print(f"\n35 members (7 alpha x 5 T, seed 0), quick-profile student {profile.student} on {profile.data}, "
          f"{args.epochs} epochs = {steps} steps of batch {profile.batch_size}, {args.threads} thread(s), "
          f"{args.repeats} alternating repeats, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: wall times are noisy, "
          f"CPU times less so)\n")
    print("| variant | wall, median (s) | wall, best (s) | CPU, median (s) | speed-up vs sequential (wall / CPU) "
          "| / floor (wall / CPU) | peak RSS growth (MB) | max abs diff val acc | max abs diff test acc |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        r = results[v][0]
        dval = max(abs(a - b) for a, b in zip(r["val"], ref["val"]))
        dtest = max(abs(a - b) for a, b in zip(r["test"], ref["test"]))
        print(f"| {v} | {wall[v]:.2f} | {min(x['wall'] for x in results[v]):.2f} | {cpu[v]:.2f} | "
              f"{wall['sequential'] / wall[v]:.2f}x / {cpu['sequential'] / cpu[v]:.2f}x | "
              f"{wall[v] / wall['floor']:.2f}x / {cpu[v] / cpu['floor']:.2f}x | "
              f"{max(x['rss_growth_mb'] for x in results[v]):.1f} | {dval:.4f} | {dtest:.4f} |")
    wdiff = {v: max(abs(a - b) for a, b in zip(results[v][0]["weights"], ref["weights"])) for v in ("grid", "floor")}
    print(f"\nlargest weight difference from sequential: grid {wdiff['grid']:.2e}, floor {wdiff['floor']:.2e}")
    print(f"goals (wall, median): grid >= 5x faster than sequential: {wall['sequential'] / wall['grid']:.2f}x; "
          f"grid within 1.5x of the floor: {wall['grid'] / wall['floor']:.2f}x")
    if args.widths:
        width_study(args, [int(w) for w in args.widths.split(",")])


if __name__ == "__main__":
    main()
