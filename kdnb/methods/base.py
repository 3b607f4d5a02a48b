"""The one protocol every method follows, and the cache description that covers it.

A method is an ``nn.Module`` that tells the loop (``kdnb.train.fit``) what to minimise:

* ``losses(logits, batch) -> {name: term}``: named, weighted loss terms; the student descends
  their sum and the history logs each per epoch. Or, when the method reads more than the logits,
  ``forward_train(student, batch) -> (logits, terms)`` (mdistiller's ``forward_train``).
* ``trainable(student)``: which student parameters train (all, by default; FitNets stage 1: the
  layers up to the guided one).
* ``setup(student, data)``: once, before the optimisers exist: check the data, build parts
  whose shapes depend on the student (a regressor, a projector).
* extra **players** (:class:`Player` submodules, e.g. a discriminator): each has its own optimiser
  and is updated after every student step by ``player_losses(name, batch, logits)``, on the
  student's *detached* logits. The student's optimiser never holds a player's parameters and a
  player's gradient is cleared before its own loss: neither descends the other's loss.
* ``start_epoch(epoch, epochs)``: schedules of T, α or anything else.

The method's other trainable parameters (projectors, regressors) train with the student.

:func:`describe` turns a method into the JSON its cache key hashes. It covers every public
attribute, nested modules, their weights, tensors and functions (source and the values they
capture); what it can't describe raises :class:`Uncacheable` naming the field: never a silent hit.
Attributes starting with ``_`` are a method's runtime state (derived from the public ones).
"""
import functools
import importlib.metadata
import inspect
import os
import sys
import types
from dataclasses import dataclass

import torch
from torch import nn

from .. import store
from ..teachers import logits_of


@dataclass
class Batch:
    """What a method sees besides the model's output: inputs, labels and the samples' indices
    into the training split (so cached teacher outputs line up with a shuffled batch), and
    whether the inputs were augmented. A probe of inputs alone leaves the others None."""
    x: torch.Tensor
    y: torch.Tensor = None
    idx: torch.Tensor = None
    augmented: bool = False


class Uncacheable(TypeError):
    """A method field that kdnb can't describe, so a result trained with it is not cached."""


class Method(nn.Module):
    """Base of every method; see the module's docstring for the protocol."""

    def losses(self, logits, batch):
        raise NotImplementedError(f"{type(self).__name__} must define losses(logits, batch) or forward_train")

    def forward_train(self, student, batch):
        logits = logits_of(student(batch.x))
        return logits, self.losses(logits, batch)

    def forward(self, out, batch):
        """The summed loss on a model's output: for calling a method by hand."""
        return sum(self.losses(logits_of(out), batch).values())

    def trainable(self, student):
        return [p for p in student.parameters() if p.requires_grad]

    def setup(self, student, data):
        pass

    def start_epoch(self, epoch, epochs):
        pass

    def players(self):
        return {name: m for name, m in self.named_modules() if isinstance(m, Player)}

    def player_losses(self, name, batch, logits):
        raise NotImplementedError(f"{type(self).__name__} has player {name!r} but no player_losses")


class Player(nn.Module):
    """An extra model a method trains with its own optimiser (Adam, ``lr``, ``betas``), ``steps``
    updates per student step; ``clip`` clamps its weights after each (WGAN's Lipschitz bound)."""

    def __init__(self, net, lr=1e-3, betas=(0.5, 0.999), steps=1, clip=None):
        super().__init__()
        self.net, self.lr, self.betas, self.steps, self.clip = net, lr, tuple(betas), steps, clip

    def forward(self, x):
        return self.net(x)

    def make_optimizer(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas)

    @torch.no_grad()
    def after_step(self):
        if self.clip is not None:
            for p in self.parameters():
                p.clamp_(-self.clip, self.clip)


class Stackable:
    """A per-member loss that the stacked loop (``kdnb.sweep.fit_grid``) trains many students
    with at once, each member with its own parameters: what a method exposes to be stacked.

    * ``params``: the member keys it reads, each a number (stacked as a ``(members,)`` tensor);
    * ``check(member)``: refuse bad parameters (the loop names the member);
    * ``targets(logits, params) -> (n, members, ...)``: what the loss needs of the teacher, for
      every training sample, computed once from the teacher's logits (``(n, K)``, or ``(members,
      n, K)`` when members have their own teachers), sample-major so a step gathers whole rows;
    * ``loss(out, targets, labels, params, weights) -> (members,)``: each member's mean loss on its
      batch, from the stacked logits ``(members, B, K)``, its targets' rows ``(members, B, ...)``,
      labels ``(members, B)`` and ``weights`` (None, or ``(members, B)``: 0 on padding);
    * ``method(teacher, member)``: the :class:`Method` that ``fit`` trains the member with, what the
      stacked member matches (and what trains it when members are not stacked);
    * ``term(member)``: the name of that method's one loss term (the member's history's ``terms``).
    """
    params = ()

    def check(self, member):
        pass

    def targets(self, logits, params):
        raise NotImplementedError(f"{type(self).__name__} must define targets(logits, params)")

    def loss(self, out, targets, labels, params, weights):
        raise NotImplementedError(f"{type(self).__name__} must define loss(out, targets, labels, params, weights)")

    def method(self, teacher, member):
        raise NotImplementedError(f"{type(self).__name__} must define method(teacher, member)")

    def term(self, member):
        raise NotImplementedError(f"{type(self).__name__} must define term(member)")

    def cache_description(self, describe):
        """For cache keys (:func:`describe`): its class (named by its code) and public fields."""
        return {"fields": {k: describe(v, k) for k, v in vars(self).items() if not k.startswith("_")}}


