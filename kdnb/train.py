"""One training loop for every chapter: ``fit(model, data, objective)`` → history.

The method lives in the objective (``kdnb.objectives``); the loop only batches, steps,
evaluates, keeps the best model by validation accuracy, and checkpoints. The device is picked
in :func:`default_device` and nowhere else.
"""
import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import cache
from .losses import check_number
from .models import check_positive_int


def default_device():
    """``$KDNB_DEVICE`` when set, else CUDA when present, else the CPU."""
    name = os.environ.get("KDNB_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress_default():
    return os.environ.get("KDNB_PROGRESS", "1") != "0"


@dataclass
class Batch:
    """What an objective sees besides the model's output: inputs, labels and the samples'
    indices into the training split (so cached teacher outputs line up with a shuffled batch)."""
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    augmented: bool = False


def logits_of(out):
    return out["logits"] if isinstance(out, dict) else out


def autocast(device):
    # bf16 on CUDA: same range as fp32, so no loss scaling is needed. Elsewhere no context at all:
    # entering a disabled torch.autocast still costs ~10 µs, a tenth of a small model's step overhead.
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare(model, device, sample):
    model.to(device)
    if device.type == "cuda" and sample.dim() == 4:
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(model, x, batch_size=1024, device=None):
    """Logits of ``model`` on ``x`` (eval mode, no gradients); the model's mode is restored."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outs = []
        for i in range(0, len(x), batch_size):
            with autocast(device):
                outs.append(logits_of(model(x[i:i + batch_size].to(device, non_blocking=True))).float())
        return torch.cat(outs)
    finally:
        model.train(was_training)


def evaluate(model, x, y, batch_size=1024):
    """Accuracy of ``model`` on ``(x, y)``; the model is left in the mode it was in."""
    logits = predict(model, x, batch_size)
    return (logits.argmax(1) == y.to(logits.device)).float().mean().item()


def augment_images(x, g, pad=4):
    """Random crop (zero-pad ``pad``) and horizontal flip, on whole batches on the device."""
    n, c, h, w = x.shape
    dy, dx, flip = (torch.randint(0, 2 * pad + 1, (n,), generator=g), torch.randint(0, 2 * pad + 1, (n,), generator=g),
                    torch.rand(n, generator=g) < 0.5)
    dy, dx, flip = dy.to(x.device), dx.to(x.device), flip.to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def batches(x, y, batch_size, g, device, augment):
    """Shuffled batches by index. ``x`` and ``y`` already on ``device`` when they fit there;
    otherwise rows are gathered on the host and copied from pinned memory."""
    perm = torch.randperm(len(y), generator=g)
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        if x.device == device:
            idx = idx.to(device)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # half the cost of x[idx]
        else:
            xb = x.index_select(0, idx).pin_memory().to(device, non_blocking=True)
            yb = y.index_select(0, idx).to(device, non_blocking=True)
            idx = idx.to(device)
        if augment:
            xb = augment(xb, g) if callable(augment) else augment_images(xb, g)
        if device.type == "cuda" and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield Batch(xb, yb, idx, bool(augment))


def fits_on(device, *tensors):
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < 0.4 * free


class NonFiniteLoss(FloatingPointError):
    pass


def check_fit_args(model, data, epochs, batch_size, lr, weight_decay, optimizer, schedule):
    from .data import Data
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, Data):
        raise TypeError(f"data must be a kdnb.data.Data record (from kdnb.data.load), got {type(data).__name__}")
    x, y = data.x_train, data.y_train
    if len(y) == 0:
        raise ValueError("data.y_train must hold at least 1 sample to train on, got an empty training split")
    if len(x) != len(y):
        raise ValueError(f"data.x_train must have one row per label: {len(x)} rows, but data.y_train has {len(y)}")
    if not x.is_floating_point():
        raise TypeError(f"data.x_train must be a floating-point tensor, got dtype {x.dtype}")
    if y.dtype != torch.int64:
        raise TypeError(f"data.y_train must be an int64 tensor of class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= data.classes:
        raise ValueError(f"data.y_train must hold class indices in [0, {data.classes - 1}] for data.classes="
                         f"{data.classes}, got values in [{y.min().item()}, {y.max().item()}]")
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_number("lr", lr, low=0, low_open=True)
    check_number("weight_decay", weight_decay, low=0)
    if optimizer not in ("adam", "adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")


def fit(model, data, objective=None, *, epochs=10, batch_size=64, lr=1e-3, weight_decay=0.0,
        optimizer="adam", momentum=0.9, schedule="constant", seed=0, device=None, augment=False,
        select="best", checkpoint=None, progress=None, shuffle_seed=None):
    """Train ``model`` on ``data.x_train`` with ``objective(out, batch) -> loss``.

    Returns the history: per epoch ``loss``, ``train_acc`` (running, in train mode),
    ``val_acc``, ``lr`` and cumulative ``time``; plus ``best_epoch`` and ``best_val_acc``.
    With ``select="best"`` the model ends with the weights of its best validation epoch —
    the test split is never looked at. With ``checkpoint=path`` every epoch is saved
    atomically and a killed run resumes from the last one, losing nothing.
    ``shuffle_seed`` (default: ``seed``) seeds the batch order alone, so runs with different
    initial weights can share batches (as the members of ``kdnb.sweep.fit_grid`` do).
    """
    from .objectives import CrossEntropy
    check_fit_args(model, data, epochs, batch_size, lr, weight_decay, optimizer, schedule)
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    objective = CrossEntropy() if objective is None else objective
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(out, batch), got {type(objective).__name__}")
    device = torch.device(device) if device else default_device()
    progress = progress_default() if progress is None else progress

    torch.manual_seed(seed)  # dropout and any other randomness inside the step
    g = torch.Generator().manual_seed(seed if shuffle_seed is None else shuffle_seed)  # shuffling, augmentation
    prepare(model, device, data.x_train)
    if isinstance(objective, nn.Module):
        objective.to(device)
    x, y = data.x_train, data.y_train
    if fits_on(device, x, y):
        x, y = x.to(device), y.to(device)
    try:
        out_classes = predict(model, data.x_val[:2] if len(data.y_val) else x[:2], device=device).shape[1]
    except RuntimeError as err:
        raise ValueError(f"model does not accept data {data.name!r}: inputs of shape {data.shape} fail with "
                         f"'{err}'; build the model with in_shape={data.shape}") from None
    if out_classes != data.classes:
        raise ValueError(f"model outputs {out_classes} classes but data {data.name!r} has {data.classes}")
    if hasattr(objective, "check"):
        objective.check(data)

    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(objective, nn.Module):
        params += [p for p in objective.parameters() if p.requires_grad]
    # The fused kernels update each tensor in one pass instead of ~10 small ops: a fifth of a step of
    # the quick profile's MLP. Same arithmetic, equal to float rounding.
    fused = device.type in ("cpu", "cuda") or None
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True, fused=fused)
    else:
        opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(params, lr=lr, weight_decay=weight_decay,
                                                                                fused=fused)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
             if schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))

    history = {"epoch": [], "loss": [], "train_acc": [], "val_acc": [], "lr": [], "time": [],
               "best_epoch": -1, "best_val_acc": -1.0}
    best_state, start, elapsed = None, 0, 0.0
    fit_config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": optimizer,
                  "schedule": schedule, "weight_decay": weight_decay, "n_train": len(y), "select": select,
                  "shuffle_seed": shuffle_seed, "momentum": momentum, "data": data.name,
                  "augment": getattr(augment, "__name__", augment),  # a name: checkpoints hold no code
                  "model": cache.key_of(repr(model))}  # the architecture: same-shaped weights may not fit it
    if checkpoint and Path(checkpoint).exists():
        state = cache.load(checkpoint)
        if state["fit_config"] != fit_config:
            diff = ", ".join(f"{k}={state['fit_config'].get(k)!r} there, {fit_config.get(k)!r} here"
                             for k in sorted(fit_config.keys() | state["fit_config"].keys())
                             if state["fit_config"].get(k) != fit_config.get(k))
            raise ValueError(f"checkpoint {str(checkpoint)!r} was made for another run ({diff}); "
                             f"delete it or pass another path")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if isinstance(objective, nn.Module):
            objective.load_state_dict(state["objective"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        g.set_state(state["generator"])
        history, best_state, start = state["history"], state["best_state"], state["epoch"] + 1
        elapsed = history["time"][-1] if history["time"] else 0.0

    from tqdm.auto import tqdm
    bar = tqdm(range(start, epochs), initial=start, total=epochs, disable=not progress, leave=False,
               desc=f"fit {type(model).__name__}")
    model.train()
    for epoch in bar:
        t0 = time.perf_counter()
        if hasattr(objective, "start_epoch"):
            objective.start_epoch(epoch, epochs)
        step_losses, predictions, labels = [], [], []
        for batch in batches(x, y, batch_size, g, device, augment):
            with autocast(device):
                out = model(batch.x)
                loss = objective(out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step_losses.append(loss.detach().float())
            predictions.append(logits_of(out).argmax(1))  # compared once per epoch, not per step
            labels.append(batch.y)
        # One host sync per epoch, not per step: the NaN guard looks at all steps at once.
        losses = torch.stack(step_losses)
        finite = torch.isfinite(losses)
        if not finite.all():
            bad = int((~finite).nonzero()[0])
            last = losses[:bad][finite[:bad]]
            last = f"{last[-1].item():.4g}" if len(last) else ("none this epoch; previous epoch mean "
                                                             f"{history['loss'][-1]:.4g}" if history["loss"] else "none")
            raise NonFiniteLoss(f"loss became non-finite at step {bad} of epoch {epoch} "
                                f"(global step {epoch * steps_per_epoch + bad}); last finite loss {last}, "
                                f"lr {opt.param_groups[0]['lr']:.3g}. Lower lr or check the inputs.")
        val_acc = evaluate(model, data.x_val, data.y_val) if len(data.y_val) else float("nan")
        elapsed += time.perf_counter() - t0
        history["epoch"].append(epoch)
        history["loss"].append(losses.mean().item())
        history["train_acc"].append((torch.cat(predictions) == torch.cat(labels)).sum().item() / len(y))
        history["val_acc"].append(val_acc)
        history["lr"].append(opt.param_groups[0]["lr"])
        history["time"].append(elapsed)
        if select == "last" or val_acc > history["best_val_acc"]:
            history["best_epoch"], history["best_val_acc"] = epoch, val_acc
            if select == "best":  # "last" ends with the model as it is: no copy to keep
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", val=f"{val_acc:.3f}")
        if checkpoint:
            cache.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "objective": objective.state_dict() if isinstance(objective, nn.Module) else {},
                        "rng": torch.get_rng_state(), "generator": g.get_state(), "epoch": epoch,
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "history": history, "best_state": best_state, "fit_config": fit_config}, checkpoint)
    bar.close()
    if select == "best" and best_state is not None:
        model.load_state_dict(best_state)
    model.train()
    return history


def trained(spec, data, objective=None, *, seed=0, key=None, **fit_kwargs):
    """A model built from ``spec`` and trained with ``fit``, stored in the kdnb cache by its
    full config (model spec and code, data, objective, fit arguments, seed): computed once,
    loaded after. Returns ``(model, history)``, the model on the default device in eval mode."""
    from . import models
    from .objectives import describe
    config = {"spec": spec, "code": training_code(), "data": data_key(data),
              "objective": describe(objective), "fit": fit_kwargs, "seed": seed, "extra": key}

    def compute():
        model = models.build(spec, data.shape, data.classes, seed=seed)
        history = fit(model, data, objective, seed=seed, **fit_kwargs)
        return {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}

    stored = cache.memo("models", config, compute)
    model = models.build(spec, data.shape, data.classes)
    model.load_state_dict(stored["state"])
    return model.to(default_device()).eval(), stored["history"]


def training_code(*more):
    """A hash of the code that builds and trains a model (models, losses, objectives, this loop,
    and ``more`` modules): in cache keys, an edit to the loss or the loop retrains, as an edit to
    the model does (a reader's warm cache would otherwise keep the old numerics)."""
    import sys
    from . import losses, models, objectives
    return cache.source_hash(models, losses, objectives, sys.modules[__name__], *more)


def data_key(data):
    """What identifies a data set's contents: name, sizes and a checksum of the tensors."""
    return {"name": data.name, "sizes": data.sizes(),
            "sha": cache.tensor_hash(data.x_train, data.y_train, data.x_val, data.y_val)}
