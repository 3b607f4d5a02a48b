"""An α × T grid of students trained as one model: ``fit_grid(student, data, teacher, members)``.

Trained one after another, small students spend most of each step on per-step overhead
(Python, autograd bookkeeping, the optimizer's loop over tensors), not arithmetic. Here every
member's weights are stacked along a leading axis (``torch.func.stack_module_state``) and one
step runs the forward of all members at once (``vmap`` over ``functional_call``), one backward
of the summed losses (each member's gradient depends on its own loss only) and one optimizer
step over the stacked tensors (Adam and SGD act element-wise, so this is each member's own
optimizer). The loss is any :class:`~kdnb.methods.Stackable` (Hinton's by default: each
member its own α and T); each member has its own parameters of it and initial-weight seed, and
may have its own training samples, labels (true, or the teacher's argmax), epochs and teacher; it
ends with the weights of its best validation epoch, exactly as ``kdnb.train.fit`` with the
loss's method (``Distill(TeacherCache(teacher_logits), T, alpha)``) on its samples would leave
it — tests/test_sweep.py checks that to float tolerance. Members on training sets of different sizes
but one step budget (chapter 4's fractions and transfer sets) stack too: their batches are padded
to one length, and the padding carries no loss and no gradient.

Where stacking doesn't pay (wide layers: each matrix product already keeps the cores busy) the
members are trained one by one with ``fit`` instead, with a warning; ``bench/sweep.py`` measures
where that is.
"""
import copy
import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import losses, models, store
from .device import autocast, default_device, fits_on
from .methods import Stackable, StackedHinton
from .teachers import TeacherCache, logits_of, predict
from .train import NonFiniteLoss, check_fit_args, fit, new_history, optimiser, progress_default

# What a member may add, each defaulting to the grid's: its own training samples ("train": indices
# into data's training split), whose labels it learns ("labels": "true", or "teacher": the
# teacher's argmax, the hard-label control), its own "epochs", and its own "teacher" (an index
# into a list of teachers).
MEMBER_OPTIONS = ("train", "labels", "epochs", "teacher")
LABELS = ("true", "teacher")
# Above this many forward FLOPs per member per step, stacking is no faster than one model at a time
# on a CPU: each matrix product already keeps the core busy. bench/sweep.py --widths (8 members, one
# thread, shared machine) measured 1.5-1.9x at 2e7 FLOPs (40-256-256-10), 0.8-1.2x at 1.7e8
# (40-800-800-10) and 0.7-1.0x at 3.8e8 (40-1200-1200-10). The full profile's 784-800-800-10: 3.3e8.
SEQUENTIAL_ABOVE_FLOPS = 1e8


def grid(alphas, Ts, seeds=(0,)):
    """Member dicts for every (seed, alpha, T), seeds outermost: ``grid([0, .5], [1, 4])``."""
    return [{"alpha": a, "T": T, "seed": s} for s in seeds for a in alphas for T in Ts]


@dataclass
class GridResult:
    """What ``fit_grid`` returns. ``histories[i]`` and ``models[i]`` belong to ``members[i]``;
    ``vectorized`` says whether the members were stacked or trained one by one, ``note`` why."""
    members: list
    histories: list
    models: list
    vectorized: bool
    note: str
    wall_time: float

    def index(self, alpha, T, seed=0):
        for i, m in enumerate(self.members):
            if m["alpha"] == alpha and m["T"] == T and m["seed"] == seed:
                return i
        raise KeyError(f"no member with alpha={alpha!r}, T={T!r}, seed={seed!r} in this grid")

    def history(self, alpha, T, seed=0):
        return self.histories[self.index(alpha, T, seed)]

    def rows(self):
        """One flat dict per member (α, T, seed, best validation accuracy and epoch, last loss;
        ``train`` as its number of samples), ready for ``pandas.DataFrame``."""
        return [{**{k: (len(v) if k == "train" else v) for k, v in m.items()}, "best_val_acc": h["best_val_acc"], "best_epoch": h["best_epoch"],
                 "final_loss": h["loss"][-1], "final_train_acc": h["train_acc"][-1]}
                for m, h in zip(self.members, self.histories)]


