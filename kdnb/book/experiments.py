"""The experiments the chapters share, as plain functions over the profile: the cached teacher,
the labelled split and its transfer set, and students trained over several seeds with one method
or another, all on the same step budget."""
import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import cached, data as datasets, device

from . import profiles, settings
from ..data import load
from ..teachers import TeacherCache
from ..teachers import predict
from ..cached import trained
from ..train import evaluate, progress_bar


def teacher(profile=None, data=None, progress=None):
    """The profile's teacher, trained once and then loaded from the cache.
    Returns ``(model, history, data)``; the model is in eval mode."""
    p = profiles.get(profile)
    data = data or load(p.data, seed=p.seed(0))
    bar = progress_bar(p.teacher_epochs, f"teacher {p.teacher['name']} on {data.name}", progress)
    model, history = trained(p.teacher, data, epochs=p.teacher_epochs, batch_size=p.batch_size, lr=p.teacher_lr,
                             seed=p.seed(0), progress=bar, **p.extra.get("teacher_fit", {}))
    bar.close()
    return model, history, data


def teacher_outputs(teacher_model, data):
    """The teacher's logits on every training sample, looked up by index during training;
    under torchrun computed once, on rank 0, and sent to the other ranks."""
    return device.shared(lambda: TeacherCache.compute(teacher_model, data.x_train))


def transfer_seed(profile=None):
    """The generator seed of a profile's MNIST-1D transfer set: 1, shifted by the seed offset
    (stepping over the seeds of the embedded training and evaluation signals)."""
    s = profiles.get(profile).seed(1)
    return s + 2 if s in (datasets.MNIST1D_SEED, datasets.MNIST1D_EVAL_SEED) else s


def transfer_split(data, profile=None):
    """``(labelled, transfer)``: the labelled training split, and a transfer set for a teacher to
    label. MNIST-1D: all its signals labelled, and the transfer set adds ``profile.transfer_set``
    fresh ones from its generator. Image sets: a ``labelled_fraction`` of the training images is
    labelled; the transfer set is every training image (their labels ride along for the controls
    that use them, and a method with ``labels=False`` never shows them to the student)."""
    p = profiles.get(profile)
    if data.name == "mnist1d":
        return data, datasets.with_transfer_set(data, p.transfer_set, seed=transfer_seed(p))
    return data.subset(p.labelled_fraction), data


