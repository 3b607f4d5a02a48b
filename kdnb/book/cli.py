"""``kdnb`` on the command line: list the seed experiments, run one (checkpointed every epoch),
resume a killed run, report results beside the seeds' figures; fetch a data set on a machine with
internet; show, clear or prune the cache.

    kdnb list                               the experiments, data sets and profiles
    kdnb list seed001-exp2                  one experiment's settings, in both profiles
    kdnb run seed001-exp2 --profile full --out runs/exp2
    kdnb resume runs/exp2                   after a crash or a kill: continues from the checkpoints
    kdnb report runs/exp2 runs/exp2-quick   a table beside the seed's figures, and plots

A bad name or argument ends with one line on stderr and exit status 2; a run that fails (a
missing data set, a checkpoint of another run) with one line and status 1; never a traceback.
"""
import argparse
import json
import os
import sys
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line: ``kdnb run: error: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def experiment(text):
    from . import configs
    if text not in configs.CONFIGS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(configs.CONFIGS)} (see `kdnb list`), "
                                         f"got {text!r}")
    return text


def parser():
    from .. import data
    p = Parser(prog="kdnb", description="Helpers of the kdnb knowledge-distillation book: the seed experiments "
                                        "as named configs, their runs and reports, data sets and the cache.")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    ls = sub.add_parser("list", help="list the experiments (and data sets, profiles), or show one",
                        description="List every seed experiment with its chapter and a one-line description, "
                                    "then the data sets and profiles; with NAME, that experiment's settings "
                                    "in both profiles.")
    ls.add_argument("name", nargs="?", type=experiment, help="an experiment to show in full")
    run = sub.add_parser("run", help="run an experiment: checkpoint every epoch, results.json and figures",
                         description="Train an experiment's teacher and students, with a checkpoint every "
                                     "epoch in OUT/checkpoints; at the end OUT/results.json (config, "
                                     "histories, final metrics, machine, versions, wall time) and "
                                     "OUT/figures. Running it again on the same OUT resumes it.")
    run.add_argument("name", type=experiment, help="the experiment (see `kdnb list`)")
    run.add_argument("--profile", choices=["quick", "full"], default=None,
                     help="quick: embedded data, CPU; full: the seed's data set and scale (a GPU). "
                          "Default $KDNB_PROFILE, else quick")
    run.add_argument("--seeds", type=positive_int, default=None, help="train the first N seeds (default: "
                                                                      "the experiment's, 3)")
    run.add_argument("--epochs", type=positive_int, default=None,
                     help="every training this many epochs: a tiny budget for a try-out (not a result)")
    run.add_argument("--out", default=None, help="folder for checkpoints and results (default "
                                                 "$KDNB_RESULTS/NAME-PROFILE, else kdnb-runs/NAME-PROFILE)")
    run.add_argument("--data", default=None, help="folder of the data sets (default $KDNB_DATA)")
    res = sub.add_parser("resume", help="continue a killed run from its last checkpoints",
                         description="Continue the run in DIR (started by `kdnb run ... --out DIR`) from its "
                                     "checkpoints, to the result an uninterrupted run gives.")
    res.add_argument("dir", help="the run's folder")
    res.add_argument("--data", default=None, help="folder of the data sets (default $KDNB_DATA)")
    rep = sub.add_parser("report", help="a table (and plots) of finished runs beside the seeds' figures",
                         description="Print a markdown table of the runs in DIR... (each a `kdnb run` "
                                     "folder or a results.json), each arm beside the seed's published "
                                     "figure, and write each run's plot to DIR/figures/results.png.")
    rep.add_argument("dirs", nargs="+", metavar="DIR", help="run folders or results.json files")
    dl = sub.add_parser("download", help="download a torchvision data set (needs internet)",
                        description="Download a torchvision data set into ROOT (default $KDNB_DATA).")
    dl.add_argument("name", help=" or ".join([", ".join(data.TORCHVISION[:-1]), data.TORCHVISION[-1]]))
    dl.add_argument("--root", default=None, help="folder to put it in (default $KDNB_DATA)")
    c = sub.add_parser("cache", help="show, clear or prune the cache of trained models and teacher outputs",
                       description="Show, clear or prune the cache of trained models and teacher outputs.")
    c.add_argument("action", nargs="?", default="show", choices=["show", "clear", "prune"],
                   help="show (default): where it is and what it holds; clear: delete every entry; "
                        "prune: delete the entries that no current code can hit")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 0
    try:
        COMMANDS[args.command](args, p)
    except Exception as err:
        if os.environ.get("KDNB_DEBUG") == "1":
            raise
        # One line: kdnb's checks name the argument, the value and the way out.
        message = " ".join(str(err).split()) or type(err).__name__
        hint = "" if isinstance(err, (ValueError, TypeError, OSError)) else " (KDNB_DEBUG=1 shows the traceback)"
        print(f"kdnb {args.command}: error: {message}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kdnb {args.command}: interrupted; `kdnb resume DIR` continues a run", file=sys.stderr)
        return 130
    return 0


