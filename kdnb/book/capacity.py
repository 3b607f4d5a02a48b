"""The capacity gap (chapter 6): a ladder of convnets of 2 to 10 conv layers, teachers and
students of each other, and teacher → assistant → student chains (Mirzadeh et al. 2020, TAKD).

Every stage of every path is a :mod:`kdnb.chains` stage, so each is cached on its own: a path
``(10, 6, 2)`` for seed ``s`` trains the 10-layer teacher from scratch (or takes it from the
cache), distils the 6-layer assistant from it and the 2-layer student from that; ``(10, 8, 2)``
then retrains only what differs. Teachers are trained once per size, from their own seed and for
longer (``teacher_epochs``); assistants and students from the seed ``s``, so students of one
size compared across paths share their initial weights and batches (paired differences).

The profile's settings are :data:`kdnb.book.settings.CAPACITY` (read with :func:`settings`). Their seeds are
offsets: :func:`settings` passes them through the profile (``$KDNB_SEED_OFFSET``), so a rerun
with another offset draws fresh teachers, assistants and students.
"""
import torch

from . import profiles, settings as registry
from ..chains import Link, Root, chain, teacher_of
from ..checks import check_alpha, check_T, check_positive_int
from ..data import load
from ..losses import soft_targets
from ..methods import Distill
from ..teachers import predict
from ..cached import trained
from ..train import progress_bar

def settings(profile=None):
    """The chapter's settings for ``profile`` (default: ``kdnb.book.profiles.get()``): a copy of
    :data:`kdnb.book.settings.CAPACITY` for its name, its seeds shifted by the profile's seed offset: ``seeds``, the
    number of students per path there, becomes ``profile.seed_list(seeds)`` and ``teacher_seed``
    ``profile.seed(teacher_seed)``. ``$KDNB_SMOKE=1`` trains one epoch, as ``profiles.get`` does."""
    p = profiles.get(profile)
    s = registry.chapter("capacity", p.name)
    return {**s, "seeds": p.seed_list(s["seeds"]), "teacher_seed": p.seed(s["teacher_seed"])}


def spec(depth, profile=None):
    """The ladder's model spec with ``depth`` conv layers."""
    check_positive_int("depth", depth)
    return {**settings(profile)["spec"], "depth": depth}


def check_path(path):
    if isinstance(path, (str, bytes)) or not hasattr(path, "__iter__"):
        raise TypeError(f"path must be a sequence of depths, teacher first, got {path!r}")
    path = tuple(path)
    if not path:
        raise ValueError("path must hold at least one depth (the teacher's), got ()")
    for d in path:
        check_positive_int("path depth", d)
    return path


def teacher(depth, data, *, profile=None, progress=None):
    """The ``depth``-layer teacher: cross-entropy from the settings' ``teacher_seed``, for
    ``teacher_epochs``, as a :class:`~kdnb.chains.Root` (a path's first stage). ``(model, history)``."""
    s = settings(profile)
    return teacher_root(depth, profile).train(data, progress=progress, **s["fit"])


def teachers(depths, data, *, profile=None, desc="teachers", progress=None):
    """:func:`teacher` of every depth under one progress bar: ``{depth: model}``, ``{depth: history}``."""
    s = settings(profile)
    depths = [check_positive_int("depth", d) for d in depths]
    bar = progress_bar(len(depths) * s["teacher_epochs"], desc, progress)
    out = {d: teacher(d, data, profile=profile, progress=bar) for d in depths}
    bar.close()
    return {d: m for d, (m, _) in out.items()}, {d: h for d, (_, h) in out.items()}


def teacher_root(depth, profile=None):
    s = settings(profile)
    return Root(spec(depth, profile), seed=s["teacher_seed"], fit={"epochs": s["teacher_epochs"]})


def baselines(depths, data, *, seeds=None, profile=None, desc="no KD", progress=None):
    """Students of each depth trained with cross-entropy alone, one per seed, on the students'
    budget: ``{depth: [model per seed]}`` and ``{depth: [history per seed]}``."""
    s = settings(profile)
    seeds = s["seeds"] if seeds is None else tuple(seeds)
    depths = [check_positive_int("depth", d) for d in depths]
    bar = progress_bar(len(seeds) * len(depths) * s["fit"]["epochs"], desc, progress)
    models, histories = {}, {}
    for d in depths:
        for seed in seeds:
            model, history = trained(spec(d, profile), data, seed=seed, progress=bar, **s["fit"])
            models.setdefault(d, []).append(model)
            histories.setdefault(d, []).append(history)
    bar.close()
    return models, histories


