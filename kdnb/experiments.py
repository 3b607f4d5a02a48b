"""The experiments the chapters share, as plain functions over the profile: the cached teacher,
the labelled split and its transfer set, and students trained over several seeds with one method
or another, all on the same step budget."""
from dataclasses import dataclass

from torch import nn

from . import data as datasets, profiles
from .data import load
from .teachers import TeacherCache
from .train import evaluate, progress_bar, trained


def teacher(profile=None, data=None, progress=None):
    """The profile's teacher, trained once and then loaded from the cache.
    Returns ``(model, history, data)``; the model is in eval mode."""
    p = profiles.get(profile)
    data = data or load(p.data)
    bar = progress_bar(p.teacher_epochs, f"teacher {p.teacher['name']} on {data.name}", progress)
    model, history = trained(p.teacher, data, epochs=p.teacher_epochs, batch_size=p.batch_size, lr=p.teacher_lr,
                             progress=bar, **p.extra.get("teacher_fit", {}))
    bar.close()
    return model, history, data


def teacher_outputs(teacher_model, data):
    """The teacher's logits on every training sample, looked up by index during training."""
    return TeacherCache.compute(teacher_model, data.x_train)


def transfer_split(data, profile=None):
    """``(labelled, transfer)``: the labelled training split, and a transfer set for a teacher to
    label. MNIST-1D: all its signals labelled, and the transfer set adds ``profile.transfer_set``
    fresh ones from its generator. Image sets: a ``labelled_fraction`` of the training images is
    labelled; the transfer set is every training image (their labels ride along for the controls
    that use them, and a method with ``labels=False`` never shows them to the student)."""
    p = profiles.get(profile)
    if data.name == "mnist1d":
        return data, datasets.with_transfer_set(data, p.transfer_set)
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
    steps = steps or p.steps(len(test_data.y_train))
    epochs = p.epochs_for(len(data.y_train), steps)
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


def grid_pair(profile=None, root=None):
    """The quick profile's pair with its teacher's logits cached; the full profile's is seed 001
    exp 2's CIFAR-10 pair (ResNet-18 → 6 conv + BN + 2 FC), augmented, so the teacher runs live."""
    p = profiles.get(profile)
    cifar = p.extra.get("seed001_cifar")
    if not cifar:
        model, _, data = teacher(p)
        fit_args = {"epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr}
        return GridPair(data, teacher_outputs(model, data), p.student, fit_args)
    data = load(cifar["data"], root=root)
    bar = progress_bar(cifar["teacher_fit"]["epochs"], "teacher resnet18_cifar on cifar10")
    model, _ = trained(cifar["teacher"], data, progress=bar, **cifar["teacher_fit"])
    bar.close()
    return GridPair(data, model.eval(), cifar["student"], dict(cifar["student_fit"]))
