"""The full profile on one GPU, in one run of about 8 minutes: what kdnb's CUDA path does.

No download: CIFAR-10-shaped tensors are made in memory (the speed of a step does not depend on the
pixels). Results go to ``--out`` as ``results.json`` and ``results.md``. Four measurements:

1. **Images per second** of a ResNet-18 teacher step and of a KD step of seed 001's 6-conv student
   (``cifar_cnn``) from a live ResNet-18: ``kdnb fit`` (on CUDA: bf16 autocast, channels-last, the
   data on the device), the same with ``torch.compile``, and a plain fp32 ``DataLoader`` loop of
   the same models (the reference). Variants alternate in rotated rounds; medians.
2. **Chapter 3's grid** (α × T Hinton KD students of the full profile's pair), stacked by
   ``kdnb.sweep.fit_grid`` vs the same members one by one with ``fit``.
3. **Peak memory** of each of the above (CUDA's peak allocation; on the CPU the RSS growth).
4. **Correctness on the device**: ``fit`` on the device and on the CPU, from the same weights and
   batches, end within bf16 tolerance; and a run SIGKILLed after its first checkpoint and resumed
   on the device ends bit for bit where an uninterrupted run ends.

``--smoke`` runs every code path on the CPU in well under a minute (``tests/test_bench_gpu.py``).

    python bench/gpu.py --out DIR [--smoke] [--device cuda]
"""
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common
from kdnb import models, sweep, train
from kdnb.data import Data
from kdnb.methods import Distill

SHAPE, CLASSES = (3, 32, 32), 10
TEACHER = {"name": "resnet18_cifar"}
STUDENT = {"name": "cifar_cnn"}   # seed 001's 6 conv (BN) + 2 FC student
T, ALPHA, LR, MOMENTUM, WD = 4.0, 0.9, 0.05, 0.9, 5e-4
SGD = dict(lr=LR, optimizer="sgd", momentum=MOMENTUM, weight_decay=WD)
GRID = {"alpha": [0.5, 0.9, 1.0], "T": [1.0, 4.0, 16.0]}


def cifar_shaped(n, seed=0, n_val=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n + n_val, *SHAPE, generator=g), torch.randint(0, CLASSES, (n + n_val,), generator=g)
    none = torch.empty(0, *SHAPE), torch.empty(0, dtype=torch.int64)
    return Data("cifar10-shaped random tensors", x[:n], y[:n], x[n:], y[n:], *none, CLASSES, SHAPE)


def fresh(spec, seed=0):
    return models.build(spec, SHAPE, CLASSES, seed=seed)


def run_fit(model, data, batch_size, device, teacher=None, epochs=1):
    h = train.fit(model, data, Distill(teacher, T, ALPHA) if teacher is not None else None, epochs=epochs,
                  batch_size=batch_size, select="last", seed=0, device=device, progress=False, **SGD)
    return h["loss"][-1]


def run_reference(model, data, batch_size, device, teacher=None):
    """The usual loop (bench/common.py): fp32, a DataLoader that copies each batch, .item() per step."""
    return common.reference_sgd_loop(model, data, batch_size, device, teacher, lr=LR, momentum=MOMENTUM,
                                     weight_decay=WD, T=T, alpha=ALPHA)


def throughput(args, device, data, teacher):
    rows = []
    for name, spec, t in (("teacher step (ResNet-18)", TEACHER, None),
                          ("KD student step (6-conv ← live ResNet-18)", STUDENT, teacher)):
        start = fresh(spec)
        compiled = torch.compile(copy.deepcopy(start).to(device)) if args.compile else None
        variants = {"kdnb fit": lambda: run_fit(copy.deepcopy(start), data, args.batch_size, device, t),
                    "reference (fp32 DataLoader loop)": lambda: run_reference(copy.deepcopy(start), data,
                                                                             args.batch_size, device, t)}
        if compiled is not None:
            def compiled_fit():
                compiled.load_state_dict(start.state_dict())
                return run_fit(compiled, data, args.batch_size, device, t)
            variants["kdnb fit + torch.compile"] = compiled_fit
        times, losses = common.time_alternating(variants, args.repeats, device=device)
        memory = {v: common.peak_memory(fn, device) for v, fn in variants.items()}
        ref = common.median(times["reference (fp32 DataLoader loop)"])
        for v in variants:
            med = common.median(times[v])
            rows.append({"workload": name, "variant": v, "median_s": med, "images_per_s": len(data.y_train) / med,
                         "speedup_vs_reference": ref / med, "peak_memory_bytes": memory[v], "final_loss": losses[v]})
    return rows


