"""One training loop for every chapter: ``fit(model, data, method)`` → history.

The method (``kdnb.methods``) says what to minimise, as named loss terms, which student
parameters train and which extra players (a discriminator) it updates; the loop only batches,
steps, evaluates, keeps the best model by validation accuracy, checkpoints and shows progress.
``trained`` is the cached form. The device is picked in ``kdnb.device`` and nowhere else.

Under ``torchrun --nproc_per_node=N`` the same ``fit`` trains with DistributedDataParallel:
``batch_size`` stays the *global* batch, each rank takes its share of every batch (by index, from
one shuffle all ranks draw alike), and the averaged gradient is the one-process gradient of the
global batch, so the run does what one process with ``batch_size`` does, at any number of ranks
(and resumes at any). Only rank 0 writes checkpoints and cache entries and shows progress.
"""
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import device as devices, store
from .checks import check_number, check_positive_int
from .data import Data
from .device import autocast, default_device, fits_on
from .keys import Uncacheable, describe
from .methods import Batch, CrossEntropy, as_method  # noqa: F401  (Batch: the loop's)
from .teachers import predict


def progress_default():
    """Progress bars unless ``$KDNB_PROGRESS=0`` (the site build, nbval and CI set it)."""
    return os.environ.get("KDNB_PROGRESS", "1") != "0"


def progress_bar(total, desc, progress=None):
    """One tqdm bar (a widget in JupyterLab), or a disabled one when progress is off (and on
    every rank but rank 0 under torchrun)."""
    from tqdm.auto import tqdm
    progress = progress_default() if progress is None else progress
    return tqdm(total=total, desc=desc, disable=not progress or not devices.is_main(), leave=False)


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


def share(n, rank, size):
    """``(start, stop)`` of rank ``rank``'s share of a batch of ``n``: sizes differ by one at most."""
    q, extra = divmod(n, size)
    start = rank * q + min(rank, extra)
    return start, start + q + (rank < extra)


def batches(x, y, batch_size, g, device, augment, rank=0, size=1):
    """Shuffled batches by index. ``x`` and ``y`` already on ``device`` when they fit there;
    otherwise rows are gathered on the host and copied from pinned memory. Over ``size`` ranks,
    rank ``rank`` gets its share of each global batch; augmented, the whole batch is augmented
    on every rank first, so the generator advances as in one process and the ranks stay in step."""
    perm = torch.randperm(len(y), generator=g)
    for i in range(0, len(perm), batch_size):
        idx = perm[i:i + batch_size]
        if size > 1:
            start, stop = share(len(idx), rank, size)
            idx = idx if augment else idx[start:stop]
        if x.device == device:
            idx = idx.to(device)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)  # half the cost of x[idx]
        else:
            xb = x.index_select(0, idx).pin_memory().to(device, non_blocking=True)
            yb = y.index_select(0, idx).to(device, non_blocking=True)
            idx = idx.to(device)
        if augment:
            xb = augment(xb, g) if callable(augment) else augment_images(xb, g)
            if size > 1:
                xb, yb, idx = xb[start:stop], yb[start:stop], idx[start:stop]
        if device.type == "cuda" and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield Batch(xb, yb, idx, bool(augment))


class NonFiniteLoss(FloatingPointError):
    pass


def check_world(batch_size, n_train, size):
    """Refuse a world size that can't split every batch: ``batch_size`` is the global batch."""
    if batch_size % size:
        fits = [n for n in range(1, min(batch_size, 64) + 1) if batch_size % n == 0]
        raise ValueError(f"batch_size={batch_size} is the global batch and must be a multiple of the world size "
                         f"{size} ($WORLD_SIZE: torchrun's --nproc_per_node × --nnodes), so that every rank takes "
                         f"an equal share; with batch_size={batch_size} launch {', '.join(map(str, fits))} ranks, "
                         f"or pass a batch_size that {size} divides")
    last = n_train - (math.ceil(n_train / batch_size) - 1) * batch_size
    if last < size:
        raise ValueError(f"the last batch of each epoch holds {last} of the {n_train} training samples "
                         f"(batch_size={batch_size}), fewer than the world size {size}: a rank would get no "
                         f"sample; pick a batch_size that leaves at least {size} samples (or none) for the "
                         f"last batch, or launch fewer ranks")


