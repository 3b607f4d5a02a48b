"""Run a named experiment (:mod:`kdnb.book.configs`) and keep what it did: ``kdnb run`` and ``kdnb resume``.

``run(name, profile, out=DIR)`` trains the config's teacher (seed 0), then each arm's student once
per seed (every seed, and the draws of validation split and label fractions, shifted by the
profile's ``$KDNB_SEED_OFFSET``, which the run keeps, so a resume trains the same seeds), every training with a checkpoint in ``DIR/checkpoints`` saved each epoch (``kdnb.train.fit``),
each finished model in ``DIR/models``, and at the end ``DIR/results.json`` (the config, every
history, the final metrics, the machine, the versions, the wall time) and ``DIR/figures``. A killed
run is resumed by running it again on the same ``DIR`` (``resume``): finished trainings return at
once from their checkpoints, the interrupted one continues from its last epoch, so the final
weights equal an uninterrupted run's. Without ``out`` every training goes through the cache
(``kdnb.cached.trained``, the same weights) and nothing is written: what the chapters use.
"""
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import data as datasets, deploy, models, store

from . import configs, profiles, settings
from .report import figures
from ..chains import teacher_of
from ..device import default_device, is_main
from ..methods import GANKD, WGANKD, CrossEntropy, Distill, ExpDecay, Hint
from ..cached import trained
from ..train import evaluate, fit, progress_bar


def kd_decay(teacher, data, ctx, T, alpha):
    return [Distill(teacher_of(teacher, data, ctx["augment"]), ExpDecay(*T), ExpDecay(*alpha))]


def fitnets(teacher, data, ctx, hint, guided, T, alpha):
    """Stage 1: the student's lower layers and a regressor learn the teacher's hint; stage 2: KD
    from stage 1's weights. Half the arm's epochs each, so FitNets takes the others' steps."""
    return [Hint(teacher, hint, guided, stage=1), Distill(teacher_of(teacher, data, ctx["augment"]), T, alpha)]


# name -> f(teacher model, data, context, **options) -> [method of each stage]; a later stage
# starts from the weights of the one before. One line here adds a method to the configs.
METHODS = {
    "ce": lambda teacher, data, ctx, **o: [CrossEntropy(**o)],
    "kd": lambda teacher, data, ctx, T, alpha, labels=True: [
        Distill(teacher_of(teacher, data, ctx["augment"]), T, alpha, labels)],
    "kd_decay": kd_decay,
    "gan_kd": lambda teacher, data, ctx, **o: [
        GANKD(teacher_of(teacher, data, ctx["augment"]), classes=data.classes, seed=ctx["seed"], **o)],
    "wgan_kd": lambda teacher, data, ctx, **o: [
        WGANKD(teacher_of(teacher, data, ctx["augment"]), classes=data.classes, seed=ctx["seed"], **o)],
    "fitnets": fitnets,
}


def results_dir():
    """Where full runs keep their results: ``$KDNB_RESULTS``, else ``results`` in the kdnb cache."""
    return Path(os.environ.get("KDNB_RESULTS") or store.cache_dir() / "results")


def needs(config, profile):
    """What kdnb lacks to run ``config`` in ``profile``: data sets, model builders, methods."""
    s = config.setting(profile)
    missing = [] if s.data in datasets.NAMES else [f"data set {s.data!r}"]
    for spec in [s.teacher, *(a.student for a in s.arms)]:
        problem = configs.spec_problem(spec)
        if problem and problem not in missing:
            missing.append(problem)
    for a in s.arms:
        if a.method not in METHODS and f"method {a.method!r}" not in missing:
            missing.append(f"method {a.method!r}")
    return missing


FLOPS = {}  # (spec, data) -> flops: a build is checked once per process


def flops(spec, data):
    """Forward FLOPs of one input of data set ``data`` through the model ``spec``, built and run
    on the meta device (no memory, no arithmetic) and counted by ``kdnb.deploy.flops``: a check
    that the model builds and takes the data's inputs, and what one sample costs it."""
    key = json.dumps([spec, data], sort_keys=True)
    if key not in FLOPS:
        with torch.device("meta"):
            shape = datasets.SETS[data].shape  # built without the data: its shape from the data sets' table
            model = models.build(spec, shape, datasets.SETS[data].classes)
            x = torch.zeros(1, *shape)
        FLOPS[key] = deploy.flops(model, x)
    return FLOPS[key]