def stackable(loss):
    """The stacked loss: Hinton's by default; anything else must be a :class:`~kdnb.methods.Stackable`."""
    if loss is None:
        return StackedHinton()
    if not isinstance(loss, Stackable):
        raise TypeError(f"loss must be a kdnb.methods.Stackable (StackedHinton, or one of your own), "
                        f"got {type(loss).__name__}")
    return loss


def check_members(members, n_train=None, teachers=1, loss=None):
    loss = stackable(loss)
    keys = (*loss.params, "seed")
    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError(f"members must be a non-empty list of {{{', '.join(map(repr, keys))}}} dicts "
                         f"(kdnb.sweep.grid makes one), got {members!r}")
    for i, m in enumerate(members):
        where = f"members[{i}] = {m!r}"
        if not isinstance(m, dict) or not set(keys) <= set(m) or set(m) - set(keys) - set(MEMBER_OPTIONS):
            raise ValueError(f"{where}: a member must be a dict with exactly the keys {', '.join(keys)}, and "
                             f"optionally {', '.join(MEMBER_OPTIONS)}")
        try:
            loss.check(m)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None
        if isinstance(m["seed"], bool) or not isinstance(m["seed"], int) or m["seed"] < 0:
            raise ValueError(f"{where}: seed must be a non-negative integer, got {m['seed']!r}")
        idx = m.get("train")
        if idx is not None:
            if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1 or not len(idx):
                raise ValueError(f"members[{i}]: train must be a non-empty 1-D int64 tensor of indices into "
                                 f"data's training split, got {idx!r}")
            if n_train is not None and (idx.min() < 0 or idx.max() >= n_train):
                raise ValueError(f"members[{i}]: train must hold indices in [0, {n_train - 1}], got values in "
                                 f"[{idx.min().item()}, {idx.max().item()}]")
        if m.get("labels", "true") not in LABELS:
            raise ValueError(f"{where}: labels must be one of {', '.join(map(repr, LABELS))}, got {m['labels']!r}")
        if "epochs" in m:
            try:
                models.check_positive_int("epochs", m["epochs"])
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from None
        t = m.get("teacher", 0)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < teachers:
            raise ValueError(f"{where}: teacher must be an index into the {teachers} teacher(s) given, "
                             f"in [0, {teachers - 1}], got {t!r}")


def member_size(m, n_train):
    return n_train if m.get("train") is None else len(m["train"])


def member_steps(m, n_train, epochs, batch_size):
    return m.get("epochs", epochs) * math.ceil(member_size(m, n_train) / batch_size)


def stacks(members, n_train, epochs, batch_size, schedule, most=None):
    """Member indices in stacks of similar step counts: a stack runs as long as its longest
    member, so a member with three times the steps does not keep the others computing. Cosine
    schedules follow the step count: there, only equal counts share a stack."""
    steps = [member_steps(m, n_train, epochs, batch_size) for m in members]
    out = []
    for i in sorted(range(len(members)), key=lambda i: steps[i]):
        s, first = steps[i], out[-1][0] if out else None
        if (out and len(out[-1]) < (most or len(members))
                and (s == steps[first] if schedule == "cosine" else s <= 1.1 * steps[first])):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def teacher_table(teacher_logits, data):
    """The teacher's logits on every training sample, from a tensor, a ``TeacherCache`` or the
    teacher model itself (run once over the training split)."""
    if isinstance(teacher_logits, nn.Module):
        teacher_logits = TeacherCache.compute(teacher_logits, data.x_train)
    logits = teacher_logits.logits if isinstance(teacher_logits, TeacherCache) else teacher_logits
    losses.check_logits("teacher_logits", logits)
    if len(logits) != len(data.y_train) or logits.shape[1] != data.classes:
        raise ValueError(f"teacher_logits must have shape ({len(data.y_train)}, {data.classes}): one row per "
                         f"training sample of {data.name!r}, got {tuple(logits.shape)}")
    return logits.detach().float()