class Step(nn.Module):
    """The student's step (``method.forward_train``) as one module, so that one
    DistributedDataParallel averages the gradients of the student and of the method's trainable
    parts (projectors, regressors) alike, whatever path the method takes through the student
    (feature taps share its weights). Players are left out: see :func:`parallel`."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, batch):
        logits, terms = self.method.forward_train(self.model, batch)
        # Detached: the loop descends the terms only, and DDP tells the parameters a step uses from
        # the outputs' graph (the logits' layer takes no part in a hint-only loss).
        return logits.detach(), terms


def parallel(model, method, params, players, device):
    """The DDP wrapper of :class:`Step` over the parameters the student's optimiser holds. A
    player's loss is computed by ``method.player_losses`` on the player module the method holds,
    never through a wrapper's forward, and WGAN's gradient penalty differentiates twice, which DDP
    does not support: players' gradients are averaged by an explicit all-reduce in the loop."""
    from torch.nn.parallel import DistributedDataParallel
    step = Step(model, method)
    ours = {id(p) for p in params}
    theirs = {id(t) for player in players.values() for t in [*player.parameters(), *player.buffers()]}
    ignore = [n for n, p in step.named_parameters() if id(p) not in ours]
    ignore += [n for n, b in step.named_buffers() if id(b) in theirs]
    # What DDP._set_params_and_buffers_to_ignore_for_model sets on the module, without also tagging
    # the parameters themselves for good (this Step is made afresh for each fit).
    step._ddp_params_and_buffers_to_ignore = ignore
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # static_graph: the same parameters take part in every step, some maybe in none (the logits'
    # layer under a hint-only loss); DDP learns which in the first step instead of searching the
    # autograd graph each step as find_unused_parameters would.
    return DistributedDataParallel(step, device_ids=ids, static_graph=True)


def evaluate_shared(model, x, y, ranks):
    """:func:`evaluate` with each rank predicting its share of ``(x, y)``; the same number on
    every rank."""
    start, stop = share(len(y), ranks.rank, ranks.size)
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.float64, device=device)
    if stop > start:
        correct += (predict(model, x[start:stop]).argmax(1) == y[start:stop].to(device)).sum()
    devices.all_reduce_sum(correct)
    return (correct.float() / len(y)).item()  # float32, as evaluate's mean


def check_fit_args(model, data, epochs, batch_size, lr, weight_decay, optimizer, schedule):
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
    for split, (xs, ys) in (("train", (x, y)), ("val", (data.x_val, data.y_val))):
        if len(xs) != len(ys):
            raise ValueError(f"data.x_{split} must have one row per label: {len(xs)} rows, but data.y_{split} "
                             f"has {len(ys)}")
        if ys.dtype != torch.int64:
            raise TypeError(f"data.y_{split} must be an int64 tensor of class indices, got dtype {ys.dtype}")
        if len(ys) and (ys.min() < 0 or ys.max() >= data.classes):  # validation picks the model: its labels count
            raise ValueError(f"data.y_{split} must hold class indices in [0, {data.classes - 1}] for data.classes="
                             f"{data.classes}, got values in [{ys.min().item()}, {ys.max().item()}]")
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_number("lr", lr, low=0, low_open=True)
    check_number("weight_decay", weight_decay, low=0)
    if optimizer not in ("adam", "adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {optimizer!r}")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")


def optimiser(params, optimizer, lr, weight_decay, momentum, schedule, total_steps, device):
    """The student's optimiser and its per-step schedule, for ``fit`` and the stacked loop alike
    (Adam and SGD act element-wise, so over stacked tensors each member gets its own). The fused
    kernels update each tensor in one pass instead of ~10 small ops: a fifth of a step of the
    quick profile's MLP. Same arithmetic, equal to float rounding."""
    fused = device.type in ("cpu", "cuda") or None
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True, fused=fused)
    else:
        adam = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        opt = adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
             if schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    return opt, sched