def do_list(args, p):
    from dataclasses import asdict
    from .. import data
    from . import configs, profiles, run as runs
    if args.name:
        c = configs.get(args.name)
        print(f"{c.name}: {c.description}\nchapter {c.chapter}, seed {c.seed}"
              + (f"\nnotes: {c.notes}" if c.notes else ""))
        for profile in ("quick", "full"):
            missing = runs.needs(c, profile)
            print(f"\n{profile} profile" + (f" (can't run yet: needs {'; '.join(missing)})" if missing else "") + ":")
            print(json.dumps(asdict(c.setting(profile)), indent=1, ensure_ascii=False))
        return
    width = max(map(len, configs.CONFIGS))
    print("experiments (kdnb run NAME):")
    for c in configs.CONFIGS.values():
        missing = runs.needs(c, "full")
        note = f" [full profile needs {'; '.join(missing)}]" if missing else ""
        print(f"  {c.name:{width}}  ch. {c.chapter:>2}  seed {c.seed:9}  {c.description}{note}")
    print("data sets:", ", ".join(data.NAMES))
    for pr in profiles.PROFILES.values():
        print(f"profile {pr.name}: data={pr.data} teacher={pr.teacher} student={pr.student}")


def default_out(name, profile):
    from . import profiles
    profile = profiles.get(profile).name
    root = os.environ.get("KDNB_RESULTS")
    return Path(root) / f"{name}-{profile}" if root else Path("kdnb-runs") / f"{name}-{profile}"


def do_run(args, p):
    from . import run as runs
    out = Path(args.out) if args.out else default_out(args.name, args.profile)
    results = runs.run(args.name, args.profile, args.seeds, args.epochs, out=out, root=args.data)
    summary(results, out)


def do_resume(args, p):
    from . import run as runs
    out = Path(args.dir)
    summary(runs.resume(out, root=args.data), out)


def summary(results, out):
    from .. import device
    from . import report
    if not device.is_main():  # under torchrun: rank 0 reports for all
        return
    print(f"{results['experiment']} ({results['profile']}): teacher {results['teacher']['test_acc']:.1%}")
    for arm in results["arms"]:
        print(f"  {arm}: {report.cell(results, arm)}")
    print(f"results: {out / 'results.json'}; figures: {', '.join(results['figures'])}; "
          f"wall time {results['wall_time_s']:.0f} s")


def do_report(args, p):
    from . import configs, plots, report
    table = []
    for d in args.dirs:
        r = report.load_results(d)
        if r["experiment"] not in configs.CONFIGS:
            raise ValueError(f"path {d!r} holds experiment {r['experiment']!r}, which this kdnb does not know")
        folder = Path(d) if Path(d).is_dir() else Path(d).parent
        figs = report.figures(r, folder / "figures")
        budget = "" if report.is_result(r) else " (cut budget: not a result)"
        label = f"{r['profile']}{budget}"
        table.append([r["experiment"], "teacher", label, r["teacher"]["published"] or "—",
                      f"{r['teacher']['test_acc']:.1%}"])
        table += [[r["experiment"], arm, label, v["published"] or "—", report.cell(r, arm)]
                  for arm, v in r["arms"].items()]
        print(f"{d}: figure {figs[0]}", file=sys.stderr)
    print(plots.markdown(table, ["experiment", "model", "profile", "seed's figure", "ours (test accuracy)"]))


def do_download(args, p):
    from .. import data
    if args.name not in data.TORCHVISION:
        p.error(f"name must be one of {', '.join(data.TORCHVISION)}, got {args.name!r}")
    root = data.data_root(args.root)
    root.mkdir(parents=True, exist_ok=True)
    print(data.load(args.name, root=root, download=True))


def do_cache(args, p):
    cache(args.action)


COMMANDS = {"list": do_list, "run": do_run, "resume": do_resume, "report": do_report, "download": do_download,
            "cache": do_cache}


def cache(action):
    from .. import keys, store
    entries = store.entries()
    size = lambda items: f"{len(items)} entries, {sum(e[1] for e in items) / 1e6:.1f} MB"
    if action == "show":
        print(f"{store.cache_dir()}: {size(entries)}")
        for kind in sorted({p.parent.name for p, _, _ in entries}):
            print(f"  {kind}: {size([e for e in entries if e[0].parent.name == kind])}")
        return
    drop = entries if action == "clear" else [e for e in entries if keys.stale(e[2])]
    freed = store.remove(p for p, _, _ in drop)
    print(f"{store.cache_dir()}: removed {len(drop)} entries ({freed / 1e6:.1f} MB); "
          f"kept {size([e for e in entries if e not in drop])}")


if __name__ == "__main__":
    sys.exit(main())
