"""Full-profile throughput: images/s of a CIFAR-10 ResNet-18 training step and of a KD student step.

Random tensors of CIFAR-10's shape (3×32×32, 10 classes) stand in for the data set (no download;
the speed of a step does not depend on the pixels). Two workloads, each trained ``--steps`` steps
of ``--batch-size`` images with SGD (momentum 0.9, Nesterov, weight decay 5e-4), no augmentation:

- ``teacher step``: ``kdnb.models.resnet18_cifar`` trained on labels;
- ``KD student step``: a small CNN (``kdnb.models.convnet``, 4 conv layers of 32–64 channels with
  batch norm) distilled from a frozen ResNet-18 that runs forward on every batch (T = 4, α = 0.9):
  the live teacher of the full profile, where augmented batches rule out cached logits.

Two ways each: ``kdnb fit`` (on a GPU: bf16 autocast, channels_last, the data on the device;
``--compile`` adds a ``torch.compile``d row) and the ``reference``: the same model in a plain fp32
``DataLoader`` loop that copies each batch to the device and calls ``loss.item()`` per step. Both
start from the same weights and see the same batches, so on the CPU (fp32 both) they must end with
the same loss; on a GPU bf16 changes the rounding, and only a loose agreement is checked.

    python bench/throughput.py [--quick] [--steps 4] [--batch-size 32] [--device cuda] [--compile]
"""
import copy
import functools

import torch

import common
from kdnb import models, train
from kdnb.data import Data
from kdnb.methods import Distill

T, ALPHA, LR, MOMENTUM, WD = 4.0, 0.9, 0.05, 0.9, 5e-4
STUDENT = {"name": "convnet", "depth": 4, "width": 32, "hidden": 128, "norm": True}
SHAPE, CLASSES = (3, 32, 32), 10


def random_cifar(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)
    empty = torch.empty(0, *SHAPE)
    none = torch.empty(0, dtype=torch.int64)
    return Data("cifar10-shaped random tensors", x, y, empty, none, empty, none, CLASSES, SHAPE)


@functools.lru_cache
def initial(name, seed=0):
    """The model's seeded initial weights, built once: a ResNet-18's random init takes a third of a
    second on a CPU, which is not the loop's to pay. Each run trains a fresh copy."""
    return models.build(STUDENT if name == "student" else {"name": name}, SHAPE, CLASSES, seed=seed)


def teacher_model(seed=1):
    return models.build({"name": "resnet18_cifar"}, SHAPE, CLASSES, seed=seed)


@functools.lru_cache
def compiled(name, device, seed=0):
    # One compiled module per model, reset to the initial weights before each run: compiling anew
    # every run would time the compiler, not the step (the warm-up run pays it once).
    return torch.compile(copy.deepcopy(initial(name, seed)).to(device))


def run_fit(name, data, batch_size, device, teacher=None, compile=False, seed=0):
    if compile:
        model = compiled(name, device, seed)
        model.load_state_dict(initial(name, seed).state_dict())
    else:
        model = copy.deepcopy(initial(name, seed))
    objective = Distill(teacher, T, ALPHA) if teacher is not None else None
    h = train.fit(model, data, objective, epochs=1, batch_size=batch_size, lr=LR, optimizer="sgd", momentum=MOMENTUM,
                  weight_decay=WD, select="last", seed=seed, device=device, progress=False)
    return {"loss": h["loss"][-1]}


def run_reference(name, data, batch_size, device, teacher=None, seed=0):
    loss = common.reference_sgd_loop(copy.deepcopy(initial(name, seed)), data, batch_size, device, teacher, lr=LR,
                                     momentum=MOMENTUM, weight_decay=WD, T=T, alpha=ALPHA, seed=seed)
    return {"loss": loss}


def main():
    p = common.parser(__doc__.split("\n")[0], repeats=5, quick_repeats=3)
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 4 on a CPU, 50 on a GPU; "
                                                            "2 and 20 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 on a CPU, 256 on a GPU")
    p.add_argument("--device", default=None, help="default: kdnb.train.default_device()")
    p.add_argument("--compile", action="store_true", help="also time fit on a torch.compile'd model")
    args = common.parse(p)
    device = torch.device(args.device) if args.device else train.default_device()
    gpu = device.type == "cuda"
    steps = args.steps or ((20 if gpu else 2) if args.quick else (50 if gpu else 4))
    batch_size = args.batch_size or (256 if gpu else 32)
    data = random_cifar(steps * batch_size)
    teacher = teacher_model().to(device).eval()

    workloads = {"teacher step (ResNet-18)": ("resnet18_cifar", None),
                 "KD student step (convnet ← live ResNet-18)": ("student", teacher)}
    print("## Throughput: CIFAR-10-shaped ResNet-18 teacher step and KD student step\n")
    print(common.machine_info(args, device))
    rows, checks = [], []
    for name, (model_name, t) in workloads.items():
        variants = {"kdnb fit": lambda: run_fit(model_name, data, batch_size, device, t),
                    "reference (fp32 DataLoader loop)": lambda: run_reference(model_name, data, batch_size, device, t)}
        if args.compile:
            variants["kdnb fit + torch.compile"] = lambda: run_fit(model_name, data, batch_size, device, t, compile=True)
        times, results = common.time_alternating(variants, args.repeats, device=device)
        memory = {v: common.peak_memory(fn, device) for v, fn in variants.items()}
        med = {v: common.median(ts) for v, ts in times.items()}
        ref = med["reference (fp32 DataLoader loop)"]
        for v in variants:
            rows.append([name if v == "kdnb fit" else "", v, common.seconds(med[v]), common.seconds(min(times[v])),
                         f"{steps * batch_size / med[v]:,.0f}", f"{ref / med[v]:.2f}×", common.mib(memory[v]),
                         f"{results[v]['loss']:.4f}"])
        delta = abs(results["kdnb fit"]["loss"] - results["reference (fp32 DataLoader loop)"]["loss"])
        tol = 0.1 * results["reference (fp32 DataLoader loop)"]["loss"] if gpu else 1e-3
        best = min(times["reference (fp32 DataLoader loop)"]) / min(times["kdnb fit"])
        checks.append(f"- {name}: kdnb fit runs at {ref / med['kdnb fit']:.2f}× the reference's images/s by median "
                      f"time, {best:.2f}× by best time ({'not slower' if med['kdnb fit'] <= ref else 'SLOWER by median'}); "
                      f"same computation "
                      f"(|Δ final loss| < {'10 % (bf16 vs fp32)' if gpu else '1e-3'}): "
                      f"{'yes' if delta < tol else 'NO'} (Δ {delta:.1e}).")
    print(f"\n{steps} steps of batch {batch_size} per run; images/s = {steps * batch_size} images / median wall time "
          f"(fit's includes its set-up: moving the data to the device, the checks).\n")
    print(common.table(["workload", "variant", "median", "best", "images/s (median)", "speed-up vs reference", "peak mem", "final loss"],
                       rows))
    print()
    print("\n".join(checks))
    print(f"- peak mem: {'CUDA peak allocation' if gpu else 'peak RSS growth, sampled'} during one run. "
          f"Parameters: teacher {models.count_params(teacher_model()):,}, "
          f"student {models.count_params(models.build(STUDENT, SHAPE, CLASSES)):,}.")


if __name__ == "__main__":
    main()