def new_history(batch_size, lr, schedule, optimizer, world_size=1):
    """An empty history, as ``fit`` and each member of the stacked loop fill it: per epoch
    ``epoch``, ``loss``, ``terms`` (name -> values), ``train_acc``, ``val_acc``, ``lr``, ``time``
    and ``world_size``; ``best_epoch`` and ``best_val_acc``; and ``batching``, this session's
    global and per-rank batch and the learning rate that goes with the global batch."""
    batching = {"world_size": world_size, "global_batch": batch_size, "per_rank_batch": batch_size // world_size,
                "lr": lr, "schedule": schedule, "optimizer": optimizer}
    return {"epoch": [], "loss": [], "terms": {}, "train_acc": [], "val_acc": [], "lr": [], "time": [],
            "best_epoch": -1, "best_val_acc": -1.0, "batching": batching, "world_size": []}


def descended(terms):
    """The sum of the terms a player descends; detached ones (an accuracy) are only logged."""
    live = [v for v in terms.values() if v.requires_grad]
    if not live:
        raise ValueError(f"no loss term requires a gradient (terms: {', '.join(terms)}); a method must return "
                         f"at least one term computed from the model's output")
    return live[0] if len(live) == 1 else sum(live)


def method_key(method, checkpoint):
    """The method's description for a checkpoint's resume check; a method that can't be described
    can't be checked, so it can't checkpoint either."""
    try:
        return store.key_of(describe(method))
    except Uncacheable as err:
        if checkpoint:
            raise ValueError(f"checkpoint needs a method kdnb can describe, to refuse resuming with another: "
                             f"{err}") from None
        return None


@dataclass
class Run:
    """What one ``fit`` trains with, built by :func:`prepare`: the model and method on their
    device, the training split (there too when it fits), the batch generator, the optimisers and
    schedule, the DDP wrapper under torchrun, the history, the kept best weights and where a
    resumed run starts."""
    model: nn.Module
    method: nn.Module
    data: Data
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    world: object
    g: torch.Generator
    opt: torch.optim.Optimizer
    sched: object
    players: dict
    player_opts: dict
    ddp: object
    history: dict
    fit_config: dict
    args: dict
    steps_per_epoch: int
    best_state: dict = None
    start: int = 0
    elapsed: float = 0.0


def fit(model, data, method=None, *, epochs=10, batch_size=64, lr=1e-3, weight_decay=0.0,
        optimizer="adam", momentum=0.9, schedule="constant", seed=0, device=None, augment=False,
        select="best", checkpoint=None, progress=None, shuffle_seed=None):
    """Train ``model`` on ``data.x_train`` with ``method`` (a ``kdnb.methods.Method``, or a plain
    ``fn(out, batch) -> loss``; default cross-entropy).

    Returns the history (:func:`new_history`): per epoch ``loss`` (what the student descended),
    ``terms`` (each named loss term of the method and of its players, ``"D/bce"``), ``train_acc``
    (running, in train mode), ``val_acc``, ``lr`` and cumulative ``time``; plus ``best_epoch`` and
    ``best_val_acc``. With ``select="best"`` the model ends with the weights of its best
    validation epoch — the test split is never looked at. With ``checkpoint=path`` every epoch is
    saved atomically (student, method, every optimiser, RNG states) and a killed run resumes from
    the last one, losing nothing. ``shuffle_seed`` (default: ``seed``) seeds the batch order alone,
    so runs with different initial weights can share batches (as the members of
    ``kdnb.sweep.fit_grid`` do). ``progress``: a bool, or a tqdm bar to advance by epochs.
    """
    run = prepare(model, data, method, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                  optimizer=optimizer, momentum=momentum, schedule=schedule, seed=seed, device=device,
                  augment=augment, select=select, checkpoint=checkpoint, shuffle_seed=shuffle_seed)
    resume(run, checkpoint, seed)
    bar = epoch_bar(run, progress)
    model.train()
    for epoch in range(run.start, epochs):
        t0 = time.perf_counter()
        run.method.start_epoch(epoch, epochs)
        log = EpochLog()
        for batch in batches(run.x, run.y, batch_size, run.g, run.device, augment, run.world.rank, run.world.size):
            logits, loss, terms, weight = student_step(run, batch, log)
            played = player_steps(run, batch, logits, weight)
            log.add(loss, terms, played, logits, batch)
        values, correct = log.values(run)  # one host sync per epoch, not per step
        guard(run, values, log.names, epoch)
        val_acc = validate(run)
        run.elapsed += time.perf_counter() - t0
        record(run, epoch, values, log, correct, val_acc)
        keep_best(run, epoch, val_acc)
        bar.update(1)
        bar.set_postfix(loss=f"{run.history['loss'][-1]:.3f}", val=f"{val_acc:.3f}")
        save_checkpoint(run, epoch, checkpoint)
    return finish(run, bar, progress)