def students(data, method=None, spec=None, seeds=None, profile=None, test_data=None, steps=None, desc=None,
             progress=None, **fit_kwargs):
    """Train one student per seed (cached) for ``steps`` optimiser steps (default: the profile's
    budget on ``test_data``'s training split, so students on a bigger transfer set take fewer epochs,
    not more steps); returns ``{"test_acc", "histories", "models", "epochs", "steps"}``.
    ``method`` is a method or a function ``seed -> method``. Accuracy is on ``test_data`` (default
    ``data``)'s test split, read once after training. One progress bar for all the seeds."""
    p = profiles.get(profile)
    spec = spec or p.student
    seeds = p.seeds if seeds is None else seeds
    test_data = test_data or data
    batch_size = fit_kwargs.get("batch_size", p.batch_size)
    steps = steps or p.steps(len(test_data.y_train))
    epochs = profiles.epochs_for(len(data.y_train), steps, batch_size)
    kwargs = {"epochs": epochs, "batch_size": p.batch_size, "lr": p.lr, **fit_kwargs}
    name = desc or ("CrossEntropy" if method is None else type(method).__name__ if isinstance(method, nn.Module)
                    else "students")
    bar = progress_bar(len(seeds) * kwargs["epochs"], f"{len(seeds)} students: {name}", progress)
    out = {"test_acc": [], "histories": [], "models": [], "epochs": kwargs["epochs"],
           "steps": kwargs["epochs"] * -(-len(data.y_train) // kwargs["batch_size"])}
    for seed in seeds:
        m = method(seed) if callable(method) and not hasattr(method, "forward") else method
        model, history = trained(spec, data, m, seed=seed, progress=bar, **kwargs)
        out["test_acc"].append(evaluate(model, test_data.x_test, test_data.y_test))
        out["histories"].append(history)
        out["models"].append(model)
    bar.close()
    return out


@dataclass
class GridPair:
    """What chapter 3's α × T grid trains: the data, the teacher (cached logits, or the model when
    batches are augmented), the student's model spec and ``fit``'s arguments."""
    data: object
    teacher: object
    student: dict
    fit_args: dict


def distill_pair(profile=None, root=None):
    """A teacher *model* and its student, as a :class:`GridPair`: the quick profile's convnet and
    MLP on MNIST-1D; the full profile's is seed 001's CIFAR-10 pair (ResNet-18 → 6 conv + BN + 2
    FC; SGD, cosine, augmented). ``fit_args["epochs"]`` over the training split is the budget."""
    p = profiles.get(profile)
    cifar = p.extra.get("seed001_cifar")
    if not cifar:
        model, _, data = teacher(p)
        return GridPair(data, model, p.student, {"epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr})
    data = load(cifar["data"], root=root)
    bar = progress_bar(cifar["teacher_fit"]["epochs"], "teacher resnet18_cifar on cifar10")
    model, _ = trained(cifar["teacher"], data, progress=bar, **cifar["teacher_fit"])
    bar.close()
    return GridPair(data, model.eval(), cifar["student"], dict(cifar["student_fit"]))


def grid_pair(profile=None, root=None):
    """The quick profile's pair with its teacher's logits cached; the full profile's is seed 001
    exp 2's CIFAR-10 pair (ResNet-18 → 6 conv + BN + 2 FC), augmented, so the teacher runs live."""
    pair = distill_pair(profile, root)
    if not pair.fit_args.get("augment"):
        pair.teacher = teacher_outputs(pair.teacher, pair.data)
    return pair


def budget(pair, n):
    """The step budget of ``pair``: its epochs over ``n`` training samples."""
    return pair.fit_args["epochs"] * math.ceil(n / pair.fit_args["batch_size"])


def epochs_for(pair, n, steps):
    """Whole epochs over ``n`` samples closest to ``steps`` steps (at least one): step matching."""
    return profiles.epochs_for(n, steps, pair.fit_args["batch_size"])


def teacher_on(pair, data):
    """What a teacher-based method reads on ``data``: the teacher's logits on its training split,
    looked up by index, or, when batches are augmented, the teacher model itself (run live)."""
    return pair.teacher if pair.fit_args.get("augment") else teacher_outputs(pair.teacher, data)


def stacked(pair, pool, runs, steps, seeds=None, progress=None, teachers=None):
    """Students of ``pair`` for every run and seed, step-matched, trained as one stacked grid
    (``kdnb.cached.trained_grid``, cached). ``runs`` is ``{name: {"alpha", "T"}}`` with, each
    optionally, ``"train"`` (indices into ``pool``'s training split; default all of it),
    ``"labels"`` (``"teacher"``: the teacher's argmax) and ``"steps"`` (default ``steps``): Hinton
    KD from ``pair``'s teacher at (α, T) on those samples, about ``steps`` steps in whole epochs.
    ``teachers`` (``{name: logits on pool's training split}``, e.g. :func:`bank_tables`) replaces
    ``pair``'s teacher; a run then names the table it learns from as ``"teacher"``.
    Returns ``{name: {"test_acc", "models", "histories", "epochs", "steps"}}``, seeds in order."""
    seeds = profiles.get().seeds if seeds is None else seeds
    tables = list(teachers or {})
    batch, members, names = pair.fit_args["batch_size"], [], []
    for name, run in runs.items():
        n = len(pool.y_train) if run.get("train") is None else len(run["train"])
        epochs = profiles.epochs_for(n, run.get("steps", steps), batch)
        if teachers and run.get("teacher", tables[0]) not in tables:
            raise ValueError(f"runs[{name!r}]: teacher must name one of the tables {tables}, got {run['teacher']!r}")
        which = {"teacher": tables.index(run.get("teacher", tables[0]))} if teachers else {}
        for seed in seeds:
            members.append({**run, **which, "seed": seed, "epochs": epochs})
            names.append(name)
    members = [{k: v for k, v in m.items() if k != "steps"} for m in members]
    fit = {k: v for k, v in pair.fit_args.items() if k != "epochs"}
    teacher = [teachers[k] for k in tables] if teachers else teacher_on(pair, pool)
    grid = cached.trained_grid(pair.student, pool, teacher, members, progress=progress, **fit)
    out = {}
    for name, m, model, h in zip(names, members, grid.models, grid.histories):
        n = len(pool.y_train) if m.get("train") is None else len(m["train"])
        r = out.setdefault(name, {"test_acc": [], "models": [], "histories": [], "epochs": m["epochs"],
                                  "steps": m["epochs"] * math.ceil(n / batch)})
        r["test_acc"].append(evaluate(model, pool.x_test, pool.y_test))
        r["models"].append(model)
        r["histories"].append(h)
    return out


def bank_tables(teacher_model, bank):
    """The teacher's logits on every row of a bank of views (``kdnb.augment.view_bank``), looked
    up by (sample, view): ``"consistent"``, on the very view the student sees, and ``"fixed"``, on
    the row's own sample (view 0), as a target computed once per sample would be."""
    consistent = device.shared(lambda: TeacherCache.compute(teacher_model, bank.data.x_train)).logits
    return {"consistent": consistent, "fixed": consistent[bank.samples]}  # rows [0, n): view 0


@dataclass
class Patient:
    """Chapter 2b's setting, for the chapters that build on it: the profile's teacher and data, a
    bank of views of the training split (``kdnb.augment.view_bank``) with the teacher's tables on
    it (:func:`bank_tables`), the pair to train students of, and the short and long budgets
    (whole passes over the bank: the book's usual budget, and four times as many steps)."""
    teacher: object
    data: object
    bank: object
    tables: dict
    pair: GridPair
    short: int
    long: int


def patient(profile=None):
    """The :class:`Patient` setting of ``profile`` (its teacher trained once, then cached)."""
    from .. import augment
    p = profiles.get(profile)
    its = settings.chapter("patient", p.name)
    model, _, data = teacher(p)
    bank = augment.view_bank(data, augment.default_views(data), views=its["views"], seed=p.seed(0))
    pair = GridPair(bank.data, model, p.student, {"batch_size": p.batch_size, "lr": p.lr})
    short = bank.steps_for(p.steps(bank.n), p.batch_size)
    return Patient(model, data, bank, bank_tables(model, bank), pair, short, its["patience"] * short)


def fidelity(students, teacher_model, data):
    """How closely each of ``students`` matches its teacher on ``data``'s test split (Stanton et al.
    2021), one dict each: ``{"agreement": share of test inputs where their top-1 classes agree,
    "kl": mean KL(teacher ‖ student) at T = 1, in nats}``. The teacher's test logits are computed
    once for all of them."""
    import torch.nn.functional as F
    zt = predict(teacher_model, data.x_test).cpu()
    out = []
    for student in students:
        zs = predict(student, data.x_test).cpu()
        kl = F.kl_div(F.log_softmax(zs, 1), F.log_softmax(zt, 1), log_target=True, reduction="batchmean")
        out.append({"agreement": (zs.argmax(1) == zt.argmax(1)).float().mean().item(), "kl": kl.item()})
    return out


def raised_bias(model, data, c, shifts=None):
    """Hinton et al.'s bias correction for a class ``c`` a student never saw in training: add
    ``shift`` to its logit, with the shift chosen for the best *validation* accuracy (never test).
    Returns ``{"shift", "val_acc", "test_acc", "class_acc"}`` after the shift and the same
    ``*_before`` it; ``class_acc`` is the test accuracy on the samples of class ``c``."""
    shifts = torch.arange(0, 20.01, 0.25) if shifts is None else torch.as_tensor(shifts, dtype=torch.float32)
    (zv, yv), (zt, yt) = [(predict(model, x).cpu(), y) for x, y in (data.split("val"), data.split("test"))]
    bump = torch.zeros(data.classes)
    bump[c] = 1

    def acc(z, y, shift, only=None):
        right = (z + shift * bump).argmax(1) == y
        return right[y == only].float().mean().item() if only is not None else right.float().mean().item()

    val = [acc(zv, yv, s) for s in shifts.tolist()]
    best = shifts[max(range(len(val)), key=val.__getitem__)].item()  # the first of equal ones: the smallest
    return {"shift": best, "val_acc": acc(zv, yv, best), "test_acc": acc(zt, yt, best),
            "class_acc": acc(zt, yt, best, c), "val_acc_before": acc(zv, yv, 0.0),
            "test_acc_before": acc(zt, yt, 0.0), "class_acc_before": acc(zt, yt, 0.0, c)}