def builder(make_student, data):
    """``seed -> model``: a model spec dict is built by ``kdnb.models.build``; a callable is
    called after ``torch.manual_seed(seed)``, as ``build(..., seed=seed)`` does."""
    if isinstance(make_student, dict):
        return lambda seed: models.build(make_student, data.shape, data.classes, seed=seed)
    if isinstance(make_student, nn.Module):
        raise TypeError(f"make_student must build a fresh student per member (a model spec dict, or a callable "
                        f"such as lambda: kdnb.models.mlp(...)), got the model {type(make_student).__name__} itself")
    if not callable(make_student):
        raise TypeError(f"make_student must be a model spec dict or a callable returning an nn.Module, "
                        f"got {type(make_student).__name__}")

    def build(seed):
        torch.manual_seed(seed)
        model = make_student()
        if not isinstance(model, nn.Module):
            raise TypeError(f"make_student() must return a torch.nn.Module, got {type(model).__name__}")
        return model
    return build


def batch_norm_layer(model):
    """``(name, layer)`` of the model's first batch-norm layer, or None."""
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)),
                None)


def check_vectorisable(model):
    found = batch_norm_layer(model)
    if found:
        name, m = found
        raise ValueError(
            f"fit_grid can't stack a model with {type(m).__name__} (layer {name!r}): in train mode it "
            f"updates running statistics in place, which vmap can't do per member. Build the student "
            f"without it (kdnb.models.convnet(..., norm=False)), use GroupNorm or LayerNorm, or train the "
            f"members one by one with kdnb.train.fit")


def has_dropout(model):
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def step_flops(model, sample, batch_size):
    """Forward FLOPs of one member on one batch, counted in its linear and conv layers (training
    costs about three times this). Hooks, not FlopCounterMode: that one imports torch._dynamo,
    seconds of start-up."""
    flops = []

    def count(layer, inputs, out):
        if isinstance(layer, nn.Linear):
            flops.append(2 * out.numel() * layer.in_features)
        else:
            flops.append(2 * out.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size))

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    was_training = model.training
    model.eval()  # in train mode the probe would move batch norm's running statistics
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sum(flops) * batch_size