def prepare(model, data, method, *, epochs, batch_size, lr, weight_decay, optimizer, momentum, schedule, seed,
            device, augment, select, checkpoint, shuffle_seed):
    """Check the arguments, put the model, the method and the data on the device, seed, and build
    the optimisers, the schedule, the DDP wrapper (under torchrun) and an empty history."""
    check_fit_args(model, data, epochs, batch_size, lr, weight_decay, optimizer, schedule)
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    method = CrossEntropy() if method is None else as_method(method)
    world = devices.ranks()
    if world.size > 1:
        check_world(batch_size, len(data.y_train), world.size)
    device = torch.device(device) if device else default_device()
    if world.size > 1:
        device = devices.init(device)  # NCCL for CUDA, gloo for the CPU; "cuda" is this rank's GPU

    torch.manual_seed(seed)  # dropout, parts a method builds in setup, any other randomness in the step
    g = torch.Generator().manual_seed(seed if shuffle_seed is None else shuffle_seed)  # shuffling, augmentation
    devices.prepare(model, device, data.x_train)
    method.to(device)
    x, y = data.x_train, data.y_train
    if fits_on(device, x, y):
        x, y = x.to(device), y.to(device)
    check_model_fits(model, data, x, device)
    method.setup(model, data)
    method.to(device)  # parts made in setup
    method.train()

    players = method.players()
    params = student_params(model, method, players)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    opt, sched = optimiser(params, optimizer, lr, weight_decay, momentum, schedule, epochs * steps_per_epoch, device)
    player_opts = {name: player.make_optimizer() for name, player in players.items()}
    ddp = parallel(model, method, params, players, device) if world.size > 1 else None
    if ddp is not None:
        for player in players.values():  # DDP synchronised the rest from rank 0
            devices.broadcast_tensors([*player.parameters(), *player.buffers()])
    # The learning rate goes with the global batch, which does not change with the world size.
    if world.size > 1 and world.main:
        print(f"kdnb.fit: DistributedDataParallel over {world.size} ranks: global batch {batch_size} "
              f"({batch_size // world.size} per rank), lr {lr:g} ({optimizer}, {schedule}) for the global batch",
              flush=True)
    history = new_history(batch_size, lr, schedule, optimizer, world.size)
    fit_config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "optimizer": optimizer,
                  "schedule": schedule, "weight_decay": weight_decay, "n_train": len(y), "select": select,
                  "shuffle_seed": shuffle_seed, "momentum": momentum, "data": data.name,
                  "augment": getattr(augment, "__name__", augment),  # a name: checkpoints hold no code
                  "model": store.key_of(repr(model)),  # the architecture: same-shaped weights may not fit it
                  "method": method_key(method, checkpoint)}  # T, α, the teacher: resuming with others is refused
    return Run(model, method, data, x, y, device, world, g, opt, sched, players, player_opts, ddp, history,
               fit_config, {"batch_size": batch_size, "select": select, "epochs": epochs}, steps_per_epoch)


