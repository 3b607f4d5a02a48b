"""Every seed experiment as a named config: its data, models, methods, optimiser, schedule, epochs,
augmentation and seeds, in the full profile (the seed's scale, on its data set) and the quick one
(the same design scaled down on the embedded data). ``kdnb run NAME`` trains one
(:mod:`kdnb.book.run`); ``kdnb list`` shows them. The configs themselves are
:data:`kdnb.book.settings.CONFIGS`.

A config is a :class:`Config` of two :class:`Setting` s (``quick`` and ``full``); a setting trains
one teacher (seed 0) and then each :class:`Arm` (a student and the method that trains it) once per
seed. Adding an experiment is one entry in :data:`kdnb.book.settings.CONFIGS`; a config whose pieces kdnb lacks (a
model builder, a data set, a method) is listed with what it needs (``kdnb.book.run.needs``) and refused
by ``kdnb run`` until they land.
"""
import inspect
from dataclasses import replace

from .. import models
from .settings import CONFIGS, Arm, Config, Setting  # noqa: F401  (the records)


def get(name):
    """The config ``name``; an unknown name is refused with the known ones."""
    if name not in CONFIGS:
        raise ValueError(f"experiment must be one of {', '.join(CONFIGS)} (see `kdnb list`), got {name!r}")
    return CONFIGS[name]


def spec_problem(spec):
    """Why ``kdnb.models.build`` can't make ``spec``, or None."""
    builder = models.BUILDERS.get(spec.get("name"))
    if builder is None:
        return f"model {spec.get('name')!r} (kdnb.models has {', '.join(models.BUILDERS)})"
    allowed = set(inspect.signature(builder).parameters) - {"in_shape", "classes"}
    extra = sorted(set(spec) - {"name"} - allowed)
    return f"model {spec['name']} with {', '.join(extra)}" if extra else None


def scaled(setting, epochs=None, seeds=None):
    """``setting`` with every training's epochs set to ``epochs`` (a tiny budget for a try-out or a
    test) and its first ``seeds`` seeds."""
    if epochs is not None:
        arms = tuple(replace(a, fit={**a.fit, "epochs": epochs}) if "epochs" in a.fit else a for a in setting.arms)
        setting = replace(setting, teacher_fit={**setting.teacher_fit, "epochs": epochs},
                          student_fit={**setting.student_fit, "epochs": epochs}, arms=arms)
    return replace(setting, seeds=seeds) if seeds is not None else setting