def fit_grid(make_student, data, teacher, members, *, epochs=10, batch_size=64, lr=1e-3,
             weight_decay=0.0, optimizer="adam", momentum=0.9, schedule="constant", data_seed=None,
             max_members_per_chunk=None, vectorize="auto", device=None, progress=None, select="best",
             augment=False, loss=None):
    """Train every member ``{"alpha", "T", "seed"}`` of a grid on ``data`` with Hinton KD from
    ``teacher`` (or with any other stackable ``loss``, the member holding its parameters), all at once. ``teacher`` is its logits on every training sample (a
    ``(n_train, classes)`` tensor or a ``TeacherCache``) or the teacher model: its logits are
    then computed once, unless ``augment`` (``fit``'s) is set, when it runs on every augmented
    batch and the members train one by one (stacked members share one batch, so they can't each
    see their own augmentation). A list of teachers is allowed; a member picks one by index.

    A member may also carry its own ``"train"`` (indices into ``data``'s training split: a
    fraction, a transfer set, a set without a class), ``"labels"`` (``"true"``, or ``"teacher"``:
    cross-entropy with the teacher's argmax, at ``alpha`` 0), ``"epochs"`` and ``"teacher"``.
    Member ``i`` then ends exactly as ``fit(student, data.with_train(train), Distill(teacher,
    T, alpha), epochs=epochs, seed=seed)`` would (``TeacherLabels(teacher)`` for
    ``labels="teacher"``), to float tolerance: stacked members whose batches differ in length
    are padded, and the padding carries no loss and no gradient. Members are stacked by step
    count, so a few long runs don't keep the short ones computing.

    ``make_student`` is a model spec dict (``kdnb.book.profiles.get().student``) or a callable that
    returns a fresh student; member ``i`` starts from the weights it gets under
    ``torch.manual_seed(members[i]["seed"])``. Batches are shuffled by ``data_seed``, shared by
    all members; with ``data_seed=None`` each member's batches follow its own seed, exactly as
    ``fit(..., seed=seed)``. The other arguments are ``fit``'s. ``max_members_per_chunk`` trains
    a large grid in chunks of at most that many members (memory grows with the chunk; results
    don't change). ``vectorize``: ``"auto"`` stacks unless the student is too wide for it to pay,
    has batch norm (whose running statistics are per-call state) or ``augment`` is set; ``True``
    always stacks (and says why where it can't); ``False`` trains the members one by one with ``fit``.

    ``loss``: the :class:`~kdnb.methods.Stackable` every member trains with (default
    :class:`~kdnb.methods.StackedHinton`); a member carries its parameters (``loss.params``).

    Returns a :class:`GridResult`: per-member histories (``fit``'s keys; ``time`` is the wall time
    of the member's chunk) and models holding each member's selected weights. With dropout the
    members draw independent masks, so they match ``fit`` in distribution, not bit for bit.
    """
    check_fit_args(nn.Module(), data, epochs, batch_size, lr, weight_decay, optimizer, schedule)  # members come below
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not teachers:
        raise ValueError("teacher must be a teacher, or a non-empty list of them, got []")
    loss = stackable(loss)
    check_members(members, len(data.y_train), len(teachers), loss)
    if select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', got {select!r}")
    if vectorize not in ("auto", True, False):
        raise ValueError(f"vectorize must be 'auto', True or False, got {vectorize!r}")
    if max_members_per_chunk is not None:
        models.check_positive_int("max_members_per_chunk", max_members_per_chunk)
    if data_seed is not None and (isinstance(data_seed, bool) or not isinstance(data_seed, int) or data_seed < 0):
        raise ValueError(f"data_seed must be None or a non-negative integer, got {data_seed!r}")
    if augment and not all(isinstance(t, nn.Module) for t in teachers):
        raise ValueError("augment=True needs the teacher model itself as teacher: cached logits are of "
                         "un-augmented inputs")
    if augment and vectorize is True:
        raise ValueError("augment=True can't be stacked (every member would share one augmented batch); "
                         "use vectorize='auto' or False, which train the members one by one")
    tables = None if augment else [teacher_table(t, data) for t in teachers]  # with augment: run on every batch
    build = builder(make_student, data)
    device = torch.device(device) if device else default_device()
    progress = progress_default() if progress is None else progress
    members = [dict(m) for m in members]
    modules = [build(m["seed"]) for m in members]
    if vectorize is True:
        check_vectorisable(modules[0])
    shapes = [(k, tuple(v.shape)) for k, v in modules[0].state_dict().items()]
    for i, m in enumerate(modules):
        if [(k, tuple(v.shape)) for k, v in m.state_dict().items()] != shapes:
            raise ValueError(f"make_student built a different architecture for members[{i}] (seed "
                             f"{members[i]['seed']}); every member must have the same layers and shapes")
    try:
        out_classes = predict(modules[0], data.x_train[:2], device=torch.device("cpu")).shape[1]
    except RuntimeError as err:
        raise ValueError(f"the student does not accept data {data.name!r}: inputs of shape {data.shape} fail "
                         f"with '{err}'") from None
    if out_classes != data.classes:
        raise ValueError(f"the student outputs {out_classes} classes but data {data.name!r} has {data.classes}")

    fit_kwargs = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                      momentum=momentum, schedule=schedule, device=device, select=select)
    flops = step_flops(modules[0], data.x_train, batch_size)
    batch_norm = batch_norm_layer(modules[0])
    if vectorize == "auto" and (batch_norm or augment):
        why = f"the student has {type(batch_norm[1]).__name__}" if batch_norm else \
            "augment=True: each member sees its own batches"
        note, vectorized = f"trained one by one with kdnb.train.fit: {why}", False
    elif vectorize == "auto" and flops > SEQUENTIAL_ABOVE_FLOPS and device.type == "cpu":  # measured on CPUs only
        note = (f"trained one by one with kdnb.train.fit: the student takes {flops:.2g} forward FLOPs a step, "
                f"above {SEQUENTIAL_ABOVE_FLOPS:.2g}, where stacking members is no faster on a CPU "
                f"(pass vectorize=True to stack anyway)")
        warnings.warn(f"fit_grid: {note}")
        vectorized = False
    elif vectorize is False:
        note, vectorized = "trained one by one with kdnb.train.fit (vectorize=False)", False
    else:
        chunks = stacks(members, len(data.y_train), epochs, batch_size, schedule, max_members_per_chunk)
        note = f"stacked: {len(members)} members in {len(chunks)} chunk(s) of at most {max(map(len, chunks))}"
        vectorized = True

    t0 = time.perf_counter()
    histories = [None] * len(members)
    if vectorized:
        for part in chunks:
            got = train_stacked([modules[i] for i in part], [members[i] for i in part], data, tables,
                                data_seed=data_seed, progress=progress, first=part, loss=loss, **fit_kwargs)
            for i, h in zip(part, got):
                histories[i] = h
    else:
        from tqdm.auto import tqdm
        for i, (m, model) in enumerate(zip(tqdm(members, disable=not progress, leave=False, desc="fit_grid"),
                                           modules)):
            histories[i] = fit(model, *member_fit(m, data, teachers, tables, loss), seed=m["seed"], shuffle_seed=data_seed,
                               progress=False, augment=augment, **{**fit_kwargs, "epochs": m.get("epochs", epochs)})
    return GridResult(members, histories, modules, vectorized, note, time.perf_counter() - t0)