def run_path(path, seed, data, alpha, T, *, profile=None, progress=None, _stages=None):
    """One chain of the ladder, in one call: the ``path[0]``-layer teacher (:func:`teacher`),
    then each later depth distilled from the one before at ``alpha`` and ``T``, started from
    ``seed``. Returns ``[(model, history), ...]``, one per depth of ``path``."""
    path = check_path(path)
    if len(path) < 2:
        raise ValueError(f"path must hold a teacher's depth and at least one student's, got {path!r}")
    check_alpha(alpha)
    check_T(T)
    s = settings(profile)
    links = [Link(spec(d, profile), T=float(T), alpha=float(alpha), seed=seed) for d in path[1:]]
    if _stages is None:
        return chain(teacher_root(path[0], profile), data, links, progress=progress, **s["fit"])
    # run_paths: stages that paths share (a prefix, for this seed) are trained or loaded once,
    # and each teacher's logits on the training split computed once (what chain would redo)
    key = (path[:1],)
    if key not in _stages:
        model, history = teacher_root(path[0], profile).train(data, progress=progress, **s["fit"])
        _stages[key] = (model, history, teacher_of(model, data, s["fit"].get("augment")))
    elif hasattr(progress, "update"):
        progress.update(len(_stages[key][1]["epoch"]))
    out = [_stages[key][:2]]
    for i, link in enumerate(links):
        teacher, key = _stages[key][2], (path[:i + 2], seed)
        if key not in _stages:
            method = Distill(teacher, link.T, link.alpha)
            model, history = trained(link.spec, data, method, seed=link.seed, progress=progress, **s["fit"])
            _stages[key] = (model, history, teacher_of(model, data, s["fit"].get("augment")))
        elif hasattr(progress, "update"):
            progress.update(len(_stages[key][1]["epoch"]))
        out.append(_stages[key][:2])
    return out


def run_paths(paths, data, alpha, T, *, seeds=None, profile=None, desc="paths", progress=None):
    """:func:`run_path` for every path and seed under one progress bar. Returns ``{path: [the
    last model of each seed]}`` and ``{path: [its history for each seed]}``. A stage that several
    paths share is trained (or loaded from the cache) once, as are its logits."""
    s = settings(profile)
    seeds = s["seeds"] if seeds is None else tuple(seeds)
    paths = [check_path(p) for p in paths]
    # a cached stage advances the bar by its epochs too, the teacher's included
    epochs = sum(s["teacher_epochs"] + (len(p) - 1) * s["fit"]["epochs"] for p in paths)
    bar = progress_bar(len(seeds) * epochs, desc, progress)
    models, histories, stages = {}, {}, {}
    for p in paths:
        for seed in seeds:
            model, history = run_path(p, seed, data, alpha, T, profile=profile, progress=bar,
                                      _stages=stages)[-1]
            models.setdefault(p, []).append(model)
            histories.setdefault(p, []).append(history)
    bar.close()
    return models, histories


def load_data(profile=None, root=None):
    """The ladder's data set."""
    return load(settings(profile)["data"], root=root)


def mean_entropy(logits, T=1.0):
    """Mean entropy (nats) of ``softmax(logits / T)`` over the rows: how soft soft targets are."""
    p = soft_targets(logits.float(), check_T(T))
    return -(p * p.clamp_min(1e-30).log()).sum(1).mean().item()


def outputs(model, x):
    """``model``'s logits on ``x``; a tensor is taken as those logits already computed."""
    return model if isinstance(model, torch.Tensor) else predict(model, x)


def agreement(student, teacher, x):
    """Fraction of inputs ``x`` on which the two models predict the same class (top-1). Either
    may be given as its logits on ``x`` (a teacher's, computed once for many students)."""
    a, b = outputs(student, x).argmax(1), outputs(teacher, x).argmax(1)
    return (a == b.to(a.device)).float().mean().item()


def soft_kl(student, teacher, x, T):
    """Mean KL(teacher_T || student_T) on ``x`` (nats): how far a student is from its teacher's
    soft targets at temperature ``T``. Either may be given as its logits on ``x``."""
    log_s = torch.log_softmax(outputs(student, x).float() / check_T(T), 1)
    log_t = torch.log_softmax(outputs(teacher, x).float().to(log_s.device) / T, 1)
    return (log_t.exp() * (log_t - log_s)).sum(1).mean().item()


def receptive_field(model):
    """How many input samples (per axis) one output of the model's last conv layer sees, walking
    its convs and pools in order (the global pool after them sees everything they see)."""
    rf, jump = 1, 1
    for m in model.modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.modules.pooling._MaxPoolNd)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            rf, jump = rf + (k - 1) * jump, jump * s
    return rf
