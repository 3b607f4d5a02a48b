"""The seed experiments as named configs and the ``kdnb`` command line (issue 18): every experiment
runs in the quick profile on a tiny budget; a real ``kdnb run`` is SIGKILLed mid-way and
``kdnb resume`` ends with the weights of an uninterrupted run; every bad input gets one line and a
non-zero exit status, never a traceback."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdnb import data as datasets, store
from kdnb.book import cli, configs, report, run as runs

ROOT = Path(__file__).resolve().parent.parent


def kdnb(*argv):
    script = Path(sys.executable).parent / "kdnb"
    return [str(script)] if script.exists() else [sys.executable, "-m", "kdnb.book.cli"], list(argv)


@pytest.mark.parametrize("name", list(configs.CONFIGS))
def test_every_experiment_runs_in_the_quick_profile_on_a_tiny_budget(name):
    r = runs.run(name, "quick", seeds=1, epochs=1)
    setting = configs.get(name).quick
    assert list(r["arms"]) == [a.name for a in setting.arms]
    assert all(len(v["test_acc"]) == 1 and 0 <= v["test_acc"][0] <= 1 for v in r["arms"].values())
    assert 0 < r["teacher"]["test_acc"] <= 1 and r["epochs"] == 1 and not report.is_result(r)


def test_every_config_names_its_pieces_and_says_what_it_lacks():
    for c in configs.CONFIGS.values():
        assert c.description and c.chapter and c.seed
        for s in (c.quick, c.full):
            assert s.data and s.teacher and s.arms and s.seeds >= 3
            for fit_args in [s.teacher_fit, s.student_fit]:
                assert {"epochs", "batch_size", "lr"} <= set(fit_args)
            assert len({a.name for a in s.arms}) == len(s.arms)
            names = [a.name for a in s.arms]
            for a in s.arms:  # a teacher arm comes before its students
                assert a.teacher == "teacher" or names.index(a.teacher) < names.index(a.name)
        assert runs.needs(c, "quick") == []
    # A config whose pieces kdnb lacks says which, and kdnb run refuses it naming them.
    from dataclasses import replace
    c = configs.get("seed004-mnist")
    arms = c.full.arms + (configs.Arm("WGAN", {"name": "mlp", "width": 3}, "wgan_someday"),)
    lacking = replace(c, full=replace(c.full, data="imagenet", teacher={"name": "vit"}, arms=arms))
    assert runs.needs(lacking, "full") == ["data set 'imagenet'", "model 'vit' (kdnb.models has "
                                           + ", ".join(runs.models.BUILDERS) + ")", "model mlp with width",
                                           "method 'wgan_someday'"]


def test_every_config_builds_on_its_data_and_a_smoke_run_trains_a_covering_few(monkeypatch):
    """Every model of every config is built and run on one input of its data set on the meta
    device (no memory): what the full profile's smoke test no longer trains, it still builds."""
    for c in configs.CONFIGS.values():
        for profile in ("quick", "full"):
            s = c.setting(profile)
            for spec in [s.teacher, *(a.student for a in s.arms)]:
                assert configs.spec_problem(spec) or runs.flops(spec, s.data) > 0, (c.name, profile, spec)
    runnable = [n for n, c in configs.CONFIGS.items() if not runs.needs(c, "full")]
    assert runs.selection("full") == runnable  # a real run: all of them
    monkeypatch.setenv("KDNB_SMOKE", "1")
    monkeypatch.setattr(runs, "on_disk", lambda data, root=None: data in ("mnist", "cifar10"))
    few = runs.selection("full")
    assert set(few) < set(runnable) and "seed001-exp2" not in few  # its 16 arms: exp6 covers them
    here = [configs.get(n) for n in runnable if runs.on_disk(configs.get(n).full.data)]
    used = set().union(*(runs.features(c, "full") for c in here))
    assert used == set().union(*(runs.features(configs.get(n), "full") for n in few if configs.get(n) in here))
    assert {configs.get(n).full.data for n in few} == {configs.get(n).full.data for n in runnable}