def features(config, profile):
    """What a run of ``config`` in ``profile`` exercises: its data set, each (method, augmented)
    pair, and its arms' kinds (taught by an earlier arm, on a fraction of the labels, with their
    own fit arguments)."""
    s = config.setting(profile)
    augment = bool(s.student_fit.get("augment"))
    out = {("data", s.data)} | {("method", a.method, augment) for a in s.arms}
    out |= {("teacher arm",) for a in s.arms if a.teacher != "teacher"}
    out |= {("fraction",) for a in s.arms if a.fraction < 1} | {("arm fit",) for a in s.arms if a.fit}
    return out


def cover(candidates, profile, cost):
    """Greedily, the fewest ``candidates`` that exercise what all of them do, cheapest first."""
    todo, chosen = set().union(set(), *(features(c, profile) for c in candidates)), []
    while todo:
        best = max(candidates, key=lambda c: (len(features(c, profile) & todo), -cost[c.name]))
        chosen.append(best.name)
        todo -= features(best, profile)
    return chosen


def on_disk(data, root=None):
    try:
        datasets.load(data, root=root)
    except FileNotFoundError:
        return False
    return True


def selection(profile="full", root=None):
    """The configs a chapter trains in ``profile``: every one that kdnb can run. Under
    ``$KDNB_SMOKE=1`` (the tests' one epoch of everything on tiny files) the fewest of them,
    cheapest first by FLOPs per sample, whose data is on disk and that together exercise every
    data set, (method, augmentation) pair and kind of arm the others do (:func:`features`), and
    one config of each data set that is not on disk (the run that says so); every config's
    models are still built (:func:`flops`), so a spec that doesn't build is caught either way."""
    runnable = [c for c in configs.CONFIGS.values() if not needs(c, profile)]
    cost = {}
    for c in runnable:
        s = c.setting(profile)
        cost[c.name] = sum(flops(spec, s.data) for spec in [s.teacher, *(a.student for a in s.arms)])
    if not settings.smoke_mode():
        return [c.name for c in runnable]
    here = {c.name for c in runnable if on_disk(c.setting(profile).data, root)}
    chosen = cover([c for c in runnable if c.name in here], profile, cost)
    # and, for each data set not on disk, one run that says so
    missing = {c.setting(profile).data: c.name for c in sorted(runnable, key=lambda c: -cost[c.name])
               if c.name not in here}
    chosen += list(missing.values())
    return [c.name for c in runnable if c.name in chosen]


