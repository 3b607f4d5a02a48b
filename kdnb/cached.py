"""The cached forms of training, all through one memo path (:func:`memo_once`, which is
``kdnb.store.memo`` with one writer under torchrun): :func:`trained` (one model, ``kdnb.train.fit``)
and :func:`trained_grid` (a grid, ``kdnb.sweep.fit_grid``), each stored under its full config
(:mod:`kdnb.keys`): computed once, loaded after."""
from torch import nn

from . import device as devices, keys, models, store, sweep, train
from .device import default_device
from .methods import CrossEntropy, as_method


def trained(spec, data, method=None, *, seed=0, init=None, key=None, progress=None, device=None, **fit_kwargs):
    """A model built from ``spec`` (started from ``init``'s weights when given: a model or a state
    dict) and trained with ``fit``, stored in the kdnb cache by its full config (model spec, the
    code of the loop and of the method, data, the method's description, fit arguments, seed, the
    initial weights): computed once, loaded after. Progress and device are not part of the key.
    A method that can't be described is refused (``kdnb.keys.Uncacheable``), never served
    another's entry. Returns ``(model, history)``, the model on the default device in eval mode."""
    method = CrossEntropy() if method is None else as_method(method)
    if isinstance(init, nn.Module):
        init = init.state_dict()
    config = keys.model_key(spec, data, method, fit_kwargs, seed, key, device, init)

    def compute():
        model = models.build(spec, data.shape, data.classes, seed=seed)
        if init:
            model.load_state_dict(init)
        history = train.fit(model, data, method, seed=seed, progress=progress, device=device, **fit_kwargs)
        return {"state": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history,
                "method": {k: v.cpu() for k, v in method.state_dict().items()}}

    computed = []
    stored = memo_once("models", config, lambda: computed.append(1) or compute())
    model = models.build(spec, data.shape, data.classes)
    model.load_state_dict(stored["state"])
    model.to(device or default_device())
    if not computed:
        if stored["method"]:  # a trained regressor or discriminator: leave the method as a fresh run would
            method.to(next(model.parameters()).device)
            method.setup(model, data)
            method.load_state_dict(stored["method"])
        if hasattr(progress, "update"):
            progress.update(stored["history"]["epoch"][-1] + 1 if stored["history"]["epoch"] else 0)
    return model.eval(), stored["history"]


def memo_once(kind, config, compute):
    """``store.memo`` with one writer: under torchrun rank 0 looks the entry up and tells the
    others whether to train with it (``compute`` is collective) or takes the stored value."""
    world = devices.ranks()
    if world.size == 1:
        return store.memo(kind, config, compute)
    devices.init()
    if world.main:
        missed = []

        def compute_together():
            missed.append(devices.broadcast_object("compute"))
            return compute()
        value = store.memo(kind, config, compute_together)
        if not missed:
            devices.broadcast_object(("stored", value))
        return value
    told = devices.broadcast_object(None)
    return compute() if told == "compute" else told[1]


def trained_grid(spec, data, teacher, members, *, key=None, **fit_grid_kwargs):
    """``fit_grid`` stored in the kdnb cache by its full config (student spec and the training
    code, data, the teacher's logits or a teacher model's weights, members, arguments): trained
    once, loaded after.
    ``spec`` is a model spec dict; ``teacher`` as in ``fit_grid``. Returns a :class:`GridResult`
    whose models are on the default device in eval mode."""
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a model spec dict (kdnb.models.build), got {type(spec).__name__}")
    teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    loss = sweep.stackable(fit_grid_kwargs.get("loss"))
    sweep.check_members(members, len(data.y_train), len(teachers), loss)
    # A teacher model is named by its weights: its logits would cost a pass over the training split
    # here and another in fit_grid (with augment, fit_grid never needs them at all).
    teachers = [t if isinstance(t, nn.Module) else sweep.teacher_table(t, data) for t in teachers]
    several = isinstance(teacher, (list, tuple))
    teacher = teachers if several else teachers[0]
    config = keys.grid_key(spec, data, teachers, members, loss, fit_grid_kwargs, key, sweep, several)
    def compute():
        r = sweep.fit_grid(spec, data, teacher, members, **fit_grid_kwargs)
        return {"states": [{k: v.cpu() for k, v in m.state_dict().items()} for m in r.models],
                "histories": r.histories, "vectorized": r.vectorized, "note": r.note, "wall_time": r.wall_time}

    stored = memo_once("grids", config, compute)
    student_models = []
    for state in stored["states"]:
        model = models.build(spec, data.shape, data.classes)
        model.load_state_dict(state)
        student_models.append(model.to(default_device()).eval())
    return sweep.GridResult([dict(m) for m in members], stored["histories"], student_models, stored["vectorized"],
                      stored["note"], stored["wall_time"])
