"""Cache keys, in one module: what names a trained model or grid in the kdnb cache.

* :func:`describe` turns a method (or a stackable loss) into the JSON its key hashes. It covers
  every public attribute, nested modules, their weights, tensors and functions (source and the
  values they capture); what it can't describe raises :class:`Uncacheable` naming the field:
  never a silent hit.
* :func:`training_code`: the source hashes of the code that builds and trains a model (the loop,
  models, losses, teachers, checks, the method protocol, these keys and the cached forms) and of
  each method's own modules (:func:`code_of`): an edit to any of them retrains, a new method file
  retrains nothing else.
* :func:`data_key`: a data set by its contents.
* :func:`model_key` and :func:`grid_key`: the full config of ``kdnb.cached.trained`` and
  ``kdnb.cached.trained_grid``, which store the results under them (``kdnb.store.memo``);
  :func:`stale`: whether a stored key's code is gone (``kdnb cache prune``).

The hashing itself (``key_of``, ``tensor_hash``, ``source_hash``) is :mod:`kdnb.store`'s.
"""
import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import types

import torch
from torch import nn

from . import device as devices, store

# The code that builds and trains a model, by module: every key hashes it. Named, not imported:
# they sit above this module (the loop imports describe from here), and are loaded whenever a key
# is made, since only kdnb.cached makes one.
LOOP = ("kdnb.checks", "kdnb.device", "kdnb.losses", "kdnb.models", "kdnb.teachers", "kdnb.methods.base",
        "kdnb.keys", "kdnb.train", "kdnb.cached")


class Uncacheable(TypeError):
    """A method field that kdnb can't describe, so a result trained with it is not cached."""


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


def training_code(*methods_or_modules):
    """``{module: source hash}`` of the code that builds and trains a model (:data:`LOOP`) and
    each method's own modules (or the modules given). In cache keys, an edit to any of them
    retrains; a new method file retrains nothing."""
    code = {name: store.source_hash(sys.modules[name]) for name in LOOP}
    for x in methods_or_modules:
        code.update(code_of(x) if isinstance(x, nn.Module) else {x.__name__: store.source_hash(x)})
    return code


def data_key(data):
    """What identifies a data set's contents: name, sizes and a checksum of the tensors."""
    return {"name": data.name, "sizes": data.sizes(),
            "sha": store.tensor_hash(data.x_train, data.y_train, data.x_val, data.y_val)}


def model_key(spec, data, method, fit_kwargs, seed, extra, device, init):
    """The config ``kdnb.cached.trained`` stores a model under: the model spec, the code of the
    loop and of the method, the data, the method's description, fit's arguments, the seed, the
    caller's ``extra``, the device's numerics and the initial weights (a state dict) by checksum.
    Progress and device are not part of it. :class:`Uncacheable` names what can't be described."""
    try:
        return {"spec": spec, "code": training_code(method), "data": data_key(data), "method": describe(method),
                "fit": fit_kwargs, "seed": seed, "extra": extra, "numerics": devices.numerics(device),
                "init": store.tensor_hash(*init.values(), text=" ".join(init)) if init else None}
    except Uncacheable as err:
        raise Uncacheable(f"trained() can't cache this run: {err}") from None


def teacher_key(teacher):
    """A teacher model by its weights and architecture; its logits on the training split (a
    table) by their checksum."""
    if isinstance(teacher, nn.Module):
        return store.tensor_hash(*teacher.state_dict().values(), text=repr(teacher))
    return store.tensor_hash(teacher)


def grid_key(spec, data, teachers, members, loss, fit_grid_kwargs, extra, sweep_module, several):
    """The config ``kdnb.cached.trained_grid`` stores a grid under: the student spec, the code of
    the loop, of the stacked loop (``sweep_module``) and of the loss, the loss's description, the
    data, each teacher (:func:`teacher_key`; a list when ``several``), the members (a member's own
    samples by their indices' checksum), fit_grid's arguments and the device's numerics."""
    try:
        described_loss = describe(loss, "loss")
    except Uncacheable as err:
        raise Uncacheable(f"trained_grid() can't cache this grid: {err}") from None
    code = training_code(sweep_module, *{sys.modules[c.__module__] for c in type(loss).__mro__
                                         if c.__module__.startswith("kdnb.")})
    keys = [teacher_key(t) for t in teachers]
    described = [{**m, "train": store.tensor_hash(m["train"])} if m.get("train") is not None else dict(m)
                 for m in members]
    return {"spec": spec, "code": code, "loss": described_loss, "data": data_key(data),
            "teacher": keys if several else keys[0], "members": described,
            "fit": {k: v for k, v in fit_grid_kwargs.items() if k not in ("device", "progress", "loss")},
            "extra": extra, "numerics": devices.numerics(fit_grid_kwargs.get("device"))}


def stale(config):
    """Whether no current code can hit an entry: the code it was keyed on has changed (or is gone)."""
    code = config.get("code") if isinstance(config, dict) else None
    if code is None:
        return not isinstance(config, dict)  # data: keyed on its generator, never stale; unreadable: stale
    if not isinstance(code, dict):
        return True  # a key from before per-module code hashes
    for name, digest in code.items():
        try:
            if store.source_hash(importlib.import_module(name)) != digest:
                return True
        except ImportError:
            return True
    return False
