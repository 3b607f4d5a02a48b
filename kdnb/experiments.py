"""The experiments the chapters share, as plain functions over the profile: the cached
teacher, and students trained over several seeds with one objective or another."""
from dataclasses import dataclass

from . import profiles
from .teachers import TeacherCache
from .data import load
from .train import evaluate, trained


def teacher(profile=None, data=None):
    """The profile's teacher, trained once and then loaded from the cache.
    Returns ``(model, history, data)``; the model is in eval mode."""
    p = profiles.get(profile)
    data = data or load(p.data)
    model, history = trained(p.teacher, data, epochs=p.teacher_epochs, batch_size=p.batch_size, lr=p.lr,
                             progress=False, **p.extra.get("teacher_fit", {}))
    return model, history, data


def teacher_outputs(teacher_model, data):
    """The teacher's logits on every training sample, looked up by index during training."""
    return TeacherCache.compute(teacher_model, data.x_train)


def students(data, objective=None, spec=None, seeds=(0, 1, 2), profile=None, test_data=None, **fit_kwargs):
    """Train one student per seed (cached); returns ``{"test_acc": [...], "histories": [...],
    "models": [...]}``. ``objective`` is an objective or a function ``seed -> objective``.
    Accuracy is on ``test_data`` (default ``data``)'s test split, read once after training."""
    p = profiles.get(profile)
    spec = spec or p.student
    kwargs = {"epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr, "progress": False, **fit_kwargs}
    test_data = test_data or data
    out = {"test_acc": [], "histories": [], "models": []}
    for seed in seeds:
        obj = objective(seed) if callable(objective) and not hasattr(objective, "forward") else objective
        model, history = trained(spec, data, obj, seed=seed, **kwargs)
        out["test_acc"].append(evaluate(model, test_data.x_test, test_data.y_test))
        out["histories"].append(history)
        out["models"].append(model)
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
        fit_args = {"epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr, "progress": False}
        return GridPair(data, teacher_outputs(model, data), p.student, fit_args)
    data = load(cifar["data"], root=root)
    model, _ = trained(cifar["teacher"], data, progress=False, **cifar["teacher_fit"])
    return GridPair(data, model.eval(), cifar["student"], {**cifar["student_fit"], "progress": False})