def grid(args, device, data, teacher):
    logits = train.predict(teacher, data.x_train, device=device).float().cpu()
    members = sweep.grid(GRID["alpha"], GRID["T"], seeds=[0])
    fit_args = dict(epochs=1, batch_size=args.batch_size, device=device, progress=False, **SGD)
    # "auto": stacked where vmap can (chapter 3's full-profile student has batch norm: then one by one, noted)
    stacked = lambda: sweep.fit_grid(STUDENT, data, logits, members, vectorize="auto", **fit_args)
    one_by_one = lambda: sweep.fit_grid(STUDENT, data, logits, members, vectorize=False, **fit_args)
    variants = {"fit_grid (stacked where it can)": stacked, "one by one (fit)": one_by_one}
    times, results = common.time_alternating(variants, max(1, args.repeats // 2), device=device)
    memory = {v: common.peak_memory(fn, device) for v, fn in variants.items()}
    base = common.median(times["one by one (fit)"])
    return [{"variant": v, "members": len(members), "median_s": common.median(times[v]),
             "speedup_vs_one_by_one": base / common.median(times[v]), "peak_memory_bytes": memory[v],
             "vectorized": getattr(results[v], "vectorized", None), "note": getattr(results[v], "note", "")}
            for v in variants]


def agreement(args, device, data):
    """fit on the device vs on the CPU, same weights and batches: final loss and logits."""
    out = {}
    for where in ("device", "cpu"):
        model = fresh(STUDENT)
        loss = run_fit(model, data, args.batch_size, device if where == "device" else torch.device("cpu"),
                       epochs=args.agree_epochs)
        out[where] = (loss, train.predict(model, data.x_val[:256], device=torch.device("cpu")).float())
    (l_dev, z_dev), (l_cpu, z_cpu) = out["device"], out["cpu"]
    tol = 0.05 if device.type == "cuda" else 1e-6  # bf16 autocast vs fp32: a few percent; same device: equal
    rel = abs(l_dev - l_cpu) / max(abs(l_cpu), 1e-12)
    agree = (z_dev.argmax(1) == z_cpu.argmax(1)).float().mean().item()
    return {"steps": args.agree_epochs * -(-len(data.y_train) // args.batch_size), "loss_device": l_dev,
            "loss_cpu": l_cpu, "relative_difference": rel, "tolerance": tol, "argmax_agreement": agree,
            "ok": rel <= tol}


KILLED = """
import sys, torch
torch.set_num_threads({threads})  # the parent's: another count rounds differently
sys.path.insert(0, {bench!r})
import gpu
from kdnb import train
data = gpu.cifar_shaped({n}, n_val={n_val})
train.fit(gpu.fresh(gpu.STUDENT), data, epochs={epochs}, batch_size={bs}, select="last", seed=0,
          device={device!r}, progress=False, checkpoint={ckpt!r}, **gpu.SGD)
"""


def resume_after_kill(args, device, tmp):
    """A fit SIGKILLed once its first epoch's checkpoint is written, resumed on the device, against
    an uninterrupted run: equal bit for bit?"""
    n, n_val = args.batch_size * args.resume_steps, args.batch_size
    data = cifar_shaped(n, n_val=n_val)
    ckpt = Path(tmp) / "run.pt"
    script = KILLED.format(bench=str(Path(__file__).parent), n=n, n_val=n_val, epochs=args.resume_epochs,
                           bs=args.batch_size, device=str(device), ckpt=str(ckpt),
                           threads=torch.get_num_threads())
    env = {**os.environ, "KDNB_PROGRESS": "0", "KDNB_CACHE": str(Path(tmp) / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=common.ROOT)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    kwargs = dict(epochs=args.resume_epochs, batch_size=args.batch_size, select="last", seed=0, device=device,
                  progress=False, **SGD)
    resumed = fresh(STUDENT)
    h_resumed = train.fit(resumed, data, checkpoint=ckpt, **kwargs)
    straight = fresh(STUDENT)
    h_straight = train.fit(straight, data, **kwargs)
    same = all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))
    return {"killed_mid_run": killed, "epochs": args.resume_epochs, "bit_exact": same and
            h_resumed["loss"] == h_straight["loss"]}


def markdown(results):
    m = common
    lines = [f"## kdnb on {results['device']} ({results['device_name']}), {results['date']}", "",
             f"command: `{results['command']}`; torch {results['torch']}", "", "### Throughput", ""]
    lines.append(m.table(["workload", "variant", "images/s", "× reference", "peak memory", "final loss"],
                         [[r["workload"], r["variant"], f"{r['images_per_s']:,.0f}", f"{r['speedup_vs_reference']:.2f}×",
                           m.mib(r["peak_memory_bytes"]), f"{r['final_loss']:.4f}"] for r in results["throughput"]]))
    lines += ["", "### Chapter 3's grid", ""]
    lines.append(m.table(["variant", "members", "median", "× one by one", "peak memory", "stacked?"],
                         [[r["variant"], r["members"], m.seconds(r["median_s"]), f"{r['speedup_vs_one_by_one']:.2f}×",
                           m.mib(r["peak_memory_bytes"]), f"{r['vectorized']} {r['note'] or ''}".strip()]
                          for r in results["grid"]]))
    a, k = results["agreement"], results["resume"]
    lines += ["", "### Correctness on the device", "",
              f"- fit on the device vs the CPU over {a['steps']} steps: final loss {a['loss_device']:.4f} vs "
              f"{a['loss_cpu']:.4f} (relative difference {a['relative_difference']:.1e}, tolerance {a['tolerance']:g}: "
              f"{'ok' if a['ok'] else 'NOT OK'}); argmax agreement {a['argmax_agreement']:.1%}",
              f"- a run SIGKILLed after its first checkpoint ({'killed' if k['killed_mid_run'] else 'finished first'}) "
              f"and resumed: {'bit-exact' if k['bit_exact'] else 'NOT bit-exact'} against an uninterrupted run"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = common.parser(__doc__.split("\n")[0], repeats=5, quick_repeats=3)
    p.add_argument("--out", required=True, help="folder for results.json and results.md")
    p.add_argument("--smoke", action="store_true", help="every code path on the CPU in well under a minute")
    p.add_argument("--device", default=None, help="default: kdnb's default device")
    args = common.parse(p, argv)
    device = torch.device("cpu") if args.smoke else torch.device(args.device) if args.device else train.default_device()
    gpu = device.type == "cuda"
    if args.smoke:
        args.repeats, args.batch_size, steps, args.compile = 1, 8, 2, False
        args.agree_epochs, args.resume_steps, args.resume_epochs = 1, 2, 2
    else:
        args.batch_size, steps, args.compile = (256, 40, True) if gpu else (32, 4, False)
        args.agree_epochs, args.resume_steps, args.resume_epochs = (3, 100, 3) if gpu else (1, 4, 2)
    data = cifar_shaped(args.batch_size * steps, n_val=args.batch_size)
    teacher = fresh(TEACHER, seed=1).to(device).eval()
    results = {"device": str(device), "device_name": common.device_name(device), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "command": common.command(), "smoke": args.smoke,
               "batch_size": args.batch_size, "steps": steps}
    results["throughput"] = throughput(args, device, data, teacher)
    results["grid"] = grid(args, device, data, teacher)
    results["agreement"] = agreement(args, device, cifar_shaped(args.batch_size * steps * 2, seed=2,
                                                                n_val=args.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        results["resume"] = resume_after_kill(args, device, tmp)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
