"""Large grids over several processes: under ``torchrun`` the members of a
:func:`kdnb.sweep.fit_grid` are split across the ranks (:func:`split`), each rank trains its slice
on its own device, and the results are gathered on every rank (:func:`gather`), in the members'
order. A member trains alone, so it ends as it would in one process; what one process does with
a grid (stacking members, or training them one by one) each rank does with its slice.

One :func:`kdnb.train.fit` over several ranks (DistributedDataParallel) needs nothing from here:
``fit`` does it by itself under torchrun (see :mod:`kdnb.train`)."""
import torch
from torch import nn

from . import device as devices, sweep
from .sweep import GridResult, builder, grid, teacher_table  # noqa: F401  (grid: the members' helper)


def split(members, ranks=None):
    """The indices of the members this rank trains: every ``size``-th from its rank, so ranks
    get members of every kind (a grid's seeds, α and T vary fastest last)."""
    ranks = ranks or devices.ranks()
    return list(range(len(members)))[ranks.rank::ranks.size]


def gather(mine, results):
    """Every rank's ``(index, result)`` pairs, on every rank: the results in the members' order."""
    pairs = [pair for part in devices.gather_objects(list(zip(mine, results))) for pair in part]
    return [result for _, result in sorted(pairs, key=lambda pair: pair[0])]


def fit_grid(make_student, data, teacher, members, **fit_grid_kwargs):
    """:func:`kdnb.sweep.fit_grid` with the members split over torchrun's ranks; in one process,
    ``fit_grid`` itself. The teacher's outputs are computed once, on rank 0, and sent to the
    others. Returns one :class:`~kdnb.sweep.GridResult` of all the members on every rank (models
    on each rank's default device); its ``wall_time`` is the slowest rank's."""
    world = devices.ranks()
    if world.size == 1:
        return sweep.fit_grid(make_student, data, teacher, members, **fit_grid_kwargs)
    devices.init()
    augment = fit_grid_kwargs.get("augment", False)
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    sweep.check_members(members, len(data.y_train), len(teachers))  # on every rank, not just the one with it
    if not augment:  # cached outputs: one teacher pass (on rank 0), not one per rank
        teachers = devices.shared(lambda: [teacher_table(t, data).cpu() for t in teachers])
    mine = split(members, world)
    if world.rank:
        fit_grid_kwargs["progress"] = False
    result = None
    if mine:
        with devices.local():  # the fits inside train this rank's members alone, not with the others
            result = sweep.fit_grid(make_student, data, teachers if len(teachers) > 1 else teachers[0],
                                    [members[i] for i in mine], **fit_grid_kwargs)
    done = [(h, {k: v.cpu() for k, v in m.state_dict().items()}) for h, m in zip(result.histories, result.models)] \
        if result else []
    gathered = gather(mine, done)
    facts = devices.gather_objects(None if result is None else (result.vectorized, result.note, result.wall_time))
    facts = [f for f in facts if f]
    build, where = builder(make_student, data), devices.default_device()
    models = []
    for m, (_, state) in zip(members, gathered):
        model = build(m["seed"])
        model.load_state_dict(state)
        models.append(model.to(where))
    note = f"split over {world.size} ranks; " + "; ".join(sorted({f[1] for f in facts}))
    return GridResult([dict(m) for m in members], [h for h, _ in gathered], models,
                      all(f[0] for f in facts), note, max(f[2] for f in facts))
