"""What a finished run (:mod:`kdnb.book.run`) reports: its results file read and checked, its
figures (learning curves, test accuracies beside the seed's figures), and the rows of ``kdnb
report``'s table."""
import re
from pathlib import Path

import torch

from .. import store
from . import configs
from .plots import mean_std


def published_number(text):
    """The leading percentage of a seed's figure ("98.87 %" → 98.87), or None."""
    m = re.match(r"\s*≈?\s*([0-9]+(?:\.[0-9]+)?)\s*%", text or "")
    return float(m.group(1)) if m else None


def figures(results, folder):
    """Learning curves and test accuracies beside the seed's figures, as PNGs in ``folder``."""
    from matplotlib.figure import Figure  # no pyplot: nothing shown, any backend
    folder.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 4))
    a, b = fig.subplots(1, 2)
    for n, r in results["arms"].items():
        val = torch.tensor([results["histories"][u]["val_acc"] for u in r["histories"]], dtype=torch.float64)
        a.plot(range(1, val.shape[1] + 1), 100 * val.mean(0), label=n)
    a.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{results['experiment']} ({results['profile']})")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    names = list(results["arms"])
    ours = [100 * mean_std(results["arms"][n]["test_acc"])[0] for n in names]
    err = [100 * mean_std(results["arms"][n]["test_acc"])[1] for n in names]
    b.barh(names, ours, xerr=err, color="#37a", label="ours (mean ± std)")
    theirs = [(i, published_number(results["arms"][n]["published"])) for i, n in enumerate(names)]
    theirs = [(i, v) for i, v in theirs if v is not None]
    if theirs:
        b.plot([v for _, v in theirs], [i for i, _ in theirs], "k|", markersize=18, label="seed's figure")
    b.set(xlabel="test accuracy (%)", xlim=(max(0, min(ours + [v for _, v in theirs]) - 10), 100))
    b.legend(loc="lower right")
    fig.tight_layout()
    path = folder / "results.png"
    fig.savefig(path, dpi=100)
    return [str(path)]


def load_results(path):
    """The results of a finished run: ``path`` is its folder or its results.json."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        state = "an unfinished run (resume it with `kdnb resume`)" if (path / "run.json").exists() else "no run"
        raise FileNotFoundError(f"path {str(path)!r} holds {state}: no results.json")
    results = store.read_json(file, "the results of a kdnb run (results.json)")
    if not isinstance(results, dict) or "arms" not in results or "experiment" not in results:
        raise ValueError(f"path {str(file)!r} is not a results file of kdnb run (no experiment and arms)")
    bad = [k for k in ("profile", "seeds", "teacher") if k not in results]
    if not isinstance(results.get("teacher"), dict) or "test_acc" not in results.get("teacher", {}):
        bad.append("teacher.test_acc")
    arms = results["arms"] if isinstance(results["arms"], dict) else {}
    bad += [f"arms[{a!r}].test_acc" for a, v in arms.items() if not isinstance(v, dict) or "test_acc" not in v]
    if bad or not isinstance(results["arms"], dict):
        raise ValueError(f"path {str(file)!r} is not a complete results file of kdnb run: it lacks "
                         f"{', '.join(bad) or 'an arms table'}")
    return results


def is_result(results):
    """A run at the config's own budget: not a smoke run, no epochs or seeds cut."""
    return not results.get("smoke") and results.get("epochs") is None and \
        len(results["seeds"]) == configs.get(results["experiment"]).setting(results["profile"]).seeds


def find_results(root, profile="full"):
    """``{experiment: results}`` of the finished runs of ``profile`` at their own budget under
    ``root`` (each run in a folder of its own), the latest of each experiment."""
    found = {}
    for file in sorted(Path(root).glob("**/results.json")) if root and Path(root).is_dir() else []:
        try:
            r = load_results(file)
        except (ValueError, FileNotFoundError):
            continue
        if r.get("profile") == profile and r["experiment"] in configs.CONFIGS and is_result(r):
            if r["experiment"] not in found or r["finished"] > found[r["experiment"]]["finished"]:
                found[r["experiment"]] = r
    return found


def cell(results, arm):
    """'mean ± std % (n seeds)' of an arm's test accuracy."""
    m, sd = mean_std(results["arms"][arm]["test_acc"])
    n = len(results["arms"][arm]["test_acc"])
    return f"{100 * m:.1f} ± {100 * sd:.1f} % ({n} seed{'s' * (n > 1)})"


def rows(config, quick=None, full=None):
    """Table rows ``[experiment, model, seed's figure, quick, full]`` for ``config``: the teacher
    then each arm of the full profile's setting, ours from the results given ("not run yet" without)."""
    def ours(results, arm):
        if results is None:
            return "not run yet"
        if arm == "teacher":
            return f"{results['teacher']['test_acc']:.1%}"
        return cell(results, arm) if arm in results["arms"] else "—"
    out = [[config.name, "teacher", config.published_teacher or "—", ours(quick, "teacher"), ours(full, "teacher")]]
    arms = {a.name: a for a in config.full.arms}
    arms.update({a.name: a for a in config.quick.arms if a.name not in arms})
    for arm in arms.values():
        out.append([config.name, arm.name, arm.published or "—", ours(quick, arm.name), ours(full, arm.name)])
    return out


def baselines(results):
    """``{arm: its baseline}``: for each arm, the arm of its run that trains the same student
    (model, data fraction, fit arguments) with cross-entropy alone, when there is one."""
    arms = results["setting"]["arms"]
    same = lambda a, b: (a["student"], a["fraction"], a["fit"]) == (b["student"], b["fraction"], b["fit"])
    out = {}
    for a in arms:
        ref = next((b for b in arms if b["method"] == "ce" and b is not a and same(a, b)), None)
        if ref is not None and a["method"] != "ce":
            out[a["name"]] = ref["name"]
    return out