def check_model_fits(model, data, x, device):
    """Refuse a model that does not take the data's inputs or outputs another number of classes."""
    try:
        out_classes = predict(model, data.x_val[:2] if len(data.y_val) else x[:2], device=device).shape[1]
    except RuntimeError as err:
        raise ValueError(f"model does not accept data {data.name!r}: inputs of shape {data.shape} fail with "
                         f"'{err}'; build the model with in_shape={data.shape}") from None
    if out_classes != data.classes:
        raise ValueError(f"model outputs {out_classes} classes but data {data.name!r} has {data.classes}")


def student_params(model, method, players):
    """What the student's optimiser holds: the parameters the method trains, its own (projectors,
    regressors), never a player's (which has its own optimiser); refused when there are none."""
    theirs = {id(p) for player in players.values() for p in player.parameters()}
    params, seen = [], set()
    for p in [*method.trainable(model), *method.parameters()]:
        if p.requires_grad and id(p) not in theirs and id(p) not in seen:  # a player's weights: its own optimiser
            params.append(p)
            seen.add(id(p))
    if not params:
        frozen = getattr(model, "_kdnb_frozen_by", None)
        raise ValueError("model has no trainable parameter (every one has requires_grad=False)"
                         + (f": it was frozen when wrapped as a teacher ({frozen}); call "
                            f"model.requires_grad_(True) to train it again" if frozen else
                            "; unfreeze what should train with model.requires_grad_(True)"))
    return params


def resume(run, checkpoint, seed):
    """Continue from ``checkpoint`` when it exists (refused when it was made for another run);
    under torchrun rank 0 reads it and every rank seeds its own dropout stream."""
    world = run.world
    state = None
    if checkpoint and world.size == 1 and Path(checkpoint).exists():
        state = store.load(checkpoint)
    elif checkpoint and world.size > 1:  # rank 0 reads it: other machines may not see the file
        state = devices.broadcast_object(store.load(checkpoint) if world.main and Path(checkpoint).exists() else None)
    if state is not None and not (isinstance(state, dict) and isinstance(state.get("fit_config"), dict)):
        raise ValueError(f"checkpoint {str(checkpoint)!r} is a kdnb file but not a checkpoint of fit (it holds "
                         f"no fit_config): pass another path, or delete it")
    if state is None:
        if world.rank:
            rank_seed(seed, world.rank, 0)  # dropout masks: each rank its own (rank 0 draws as one process does)
        return
    if state["fit_config"] != run.fit_config:
        diff = ", ".join(f"{k}={state['fit_config'].get(k)!r} there, {run.fit_config.get(k)!r} here"
                         for k in sorted(run.fit_config.keys() | state["fit_config"].keys())
                         if state["fit_config"].get(k) != run.fit_config.get(k))
        raise ValueError(f"checkpoint {str(checkpoint)!r} was made for another run ({diff}); "
                         f"delete it or pass another path")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.method.load_state_dict(state["method"])
    for name, o in run.player_opts.items():
        o.load_state_dict(state["players"][name])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    run.g.set_state(state["generator"])
    history, run.best_state, run.start = state["history"], state["best_state"], state["epoch"] + 1
    run.elapsed = history["time"][-1] if history["time"] else 0.0
    history["batching"] = run.history["batching"]  # this session's; "world_size" keeps each epoch's
    history.setdefault("world_size", [1] * len(history["epoch"]))
    run.history = history
    saved = state.get("rank_rng") or []
    if world.rank and world.rank < len(saved):  # its own stream, from a checkpoint of as many ranks
        rank_state(*saved[world.rank])
    elif world.rank:
        rank_seed(seed, world.rank, run.start)


def epoch_bar(run, progress):
    """A caller's bar over several runs (advanced by this run's epochs), or this run's own."""
    bar = progress if hasattr(progress, "update") else \
        progress_bar(run.args["epochs"], f"fit {type(run.model).__name__} ({type(run.method).__name__})", progress)
    bar.update(run.start)
    return bar