def member_fit(m, data, teachers, tables, loss=None):
    """``(data, method)`` that ``fit`` trains member ``m`` with: what the stacked loop matches."""
    idx, t = m.get("train"), m.get("teacher", 0)
    source = teachers[t] if tables is None else TeacherCache(tables[t] if idx is None else tables[t][idx])
    return (data if idx is None else data.with_train(idx)), stackable(loss).method(source, m)


class Shuffle:
    """The batches of the members that share a shuffle seed and training samples: ``fit``'s
    (one ``randperm`` of the samples per epoch from a generator seeded like ``fit``'s)."""

    def __init__(self, seed, pool, n_train, batch_size, steps, device):
        self.g = torch.Generator().manual_seed(seed)
        self.pool = None if pool is None else pool.to(device)
        self.n = n_train if pool is None else len(pool)
        self.per_epoch, self.batch_size, self.steps, self.device = math.ceil(self.n / batch_size), batch_size, steps, device

    def batch(self, step):
        j = step % self.per_epoch
        if j == 0 and step < self.steps:
            perm = torch.randperm(self.n, generator=self.g).to(self.device)
            self.perm = perm if self.pool is None else self.pool[perm]
        return self.perm[j * self.batch_size:(j + 1) * self.batch_size]  # past its steps: any batch, unused