def check_args(name, profile, seeds, epochs):
    config = configs.get(name)
    config.setting(profile)
    for arg, v in (("seeds", seeds), ("epochs", epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{arg} must be a positive integer, got {v!r}")
    missing = needs(config, profile)
    if missing:
        raise ValueError(f"experiment {name!r} can't run in the {profile} profile yet: kdnb lacks "
                         f"{'; '.join(missing)}")
    return config


def slug(text):
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def plan(name, profile=None, seeds=None, epochs=None, offset=None):
    """What a run trains, as JSON: the arguments and the resolved setting. ``$KDNB_SMOKE=1``
    trains one epoch of everything, like the chapters, and one seed (in the full profile, on
    the first ``settings.RUN_SMOKE["images"]`` training images). ``offset`` (default: the profile's
    ``$KDNB_SEED_OFFSET``) shifts every seed: the teacher's is ``offset``, the students'
    ``offset + i``."""
    p = profiles.get(profile)
    profile, offset = p.name, p.seed_offset if offset is None else offset
    smoke = settings.smoke_mode()
    epochs = settings.SMOKE_CAPS["epochs"] if smoke and epochs is None else epochs
    seeds = settings.RUN_SMOKE["seeds"] if smoke and seeds is None else seeds
    config = check_args(name, profile, seeds, epochs)
    setting = configs.scaled(config.setting(profile), epochs, seeds)
    return {"experiment": name, "profile": profile, "seed_offset": offset,
            "seeds": [offset + i for i in range(setting.seeds)], "epochs": epochs,
            "smoke": smoke, "setting": json.loads(json.dumps(asdict(setting)))}


def units(setting, n_train, seeds=None):
    """``[(unit name, arm index, seed, stage, epochs)]`` in the order a run trains them; ``seeds``:
    the students' (default ``0 … setting["seeds"] − 1``), the teacher's is the first. A unit is
    named by the seed's index, so a run's files are named alike whatever its offset."""
    seeds = list(range(setting["seeds"])) if seeds is None else list(seeds)
    out = [("teacher", None, seeds[0] if seeds else 0, 0, setting["teacher_fit"]["epochs"])]
    for i, arm in enumerate(setting["arms"]):
        for j, seed in enumerate(seeds):
            epochs = arm_epochs(setting, arm, n_train)
            stages = len(stage_epochs(arm, epochs))
            for stage, e in enumerate(stage_epochs(arm, epochs)):
                suffix = f"-stage{stage + 1}" if stages > 1 else ""
                out.append((f"arm{i:02d}-{slug(arm['name'])}-s{j}{suffix}", i, seed, stage, e))
    return out


def arm_fit(setting, arm):
    return {**setting["student_fit"], **arm["fit"]}


def arm_epochs(setting, arm, n_train):
    """The arm's epochs: the setting's over the full labelled split, step-matched on a fraction."""
    fit_args = arm_fit(setting, arm)
    if arm["fraction"] == 1:
        return fit_args["epochs"]
    steps = fit_args["epochs"] * math.ceil(n_train / fit_args["batch_size"])
    return profiles.epochs_for(max(1, round(arm["fraction"] * n_train)), steps, fit_args["batch_size"])


def stage_epochs(arm, epochs):
    if arm["method"] != "fitnets":
        return [epochs]
    first = max(1, epochs // 2)
    return [first, max(1, epochs - first)]


def train_unit(unit, spec, data, method, seed, init, fit_args, out, bar):
    """One training: through the cache without ``out``, else with a checkpoint in it (the same weights)."""
    if out is None:
        return trained(spec, data, method, seed=seed, init=init, progress=bar, **fit_args)
    model = models.build(spec, data.shape, data.classes, seed=seed)
    if init is not None:
        model.load_state_dict(init.state_dict())
    history = fit(model, data, method, seed=seed, checkpoint=out / "checkpoints" / f"{unit}.ckpt", progress=bar,
                  **fit_args)
    if is_main():  # under torchrun every rank holds the same weights: one writes them
        store.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "models" / f"{unit}.pt")
    return model.eval(), history


def run(name, profile=None, seeds=None, epochs=None, out=None, progress=None, root=None):
    """Train experiment ``name`` (``kdnb.book.configs``) in ``profile`` (default: ``$KDNB_PROFILE``):
    the first ``seeds`` seeds (default the config's), ``epochs`` for every training (default the
    config's: a tiny budget for a try-out). With ``out``, checkpoints, models, ``results.json`` and
    figures go there, and a run started there before is resumed. Returns the results."""
    job = plan(name, profile, seeds, epochs)
    if out is not None:
        out = Path(out)
        saved = out / "run.json"
        if saved.exists() and is_main():  # under torchrun rank 0 checks and writes it
            before = store.read_json(saved, "the plan of a kdnb run (run.json)")
            if before != job:
                diff = ", ".join(k for k in job if before.get(k) != job[k])
                raise ValueError(f"out {str(out)!r} holds another run ({diff} differ); resume it with "
                                 f"`kdnb resume {out}` or pass another --out")
        out.mkdir(parents=True, exist_ok=True)
        if is_main():
            store.write_json(saved, job, indent=1)
    return execute(job, out, progress, root)


def resume(out, progress=None, root=None):
    """Continue the run in ``out`` from its checkpoints, to the result an uninterrupted run gives."""
    out = Path(out)
    saved = out / "run.json"
    if not saved.is_file():
        raise FileNotFoundError(f"out {str(out)!r} holds no run (no run.json): start one with "
                                f"`kdnb run NAME --out {out}`")
    job = store.read_json(saved, "the plan of a kdnb run (run.json)")
    missing = [k for k in ("experiment", "profile", "seeds", "epochs", "setting") if not isinstance(job, dict) or k not in job]
    if missing:
        raise ValueError(f"file {str(saved)!r} is not the plan of a kdnb run: it lacks {', '.join(map(repr, missing))}; "
                         f"start again with another --out")
    try:
        name, profile, seeds, epochs = job["experiment"], job["profile"], len(job["seeds"]), job["epochs"]
        offset = job.get("seed_offset", 0)
    except TypeError:
        raise ValueError(f"file {str(saved)!r} is not the plan of a kdnb run (its seeds are not a list); start "
                         f"again with another --out") from None
    now = plan(name, profile, seeds, epochs, offset)
    if now["setting"] != job["setting"]:
        raise ValueError(f"experiment {job['experiment']!r} has changed since {str(out)!r} was started; its "
                         f"checkpoints belong to the old config: rerun with another --out")
    return execute(job, out, progress, root)


def execute(job, out, progress, root):
    t0, setting = time.time(), job["setting"]
    torch.set_num_threads(profiles.get(job["profile"]).threads)
    offset = job.get("seed_offset", 0)
    base = datasets.load(setting["data"], root=root, seed=offset)  # a drawn validation split
    if job.get("smoke") and job["profile"] == "full":  # the tests' smoke run: one step on a few images
        base = base.with_train(torch.arange(min(settings.RUN_SMOKE["images"], len(base.y_train))))
    plan_units = units(setting, len(base.y_train), job["seeds"])
    bar = progress_bar(sum(u[-1] for u in plan_units), f"{job['experiment']} ({job['profile']})", progress)
    histories, trained_models, train_time = {}, {}, 0.0
    teacher_fit = setting["teacher_fit"]
    teacher, h = train_unit("teacher", setting["teacher"], base, None, offset, None, teacher_fit, out, bar)
    histories["teacher"] = h
    teacher_acc = evaluate(teacher, base.x_test, base.y_test)
    arms = {}
    for unit, i, seed, stage, epochs in plan_units[1:]:
        arm = setting["arms"][i]
        data = base.subset(arm["fraction"], seed=offset) if arm["fraction"] < 1 else base
        fit_args = {**arm_fit(setting, arm), "epochs": epochs}
        by = teacher if arm["teacher"] == "teacher" else trained_models[(arm["teacher"], seed)]
        ctx = {"seed": seed, "augment": fit_args.get("augment", False), "epochs": epochs}
        method = METHODS[arm["method"]](by, data, ctx, **arm["options"])[stage]
        init = trained_models.get((arm["name"], seed)) if stage else None
        model, h = train_unit(unit, arm["student"], data, method, seed, init, fit_args, out, bar)
        histories[unit] = h
        trained_models[(arm["name"], seed)] = model
        if out is not None and is_main():
            clock(out, t0)
        if stage == len(stage_epochs(arm, arm_epochs(setting, arm, len(base.y_train)))) - 1:
            r = arms.setdefault(arm["name"], {"test_acc": [], "histories": [], "epochs": epochs,
                                              "steps": epochs * math.ceil(len(data.y_train) / fit_args["batch_size"]),
                                              "published": arm["published"]})
            r["test_acc"].append(evaluate(model, base.x_test, base.y_test))
            r["histories"].append(unit)
    bar.close()
    train_time = sum(h["time"][-1] for h in histories.values() if h["time"])
    config = configs.get(job["experiment"])
    results = {**job, "description": config.description, "chapter": config.chapter, "seed_document": config.seed,
               "notes": config.notes, "data": base.sizes(),
               "teacher": {"test_acc": teacher_acc, "published": config.published_teacher,
                           "parameters": models.count_params(teacher)},
               "arms": arms, "histories": histories, "machine": machine(), "versions": versions(),
               "train_time_s": train_time, "wall_time_s": time.time() - t0,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "figures": []}
    if out is not None and is_main():  # the other ranks return the same results, unwritten
        results["wall_time_s"] = clock(out, t0)
        results["figures"] = figures(results, out / "figures")
        store.write_json(out / "results.json", results, indent=1)
    return results


def clock(out, t0):
    """This session's wall time so far, saved in ``out`` beside the earlier sessions'; returns
    the total. A killed session counts up to its last finished training."""
    path = out / "sessions.json"
    sessions = store.read_json(path, "the wall times of a kdnb run's sessions") if path.exists() else []
    if not sessions or sessions[-1]["started"] != t0:
        sessions.append({"started": t0, "wall_s": 0.0})
    sessions[-1]["wall_s"] = time.time() - t0
    store.write_json(path, sessions)
    return sum(s["wall_s"] for s in sessions)


def machine():
    dev = default_device()
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def versions():
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "torchvision", "numpy", "kdnb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        out["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                    capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git"] = None
    return out