class EpochLog:
    """An epoch's per-step values (the descended loss, each term, each player's terms) and
    predictions, kept on the device: one host sync per epoch, not per step."""

    def __init__(self):
        self.rows, self.predictions, self.labels, self.shares, self.names, self.single = [], [], [], [], None, None

    def add(self, loss, terms, played, logits, batch):
        if played is not None:  # players' terms: after the student's, named "player/term"
            row = [loss.detach(), *terms.values(), *(v for p in played.values() for v in p.values())]
            self.rows.append(torch.stack([v.detach().float() for v in row]))
            self.names = self.names or ["loss", *terms, *(f"{n}/{k}" for n, p in played.items() for k in p)]
        elif len(terms) == 1:  # the common case: the one term is the loss (no stack, no copy)
            self.rows.append(loss.detach().float())
            self.names = self.names or ["loss"]
            self.single = next(iter(terms))
        else:
            self.rows.append(torch.stack([loss.detach(), *(v.detach() for v in terms.values())]).float())
            self.names = self.names or ["loss", *terms]
        self.predictions.append(logits.argmax(1))  # compared once per epoch, not per step
        self.labels.append(batch.y)

    def values(self, run):
        """``(steps, values)`` of the epoch and its correct predictions; under torchrun the global
        batches' (each rank's weighted by its share), the same on every rank."""
        values = torch.stack(self.rows)
        values = values[:, None] if values.dim() == 1 else values
        correct = (torch.cat(self.predictions) == torch.cat(self.labels)).sum()
        if run.ddp is not None:  # every rank logs (and NaN-checks) the global batches' values
            values, correct = global_values(values, self.shares, correct)
        return values, correct


def student_step(run, batch, log):
    """One step of the student (and the method's own parts) on ``batch``: ``(logits, loss, terms,
    weight)``; ``weight`` scales a rank's share of the global batch under torchrun."""
    with autocast(run.device):
        logits, terms = run.method.forward_train(run.model, batch) if run.ddp is None else run.ddp(batch)
    loss = descended(terms)
    run.opt.zero_grad(set_to_none=True)
    weight = 1
    if run.ddp is None:
        loss.backward()
    else:
        # Each rank's loss is a mean over its share; weighted by share × ranks, DDP's
        # average over ranks is the mean over the global batch, a short last one too.
        batch_size = run.args["batch_size"]
        n = min(batch_size, len(run.y) - len(log.rows) * batch_size)
        log.shares.append(len(batch.y) / n)
        weight = log.shares[-1] * run.world.size
        (loss if weight == 1 else loss * weight).backward()
    run.opt.step()
    run.sched.step()
    return logits, loss, terms, weight


def player_steps(run, batch, logits, weight):
    """Each player's updates after the student's step, on its detached logits (a player never
    descends the student's loss): ``{player: its last terms}``, or None without players."""
    if not run.players:
        return None
    played = {}
    for name, player in run.players.items():
        for _ in range(player.steps):
            with autocast(run.device):
                terms = run.method.player_losses(name, batch, logits.detach())
            run.player_opts[name].zero_grad(set_to_none=True)  # drops what the student's loss put there
            if run.ddp is None:
                descended(terms).backward()
            else:
                (descended(terms) * weight).backward()
                devices.average_gradients(player.parameters(), run.world.size)
            run.player_opts[name].step()
            player.after_step()
        played[name] = terms
    return played


def guard(run, values, names, epoch):
    """Stop at the first non-finite value of the epoch (:func:`check_finite`)."""
    check_finite(values, names, epoch, run.steps_per_epoch, run.history, run.opt)


def validate(run):
    """Validation accuracy (every rank its share under torchrun); NaN without a validation split."""
    data = run.data
    if not len(data.y_val):
        return float("nan")
    return evaluate(run.model, data.x_val, data.y_val) if run.ddp is None else \
        evaluate_shared(run.model, data.x_val, data.y_val, run.world)