def train_stacked(modules, members, data, tables, *, epochs, batch_size, lr, weight_decay, optimizer,
                  momentum, schedule, device, select, data_seed, progress, first, loss):
    """``fit``'s loop for a stack of members (``first``: their indices in the grid): returns one
    ``fit``-style history per member and leaves each module with its selected weights."""
    n_members, n_all = len(members), len(data.y_train)
    for m in modules:
        m.to(device).train()
    params, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0])  # the skeleton functional_call runs each member's weights through
    params_of = {k: torch.tensor([float(m[k]) for m in members], device=device) for k in loss.params}
    x, y = data.x_train, data.y_train
    if fits_on(device, x, y):
        x, y = x.to(device), y.to(device)
    # What each member's loss needs of its teacher, for every sample, sample-major (n, members, ...).
    which = [m.get("teacher", 0) for m in members]
    logits = tables[which[0]] if len(set(which)) == 1 else torch.stack([tables[t] for t in which])
    targets = loss.targets(logits.to(device), params_of).to(x.device)
    member_index = torch.arange(n_members, device=x.device)[:, None]
    # The labels each member learns: the true ones, or its teacher's argmax (the hard-label control).
    labels = None
    if any(m.get("labels") == "teacher" for m in members):
        labels = y[:, None].repeat(1, n_members)
        for i, m in enumerate(members):
            if m.get("labels") == "teacher":
                labels[:, i] = tables[which[i]].argmax(1).to(y.device)

    sizes = [member_size(m, n_all) for m in members]
    per_epoch = [math.ceil(n / batch_size) for n in sizes]
    member_epochs = [m.get("epochs", epochs) for m in members]
    steps = [e * p for e, p in zip(member_epochs, per_epoch)]
    # Members that shuffle with the same seed over the same samples share batches: one Shuffle each.
    keys = [(m["seed"] if data_seed is None else data_seed,
             None if m.get("train") is None else store.tensor_hash(m["train"])) for m in members]
    distinct = list(dict.fromkeys(keys))
    group_of = torch.tensor([distinct.index(k) for k in keys], device=x.device)
    shuffles = []
    for k in distinct:
        i = keys.index(k)
        shuffles.append(Shuffle(k[0], members[i].get("train"), n_all, batch_size,
                                max(s for s, kk in zip(steps, keys) if kk == k), x.device))
    torch.manual_seed(distinct[0][0])  # dropout masks
    randomness = "different" if has_dropout(base) else "error"
    shared = len(distinct) == 1  # then the batch tensors are not stacked at all (in_dims None)
    batch_dim = None if shared else 0

    def member_logits(p, b, xb):
        return logits_of(functional_call(base, (p, b), (xb,)))

    # vmap runs the members' forwards as one; the loss takes the stacked logits (members, B, K)
    # directly, each member with its own T and α.
    forward_train = vmap(member_logits, in_dims=(0, 0, batch_dim), randomness=randomness)
    forward = vmap(member_logits, in_dims=(0, 0, None), randomness=randomness)

    total = max(steps)
    opt, sched = optimiser([v for v in params.values() if v.requires_grad], optimizer, lr, weight_decay, momentum,
                           schedule, total, device)
    state = {**params, **buffers}
    best = {k: v.detach().clone() for k, v in state.items()}
    has_val = len(data.y_val) > 0
    best_acc = torch.full((n_members,), -1.0, device=device)
    best_epoch = torch.full((n_members,), -1, device=device)
    # Per-member histories, filled on the device at each member's epoch ends: no host sync a step.
    longest = max(member_epochs)
    record = {k: torch.zeros(n_members, longest, dtype=torch.float64, device=device)
              for k in ("loss", "train_acc", "val_acc")}
    times, rates = [[] for _ in members], [[] for _ in members]
    ends = {}  # step -> (members whose epoch ends there, which epoch)
    for i, (p, e) in enumerate(zip(per_epoch, member_epochs)):
        for epoch in range(e):
            ends.setdefault((epoch + 1) * p - 1, []).append((i, epoch))
    sizes_t = torch.tensor(sizes, dtype=torch.float64, device=device)
    per_epoch_t = torch.tensor(per_epoch, dtype=torch.float64, device=device)
    steps_t = torch.tensor(steps, device=device)
    loss_sum = torch.zeros(n_members, dtype=torch.float64, device=device)
    correct = torch.zeros(n_members, dtype=torch.float64, device=device)
    first_bad = torch.full((n_members,), -1, device=device)
    check_every = max(per_epoch)

    from tqdm.auto import tqdm
    bar = tqdm(total=total, disable=not progress, leave=False, desc=f"fit_grid {n_members} members", unit="step")
    t0 = time.perf_counter()
    for s in range(total):
        rows = [sh.batch(s) for sh in shuffles]
        length = max(len(r) for r in rows)
        weights = None
        if any(len(r) != length for r in rows):  # shorter batches: pad with any sample, weighted 0
            weights = torch.stack([torch.arange(length, device=x.device) < len(r) for r in rows]).float()
            rows = [torch.cat([r, r.new_zeros(length - len(r))]) for r in rows]
        if shared:
            idx = rows[0]
            xb = x.index_select(0, idx).to(device)
            tb = targets.index_select(0, idx).transpose(0, 1).to(device)
            truth = y[idx].expand(n_members, -1).to(device)
            yb = truth if labels is None else labels[idx].T.to(device)
        else:
            idx = torch.stack(rows)[group_of]
            xb = x[idx].to(device)
            tb = targets[idx, member_index].to(device)
            truth = y[idx].to(device)
            yb = truth if labels is None else labels[idx, member_index].to(device)
            if weights is not None:
                weights = weights[group_of]
        weights = None if weights is None else weights.to(device)
        with autocast(device):
            out = forward_train(params, buffers, xb)
        member_loss = loss.loss(out, tb, yb, params_of, weights)
        opt.zero_grad(set_to_none=True)
        member_loss.sum().backward()  # member i's parameters get the gradient of member i's loss only
        opt.step()
        sched.step()
        step_loss = member_loss.detach().double()
        loss_sum += step_loss
        right = out.argmax(-1) == truth  # as fit: against the true labels, whatever the member learns
        correct += (right.sum(-1) if weights is None else (right * weights).sum(-1)).double()
        first_bad = torch.where(~torch.isfinite(step_loss) & (steps_t > s) & (first_bad < 0), s, first_bad)
        if (s + 1) % check_every == 0 or s + 1 == total:  # one host sync per longest epoch, as in fit
            check_finite(first_bad, members, first, per_epoch, opt)
        if s in ends:
            done, epoch = zip(*ends[s])
            j = torch.tensor(done, device=device)
            e = torch.tensor(epoch, device=device)
            if len(done) == n_members:
                val = evaluate_stacked(forward, base, params, buffers, data.x_val, data.y_val, device)
            else:  # only the members whose epoch ends: a short training set ends one every few steps
                val = evaluate_stacked(forward, base, {k: v[j] for k, v in params.items()},
                                       {k: v[j] for k, v in buffers.items()}, data.x_val, data.y_val, device)
            record["loss"][j, e] = loss_sum[j] / per_epoch_t[j]
            record["train_acc"][j, e] = correct[j] / sizes_t[j]  # as fit: count / n in double
            record["val_acc"][j, e] = val.double()
            loss_sum[j], correct[j] = 0.0, 0.0
            improved = val > best_acc[j] if select == "best" and has_val else torch.ones_like(j, dtype=torch.bool)
            with torch.no_grad():
                for k, v in state.items():
                    keep = improved.view(-1, *[1] * (v.dim() - 1))
                    best[k][j] = torch.where(keep, v[j], best[k][j])
            best_acc[j] = torch.where(improved, val, best_acc[j])
            best_epoch[j] = torch.where(improved, e, best_epoch[j])
            now, rate = time.perf_counter() - t0, opt.param_groups[0]["lr"]
            for i in done:
                times[i].append(now)
                rates[i].append(rate)
        bar.update()
    bar.close()

    histories = []
    record = {k: v.tolist() for k, v in record.items()}
    for i, model in enumerate(modules):
        model.load_state_dict({k: v[i].detach().clone() for k, v in best.items()})
        model.train()
        e = member_epochs[i]
        h = new_history(batch_size, lr, schedule, optimizer)
        h.update({"epoch": list(range(e)), **{k: v[i][:e] for k, v in record.items()}, "lr": rates[i],
                  "time": times[i], "world_size": [1] * e})
        h["terms"] = {loss.term(members[i]): list(h["loss"])}  # fit's: the one term is the loss
        if not has_val:
            h["val_acc"] = [float("nan")] * e
        # No validation split: nothing was selected, so the member keeps its last weights (as in fit).
        h["best_epoch"] = int(best_epoch[i]) if has_val else -1
        h["best_val_acc"] = float(best_acc[i]) if has_val else -1.0
        histories.append(h)
    return histories


def check_finite(first_bad, members, first, per_epoch, opt):
    bad = (first_bad >= 0).nonzero().flatten().tolist()
    if bad:
        i = min(bad, key=lambda i: int(first_bad[i]))
        s = int(first_bad[i])
        raise NonFiniteLoss(f"loss of members[{first[i]}] = {members[i]} became non-finite at step "
                            f"{s % per_epoch[i]} of epoch {s // per_epoch[i]}; lr {opt.param_groups[0]['lr']:.3g}. "
                            f"Lower lr or check the inputs.")


@torch.no_grad()
def evaluate_stacked(forward, base, params, buffers, x, y, device, batch_size=1024):
    """Validation accuracy of every member, ``(members,)``; NaN without a validation split."""
    n_members = next(iter(params.values())).shape[0]
    if len(y) == 0:
        return torch.full((n_members,), float("nan"), device=device)
    base.eval()
    try:
        correct = torch.zeros(n_members, device=device)
        for i in range(0, len(y), batch_size):
            with autocast(device):
                out = forward(params, buffers, x[i:i + batch_size].to(device)).float()
            correct += (out.argmax(-1) == y[i:i + batch_size].to(device)).sum(-1)
        return correct / len(y)
    finally:
        base.train()