class Loss(Method):
    """A plain ``fn(out, batch) -> loss`` as a method with one term, ``"loss"``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward_train(self, student, batch):
        out = student(batch.x)
        loss = self.fn(out, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
            raise TypeError(f"the loss function {name} must return a scalar tensor (a graph to descend), got "
                            f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else f'shape {tuple(loss.shape)}'}"
                            f"; return a torch scalar such as F.cross_entropy(out, batch.y)")
        return logits_of(out), {"loss": loss}

    def start_epoch(self, epoch, epochs):
        if hasattr(self.fn, "start_epoch"):
            self.fn.start_epoch(epoch, epochs)


def as_method(method):
    """A method as is; a plain ``fn(out, batch) -> loss`` (a function, or a module whose trainable
    parameters then train with the student) as a :class:`Loss`."""
    if isinstance(method, Method):
        return method
    if callable(method):
        return Loss(method)
    raise TypeError(f"method must be a kdnb.methods.Method or callable as fn(out, batch) -> loss, "
                    f"got {type(method).__name__}")


# nn.Module's own bookkeeping; the weights and children are described on their own.
MODULE_INTERNALS = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"}
LIBRARY_TYPES = (torch.device, torch.dtype, torch.Size)


def describe(obj, where="method", _seen=None):
    """A JSON-able description of ``obj`` for cache keys; raises :class:`Uncacheable` naming the
    first field it can't describe."""
    seen = set() if _seen is None else _seen
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, LIBRARY_TYPES):
        return str(obj)
    if id(obj) in seen:
        return {"cycle": type(obj).__qualname__}
    seen = seen | {id(obj)}
    rec = lambda v, w: describe(v, w, seen)
    if isinstance(obj, (list, tuple)):
        return [rec(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return sorted((rec(v, f"{where}{{}}") for v in obj), key=repr)
    if isinstance(obj, dict):
        return {repr(k): rec(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return {"tensor": store.tensor_hash(obj)}
    if hasattr(obj, "cache_description"):
        return {"type": type_key(obj, where), **obj.cache_description(lambda v, w: rec(v, f"{where}.{w}"))}
    if isinstance(obj, nn.Module):
        fields = {k: rec(v, f"{where}.{k}") for k, v in vars(obj).items()
                  if k not in MODULE_INTERNALS and not k.startswith("_")}
        own = [*obj.named_parameters(recurse=False), *obj.named_buffers(recurse=False)]  # children: below
        weights = store.tensor_hash(*(t for _, t in own), text=" ".join(n for n, _ in own))
        children = {k: rec(m, f"{where}.{k}") for k, m in obj.named_children()}
        return {"type": type_key(obj, where), "fields": fields, "weights": weights, "children": children}
    if isinstance(obj, functools.partial):
        return {"partial": rec(obj.func, f"{where}.func"), "args": rec(obj.args, f"{where}.args"),
                "keywords": rec(obj.keywords, f"{where}.keywords")}
    if inspect.ismethod(obj):
        return {"bound": rec(obj.__func__, f"{where}.__func__"), "self": rec(obj.__self__, f"{where}.__self__")}
    if inspect.isfunction(obj):
        return describe_function(obj, where, seen)
    if isinstance(obj, type):
        return {"class": type_key(obj, where, is_type=True)}
    if isinstance(obj, (types.BuiltinFunctionType, types.ModuleType)):
        return {"builtin": f"{getattr(obj, '__module__', '')}.{obj.__name__}"}
    if type(obj).__module__.startswith("kdnb") and hasattr(obj, "__dict__"):  # kdnb's plain records
        return {"type": type_key(obj, where), "fields": {k: rec(v, f"{where}.{k}") for k, v in vars(obj).items()}}
    raise Uncacheable(f"{where} is a {type(obj).__qualname__}, which kdnb can't describe for a cache key; "
                      f"make it a number, string, tensor, module or function, or train with kdnb.train.fit "
                      f"(uncached)")


def type_key(obj, where, is_type=False):
    """A class named by its module and name, and by its source where that can change under us:
    kdnb's own classes and a notebook's by the class's source; a user's own module (any file that
    is not an installed package in site-packages, an editable install included) by the source of
    that module and of every user module it reaches; a released package by its version. Two
    classes of one name, or one class before and after an edit, can't share a key."""
    cls = obj if is_type else type(obj)
    module = cls.__module__
    top = module.split(".")[0]
    if top in ("kdnb", "__main__") or top not in sys.modules or not hasattr(sys.modules[top], "__file__"):
        try:
            return f"{module}.{cls.__qualname__}:{store.key_of(inspect.getsource(cls))}"
        except (OSError, TypeError):
            raise Uncacheable(f"{where} is an instance of {cls.__qualname__}, whose source kdnb can't read "
                              f"(defined in a notebook?); define it in a .py file, or train with "
                              f"kdnb.train.fit (uncached)") from None
    if not installed(sys.modules.get(module) or sys.modules[top]):
        return f"{module}.{cls.__qualname__}:{user_code_key(module, where)}"
    return f"{module}.{cls.__qualname__}@{top}-{package_version(top)}"


def installed(mod):
    """Whether module ``mod`` is part of a released package (under a site-packages folder, or the
    standard library), whose version names its code; a user's own files are not."""
    path = getattr(mod, "__file__", None)
    if not path:
        return True  # built in
    top = mod.__name__.split(".")[0]
    if top in sys.stdlib_module_names:
        return True
    parts = set(os.path.normpath(os.path.abspath(path)).split(os.sep))
    return bool(parts & {"site-packages", "dist-packages"})


def user_code_key(module, where):
    """A hash of the source of the user's module ``module`` and of every user module it reaches
    through its globals (imported modules, functions and classes), so an edit to a helper it
    calls changes the key too; a module whose source can't be read is refused."""
    sources, todo, seen = [], [module], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in sys.modules:
            continue
        seen.add(name)
        mod = sys.modules[name]
        try:
            sources.append(f"{name}\n{inspect.getsource(mod)}")
        except (OSError, TypeError):
            raise Uncacheable(f"{where} uses code from module {name!r}, whose source kdnb can't read; keep it in a "
                              f".py file, or train with kdnb.train.fit (uncached)") from None
        for value in vars(mod).values():
            dep = value if isinstance(value, types.ModuleType) else sys.modules.get(getattr(value, "__module__", None) or "")
            if dep is not None and dep.__name__ not in seen and not dep.__name__.startswith("kdnb") and not installed(dep):
                todo.append(dep.__name__)
    return store.key_of(sorted(sources))


@functools.lru_cache(maxsize=None)
def package_version(top):
    # Read once per package: the metadata lookup scans sys.path, and describing a live teacher
    # asks it for every module of the model (chapter 7's ResNets: thousands of times).
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def code_names(code):
    """Global names a code object (and the functions nested in it) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= code_names(const)
    return names


def describe_function(fn, where, seen):
    """A function by its source, the values its closure captures and the globals it reads: two
    ``lambda batch: m(batch.x)`` over different models ``m`` get different descriptions."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        raise Uncacheable(f"{where} is the function {fn.__qualname__}, whose source kdnb can't read; "
                          f"define it in a file or a notebook cell, or train with kdnb.train.fit (uncached)") from None
    closure = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell: the name was not bound yet
            value = None
        closure[name] = describe(value, f"{where} (captured {name!r})", seen)
    glob = {}
    for name in sorted(code_names(fn.__code__)):
        value = fn.__globals__.get(name)
        if name not in fn.__globals__:
            continue
        if isinstance(value, types.ModuleType):  # a user's own module is keyed by its code; a library's by its version
            if not value.__name__.startswith("kdnb") and not installed(value):
                glob[name] = {"module": user_code_key(value.__name__, f"{where} (global {name!r})")}
            continue
        glob[name] = describe(value, f"{where} (global {name!r})", seen)
    defaults = describe(fn.__defaults__, f"{where}.__defaults__", seen)
    return {"function": fn.__qualname__, "source": store.key_of(source), "closure": closure,
            "globals": glob, "defaults": defaults}


def code_of(method):
    """``{module: hash of its source}`` for the kdnb modules that hold ``method``'s code (its classes
    and those of its nested methods and players): editing a method retrains what it trained, and a
    new method file retrains nothing else."""
    names = {cls.__module__ for m in method.modules() for cls in type(m).__mro__ if cls.__module__.startswith("kdnb.")}
    return {name: store.source_hash(sys.modules[name]) for name in sorted(names)}