def record(run, epoch, values, log, correct, val_acc):
    """The epoch's means, accuracies, learning rate and time, appended to the history."""
    history = run.history
    means = values.mean(0).tolist()
    history["epoch"].append(epoch)
    history["loss"].append(means[0])
    logged = {log.single: means[0]} if len(log.names) == 1 else dict(zip(log.names[1:], means[1:]))
    for k, v in logged.items():
        history["terms"].setdefault(k, []).append(v)
    history["train_acc"].append(correct.item() / len(run.y))
    history["world_size"].append(run.world.size)
    history["val_acc"].append(val_acc)
    history["lr"].append(run.opt.param_groups[0]["lr"])
    history["time"].append(run.elapsed)


def keep_best(run, epoch, val_acc):
    """Select: the best validation epoch's weights (``select="best"``), or the last epoch."""
    select, history = run.args["select"], run.history
    if select == "last" or val_acc > history["best_val_acc"]:
        history["best_epoch"], history["best_val_acc"] = epoch, val_acc
        if select == "best":  # "last" ends with the model as it is: no copy to keep
            run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def save_checkpoint(run, epoch, checkpoint):
    """Everything a resumed run needs, saved atomically by rank 0 (each rank's RNG gathered)."""
    rank_rng = devices.gather_objects(rank_state()) if checkpoint and run.ddp is not None else None
    if checkpoint and run.world.main:
        store.save({"model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
                    "scheduler": run.sched.state_dict(), "method": run.method.state_dict(),
                    "players": {k: o.state_dict() for k, o in run.player_opts.items()},
                    "rng": torch.get_rng_state(), "generator": run.g.get_state(), "epoch": epoch,
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "history": run.history, "best_state": run.best_state, "fit_config": run.fit_config,
                    **({"rank_rng": rank_rng} if rank_rng else {})}, checkpoint)


def finish(run, bar, progress):
    """Close this run's own bar, load the selected weights; the model ends in train mode."""
    if not hasattr(progress, "update"):
        bar.close()
    if run.args["select"] == "best" and run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    run.model.train()
    return run.history


def global_values(values, shares, correct):
    """The epoch's logged values as the global batches' (each rank's weighted by its share), and
    the correct predictions of all ranks: one all-reduce."""
    weighted = values.double() * torch.tensor(shares, dtype=torch.float64, device=values.device)[:, None]
    flat = devices.all_reduce_sum(torch.cat([weighted.flatten(), correct.double().reshape(1)]))
    return flat[:-1].view_as(values).float(), flat[-1].round().long()


def rank_state(cpu=None, cuda=None):
    """This rank's RNG state, or with arguments set it."""
    if cpu is None:
        return (torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
    torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def rank_seed(seed, rank, epoch):
    torch.manual_seed(hash((seed, rank, epoch)) & (2 ** 63 - 1))  # ints hash alike in every process


def check_finite(values, names, epoch, steps_per_epoch, history, opt):
    """Stop at the first non-finite term of an epoch, naming the term (and the player) and the step."""
    finite = torch.isfinite(values)
    if finite.all():
        return
    step = int((~finite).any(1).nonzero()[0])
    bad = (~finite[step]).nonzero().flatten().tolist()
    col = next((c for c in bad if c > 0), bad[0])  # name the term, not just the sum it spoils
    name = names[col]
    whose = f"player {name.split('/')[0]!r}'s term {name.split('/')[1]!r}" if "/" in name else \
        ("the student's loss" if col == 0 else f"the student's term {name!r}")
    last = values[:step, col][finite[:step, col]]
    last = f"{last[-1].item():.4g}" if len(last) else ("none this epoch; previous epoch mean "
                                                     f"{history['loss'][-1]:.4g}" if history["loss"] else "none")
    raise NonFiniteLoss(f"loss became non-finite at step {step} of epoch {epoch} (global step "
                        f"{epoch * steps_per_epoch + step}): {whose}; last finite loss {last}, "
                        f"lr {opt.param_groups[0]['lr']:.3g}. Lower lr or check the inputs.")