def read(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def test_a_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    # The session's cache: the runs (with --out) train without it, but read MNIST-1D from it,
    # generated once here rather than by each process.
    datasets.load("mnist1d")
    env = dict(os.environ, KDNB_PROGRESS="0", KDNB_DEVICE="cpu")
    env.pop("KDNB_SMOKE", None)
    # seed001-exp5: a teacher, and students of students (the distilled student teaches the next).
    args = ["run", "seed001-exp5", "--profile", "quick", "--seeds", "1", "--epochs", "5"]
    start = lambda *argv: subprocess.Popen(sum(kdnb(*argv), []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT)
    a, b = tmp_path / "uninterrupted", tmp_path / "killed"
    # The uninterrupted reference runs here (this process has paid torch's imports already); the
    # run that is killed and the one that resumes it are real processes of the installed command.
    assert cli.main(args + ["--out", str(a)]) == 0
    killed = start(*args, "--out", str(b))
    # Kill once the second arm's first student is past its first epoch: the teacher and the
    # first arm are done, this one is half-way.
    ckpt = b / "checkpoints" / "arm01-KD-0.6-T-2-s0.ckpt"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert killed.poll() is None, killed.stdout.read().decode()
        assert time.monotonic() < deadline, "the run never reached the second arm"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert not (b / "results.json").exists()
    at_kill = store.load(ckpt)["epoch"]
    assert at_kill < 4, "the kill should land before the unit's last epoch"
    log = read(start("resume", str(b)))
    assert "results:" in log
    first, second = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    models_a, models_b = sorted((a / "models").glob("*.pt")), sorted((b / "models").glob("*.pt"))
    assert [p.name for p in models_a] == [p.name for p in models_b] and len(models_a) == 1 + 4
    for pa, pb in zip(models_a, models_b):
        sa, sb = store.load(pa), store.load(pb)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{pa.name} differs after resuming"
    assert first["arms"] == second["arms"] and first["teacher"] == second["teacher"]
    drop_time = lambda h: {k: v for k, v in h.items() if k != "time"}
    assert {k: drop_time(h) for k, h in first["histories"].items()} == \
        {k: drop_time(h) for k, h in second["histories"].items()}
    for key in ("setting", "machine", "versions", "wall_time_s", "train_time_s", "figures"):
        assert key in second
    assert all(Path(f).exists() for f in second["figures"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run through the CLI, in its own folder."""
    out = tmp_path_factory.mktemp("runs") / "exp4"
    assert cli.main(["run", "seed001-exp4", "--profile", "quick", "--seeds", "2", "--epochs", "1",
                     "--out", str(out)]) == 0
    return out


def test_run_writes_results_resume_of_a_finished_run_retrains_nothing_and_report_tables_them(finished, capsys):
    results = json.loads((finished / "results.json").read_text())
    assert results["experiment"] == "seed001-exp4" and results["seeds"] == [0, 1]
    assert set(results["histories"]) == {"teacher", "arm00-alone-s0", "arm00-alone-s1", "arm01-self-teacher-s0",
                                         "arm01-self-teacher-s1"}
    assert (finished / "checkpoints" / "arm01-self-teacher-s1.ckpt").exists()
    capsys.readouterr()
    stamp = {p: p.stat().st_mtime_ns for p in (finished / "checkpoints").iterdir()}
    assert cli.main(["resume", str(finished)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (finished / "checkpoints").iterdir()} == stamp  # nothing retrained
    assert json.loads((finished / "results.json").read_text())["arms"] == results["arms"]
    capsys.readouterr()
    assert cli.main(["report", str(finished), str(finished / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "| seed001-exp4 | self-teacher | quick (cut budget: not a result) | — |" in out
    assert "| seed001-exp4 | teacher | quick (cut budget: not a result) | 93.5 % |" in out
    assert (finished / "figures" / "results.png").stat().st_size > 1000


def test_the_full_column_reads_only_finished_full_runs_at_their_own_budget(finished, tmp_path):
    assert report.find_results(finished.parent, "full") == {}  # a quick run
    assert report.find_results(finished.parent, "quick") == {}  # a cut budget is not a result
    r = json.loads((finished / "results.json").read_text())
    whole = {**r, "profile": "full", "epochs": None, "seeds": [0, 1, 2]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(whole))
    found = report.find_results(tmp_path, "full")
    assert list(found) == ["seed001-exp4"]
    table = report.rows(configs.get("seed001-exp4"), None, found["seed001-exp4"])
    assert table[0][3] == "not run yet" and table[1][4].endswith("(2 seeds)")


def test_list_shows_every_experiment_with_its_chapter(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for c in configs.CONFIGS.values():
        assert any(line.split()[:3] == [c.name, "ch.", c.chapter] for line in out.splitlines()), c.name
    assert "profile quick" in out and "cifar10" in out
    assert cli.main(["list", "seed001-exp2"]) == 0
    out = capsys.readouterr().out
    assert '"optimizer": "sgd"' in out and "full profile" in out and "resnet18_cifar" in out


@pytest.mark.parametrize("command", [[], ["list"], ["run"], ["resume"], ["report"], ["download"], ["cache"]])
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(command + ["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: kdnb {' '.join(command)}".rstrip())


def bad_inputs(tmp):
    """``(argv, exit status, what the one line must say)`` for every way to get the CLI wrong."""
    (tmp / "empty").mkdir()
    (tmp / "garbage.json").write_text("{not json")
    (tmp / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp / "unfinished").mkdir()
    (tmp / "unfinished" / "run.json").write_text("{}")
    (tmp / "changed").mkdir()
    job = runs.plan("seed001-exp4", "quick", 1, 1)
    job["setting"]["arms"][1]["options"]["T"] = 3.0
    (tmp / "changed" / "run.json").write_text(json.dumps(job))
    (tmp / "another").mkdir()
    (tmp / "another" / "run.json").write_text(json.dumps(runs.plan("seed001-exp5", "quick", 1, 1)))
    return [
        ([], 0, None),
        (["frobnicate"], 2, r"argument command: invalid choice: 'frobnicate'"),
        (["--bogus"], 2, r"unrecognized arguments: --bogus"),
        (["list", "seed999"], 2, r"argument name: must be one of seed000, .* got 'seed999'"),
        (["run"], 2, r"the following arguments are required: name"),
        (["run", "seed999"], 2, r"argument name: must be one of seed000, .* got 'seed999'"),
        (["run", "seed000", "--profile", "medium"], 2, r"argument --profile: invalid choice: 'medium'"),
        (["run", "seed000", "--seeds", "0"], 2, r"argument --seeds: must be a positive integer, got '0'"),
        (["run", "seed000", "--seeds", "two"], 2, r"argument --seeds: must be a positive integer, got 'two'"),
        (["run", "seed000", "--seeds", "-1"], 2, r"argument --seeds: .*"),
        (["run", "seed000", "--epochs", "0"], 2, r"argument --epochs: must be a positive integer, got '0'"),
        (["run", "seed000", "--epochs", "1.5"], 2, r"argument --epochs: must be a positive integer, got '1.5'"),
        (["run", "seed000", "--frob"], 2, r"unrecognized arguments: --frob"),
        *([(["run", name, "--profile", "full"], 1, rf"'{name}' can't run in the full profile yet: kdnb lacks ")
           for name in configs.CONFIGS if runs.needs(configs.get(name), "full")][:1]),
        (["run", "seed001-exp1", "--profile", "full", "--data", str(tmp / "empty"), "--out", str(tmp / "o")], 1,
         r"mnist"),
        (["run", "seed001-exp4", "--seeds", "1", "--epochs", "1", "--out", str(tmp / "another")], 1,
         r"holds another run \(experiment, setting differ\); resume it with `kdnb resume"),
        (["resume"], 2, r"the following arguments are required: dir"),
        (["resume", str(tmp / "nowhere")], 1, r"holds no run \(no run.json\): start one with `kdnb run NAME"),
        (["resume", str(tmp / "unfinished")], 1, r"error: "),
        (["resume", str(tmp / "changed")], 1, r"experiment 'seed001-exp4' has changed since .* was started"),
        (["report"], 2, r"the following arguments are required: DIR"),
        (["report", str(tmp / "nowhere")], 1, r"holds no run: no results.json"),
        (["report", str(tmp / "unfinished")], 1, r"holds an unfinished run \(resume it with `kdnb resume`\)"),
        (["report", str(tmp / "garbage.json")], 1, r"garbage\.json. should hold the results of a kdnb run \(results\.json\) but is empty or not valid JSON"),
        (["report", str(tmp / "other.json")], 1, r"is not a results file of kdnb run \(no experiment and arms\)"),
        (["download", "imagenet"], 2, r"name must be one of mnist, fashion_mnist, cifar10, svhn, got 'imagenet'"),
        (["cache", "explode"], 2, r"argument action: invalid choice: 'explode'"),
    ]


def test_every_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path, capsys, monkeypatch):
    import re
    monkeypatch.setenv("KDNB_DATA", str(tmp_path / "empty"))
    for argv, status, pattern in bad_inputs(tmp_path):
        capsys.readouterr()
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code == status, (argv, code, err)
        if pattern is None:
            continue
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("kdnb"), (argv, err)
        assert re.search(pattern, err), (argv, pattern, err)
    monkeypatch.setenv("KDNB_PROFILE", "slow")
    assert cli.main(["run", "seed000"]) == 1
    assert "profile must be one of quick, full" in capsys.readouterr().err


def test_the_command_runs_as_a_program(tmp_path):
    """The installed entry point: exit status and one line on stderr, in a fresh process."""
    done = subprocess.run(sum(kdnb("run", "seed999"), []), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "seed999" in done.stderr


def test_a_seed_offset_shifts_every_seed_of_a_run_and_its_resume_keeps_it(monkeypatch, tmp_path):
    """$KDNB_SEED_OFFSET=k: the teacher trains with seed k, the students with k, k + 1, …, and the
    label fraction is drawn with k; the run keeps k, so resuming it under another offset trains
    the same seeds. Units are named by the seed's index, whatever the offset."""
    monkeypatch.setenv("KDNB_SEED_OFFSET", "1000")
    job = runs.plan("seed003-5pct", "quick", 2, 1)
    assert job["seed_offset"] == 1000 and job["seeds"] == [1000, 1001]
    units = runs.units(job["setting"], 100, job["seeds"])
    assert units[0][:3] == ("teacher", None, 1000)
    assert [(u[0], u[2]) for u in units[1:3]] == [("arm00-alone-5-s0", 1000), ("arm00-alone-5-s1", 1001)]
    out = tmp_path / "run"
    shifted = runs.run("seed003-5pct", "quick", seeds=2, epochs=1, out=out)
    assert shifted["seeds"] == [1000, 1001]
    monkeypatch.setenv("KDNB_SEED_OFFSET", "0")
    again = runs.resume(out)
    assert again["seeds"] == [1000, 1001] and again["arms"] == shifted["arms"]
    plain = runs.run("seed003-5pct", "quick", seeds=2, epochs=1)
    assert plain["seeds"] == [0, 1] and plain["arms"] != shifted["arms"]
