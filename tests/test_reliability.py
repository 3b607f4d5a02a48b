"""Reliability (issue 5): bad input is refused early with a message a reader can act on;
the losses keep their properties on any input; corrupt, stale and untrusted files are never
used; a non-finite loss stops training with the facts needed to fix it; two processes sharing
a cache entry compute it once. Killed runs are in test_resume.py."""
import hashlib
import io
import math
import os
import pickle
import re
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kdnb import cached, data as kdata, keys, losses, models, store, train
from kdnb.book import cli, profiles
from kdnb.store import CorruptFileError
from kdnb.teachers import TeacherCache
from kdnb.methods import CrossEntropy, Distill
from kdnb.train import Batch, NonFiniteLoss

sys.path.insert(0, str(Path(__file__).parent))
from resume_worker import toy_data  # noqa: E402

ROOT = Path(__file__).parent.parent
MLP = {"name": "mlp", "hidden": [16]}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDNB_PROGRESS", "0")


@pytest.fixture(scope="module")
def toy():
    return toy_data()


def student(d, classes=None, in_shape=None):
    return models.build(MLP, in_shape or d.shape, classes or d.classes, seed=0)


def quick_fit(model, d, objective=None, **kwargs):
    args = dict(epochs=1, batch_size=32, device="cpu", progress=False)
    return train.fit(model, d, objective, **{**args, **kwargs})


# ---------------------------------------------------------------------------------------------
# Bad input: each call is refused with an error naming the argument, the value and what is allowed.

S, T4 = torch.randn(4, 10), torch.randn(4, 10)
Y = torch.tensor([0, 1, 2, 3])


def nan_at(t, i, j, value=float("nan")):
    t = t.clone()
    t[i, j] = value
    return t


def fit_with(**kwargs):
    return lambda e: quick_fit(student(e.toy), e.toy, **kwargs)


def fit_on(change):
    """fit a fitting student on a copy of the toy data with fields replaced."""
    return lambda e: quick_fit(student(e.toy), replace(e.toy, **change(e.toy)))


def distill_fit(make_teacher, **kwargs):
    return lambda e: quick_fit(student(e.toy), e.toy, Distill(make_teacher(e), **kwargs))


def cli_main(*argv):
    return lambda e: cli.main(list(argv))


def bad(id, call, exc, arg, value, allowed):
    return pytest.param(call, exc, arg, value, allowed, id=id)


BAD = [
    # kdnb.losses: temperature, weight, logits, labels
    bad("kd T=0", lambda e: losses.kd_loss(S, T4, T=0), ValueError, r"^T ", r"got 0$", r"\(0, inf\)"),
    bad("kd T<0", lambda e: losses.kd_loss(S, T4, T=-2.0), ValueError, r"^T ", r"got -2\.0", r"\(0, inf\)"),
    bad("kd T=nan", lambda e: losses.kd_loss(S, T4, T=float("nan")), ValueError, r"^T ", r"got nan", r"\(0, inf\)"),
    bad("kd T=inf", lambda e: losses.kd_loss(S, T4, T=math.inf), ValueError, r"^T ", r"got inf", r"\(0, inf\)"),
    bad("kd T str", lambda e: losses.kd_loss(S, T4, T="4"), TypeError, r"^T ", r"got '4' \(str\)", r"real number"),
    bad("kd T bool", lambda e: losses.kd_loss(S, T4, T=True), TypeError, r"^T ", r"got True", r"real number"),
    bad("kd T tensor nan", lambda e: losses.kd_loss(S, T4, T=torch.tensor(float("nan"))), ValueError, r"^T ",
        r"got nan", r"\(0, inf\)"),
    bad("hinton alpha<0", lambda e: losses.hinton_loss(S, T4, Y, alpha=-0.1), ValueError, r"^alpha ", r"got -0\.1",
        r"\[0, 1\]"),
    bad("hinton alpha>1", lambda e: losses.hinton_loss(S, T4, Y, alpha=1.5), ValueError, r"^alpha ", r"got 1\.5",
        r"\[0, 1\]"),
    bad("hinton alpha=nan", lambda e: losses.hinton_loss(S, T4, Y, alpha=float("nan")), ValueError, r"^alpha ",
        r"got nan", r"\[0, 1\]"),
    bad("hinton alpha None", lambda e: losses.hinton_loss(S, T4, Y, alpha=None), TypeError, r"^alpha ", r"got None",
        r"real number"),
    bad("hinton T=-inf", lambda e: losses.hinton_loss(S, T4, Y, T=-math.inf), ValueError, r"^T ", r"got -inf",
        r"\(0, inf\)"),
    bad("logits int dtype", lambda e: losses.kd_loss(S.long(), T4), TypeError, r"^student_logits ",
        r"torch\.int64", r"floating-point"),
    bad("logits list", lambda e: losses.kd_loss(S, T4.tolist()), TypeError, r"^teacher_logits ", r"got list",
        r"torch\.Tensor"),
    bad("logits 1-D", lambda e: losses.kd_loss(S[0], T4[0]), ValueError, r"^student_logits ", r"got \(10,\)",
        r"\(batch >= 1, classes >= 2\)"),
    bad("logits 3-D", lambda e: losses.kd_loss(S[None], T4[None]), ValueError, r"^student_logits ",
        r"got \(1, 4, 10\)", r"\(batch >= 1, classes >= 2\)"),
    bad("logits empty batch", lambda e: losses.kd_loss(S[:0], T4[:0]), ValueError, r"^student_logits ",
        r"got \(0, 10\)", r"batch >= 1"),
    bad("logits one class", lambda e: losses.kd_loss(S[:, :1], T4[:, :1]), ValueError, r"^student_logits ",
        r"got \(4, 1\)", r"classes >= 2"),
    bad("teacher class count", lambda e: losses.kd_loss(S, T4[:, :5]), ValueError, r"^teacher_logits ",
        r"\(4, 5\)", r"must equal student_logits shape \(4, 10\)"),
    bad("teacher batch size", lambda e: losses.hinton_loss(S, T4[:3], Y), ValueError, r"^teacher_logits ",
        r"\(3, 10\)", r"must equal student_logits shape \(4, 10\)"),
    bad("student logits nan", lambda e: losses.kd_loss(nan_at(S, 1, 3), T4), ValueError, r"^student_logits ",
        r"got nan at \[1, 3\]", r"must be finite"),
    bad("teacher logits inf", lambda e: losses.hinton_loss(S, nan_at(T4, 2, 0, math.inf), Y), ValueError,
        r"^teacher_logits ", r"got inf at \[2, 0\]", r"must be finite"),
    bad("labels float", lambda e: losses.hinton_loss(S, T4, Y.float()), TypeError, r"^labels ", r"torch\.float32",
        r"integer tensor"),
    bad("labels too big", lambda e: losses.hinton_loss(S, T4, torch.tensor([0, 1, 2, 10])), ValueError, r"^labels ",
        r"got values in \[0, 10\]", r"\[0, 9\] for 10 classes"),
    bad("labels negative", lambda e: losses.hinton_loss(S, T4, torch.tensor([0, -1, 2, 3])), ValueError,
        r"^labels ", r"got values in \[-1, 3\]", r"\[0, 9\]"),
    bad("labels shape", lambda e: losses.hinton_loss(S, T4, Y[:3]), ValueError, r"^labels ", r"got \(3,\)",
        r"shape \(4,\)"),
    bad("soft_targets T=0", lambda e: losses.soft_targets(S, T=0.0), ValueError, r"^T ", r"got 0\.0", r"\(0, inf\)"),
    bad("smooth_labels eps", lambda e: losses.smooth_labels(Y, 10, 1.5), ValueError, r"^epsilon ", r"got 1\.5",
        r"\[0, 1\]"),
    bad("virtual teacher p low", lambda e: losses.virtual_teacher_logits(Y, 10, 0.05), ValueError,
        r"^correct_prob ", r"got 0\.05", r"\[0\.1, 1\)"),
    bad("virtual teacher p=1", lambda e: losses.virtual_teacher_logits(Y, 10, 1.0), ValueError, r"^correct_prob ",
        r"got 1\.0", r"\[0\.1, 1\)"),
    bad("hint shapes", lambda e: losses.hint_loss(torch.randn(4, 16), torch.randn(4, 8)), ValueError,
        r"^teacher_features ", r"\(4, 8\)", r"must equal student_features shape \(4, 16\)"),
    bad("attention sizes", lambda e: losses.attention_loss(torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)),
        ValueError, r"teacher", r"\(2, 16\)", r"same spatial size"),

    # kdnb.data
    bad("data unknown name", lambda e: kdata.load("imagenet"), ValueError, r"^name ", r"got 'imagenet'",
        r"digits, mnist1d, mnist"),
    bad("data name case", lambda e: kdata.load("Digits"), ValueError, r"^name ", r"got 'Digits'", r"digits"),
    bad("data name int", lambda e: kdata.load(7), ValueError, r"^name ", r"got 7", r"digits"),
    bad("val_fraction=0", lambda e: kdata.load("digits", val_fraction=0), ValueError, r"^val_fraction ", r"got 0",
        r"\(0, 1\)"),
    bad("val_fraction=1", lambda e: kdata.load("digits", val_fraction=1.0), ValueError, r"^val_fraction ",
        r"got 1\.0", r"\(0, 1\)"),
    bad("fraction=0", lambda e: kdata.load("digits", fraction=0), ValueError, r"^fraction ", r"got 0", r"\(0, 1\]"),
    bad("fraction>1", lambda e: kdata.load("digits", fraction=1.5), ValueError, r"^fraction ", r"got 1\.5",
        r"\(0, 1\]"),
    bad("fraction<0", lambda e: kdata.load("digits", fraction=-0.2), ValueError, r"^fraction ", r"got -0\.2",
        r"\(0, 1\]"),
    bad("fraction nan", lambda e: kdata.load("digits", fraction=float("nan")), ValueError, r"^fraction ",
        r"got nan", r"\(0, 1\]"),
    bad("fraction str", lambda e: kdata.load("digits", fraction="half"), TypeError, r"^fraction ", r"got 'half'",
        r"real number"),
    bad("subset fraction=0", lambda e: e.toy.subset(0.0), ValueError, r"^fraction ", r"got 0\.0", r"\(0, 1\]"),
    bad("split name", lambda e: e.toy.split("validation"), ValueError, r"^split ", r"got 'validation'",
        r"'train', 'val', 'test'"),
    bad("root missing", lambda e: kdata.load("mnist", root=e.tmp / "nowhere"), FileNotFoundError, r"^root ",
        r"nowhere'", r"existing folder"),
    bad("root without files", lambda e: kdata.load("cifar10", root=e.tmp), FileNotFoundError, r"cifar10",
        r"not found under '.*test_bad_input", r"KDNB_DATA"),

    # kdnb.models
    bad("in_shape empty", lambda e: models.mlp(()), ValueError, r"^in_shape ", r"got \(\)",
        r"non-empty tuple of positive ints"),
    bad("in_shape zero", lambda e: models.mlp((1, 0)), ValueError, r"^in_shape ", r"got \(1, 0\)", r"positive ints"),
    bad("classes=0", lambda e: models.mlp((1, 8), classes=0), ValueError, r"^classes ", r"got 0$",
        r"positive integer"),
    bad("classes float", lambda e: models.mlp((1, 8), classes=2.5), ValueError, r"^classes ", r"got 2\.5",
        r"positive integer"),
    bad("dropout=1", lambda e: models.mlp((1, 8), dropout=1.0), ValueError, r"^dropout ", r"got 1\.0", r"\[0, 1\)"),
    bad("dropout nan", lambda e: models.mlp((1, 8), dropout=float("nan")), ValueError, r"^dropout ", r"got nan",
        r"\[0, 1\)"),
    bad("dropout str", lambda e: models.mlp((1, 8), dropout="0.5"), TypeError, r"^dropout ", r"got '0\.5'",
        r"real number"),
    bad("hidden width 0", lambda e: models.mlp((1, 8), hidden=(0,)), ValueError, r"^hidden ", r"got 0$",
        r"positive integer"),
    bad("convnet dims", lambda e: models.convnet((1, 8, 8), dims=3), ValueError, r"^dims ", r"dims=3", r"1 or 2"),
    bad("convnet depth", lambda e: models.convnet((1, 8, 8), depth=0), ValueError, r"^depth ", r"got 0$",
        r"positive integer"),
    bad("convnet width", lambda e: models.convnet((1, 8, 8), width=-4), ValueError, r"^width ", r"got -4",
        r"positive integer"),
    bad("convnet dropout", lambda e: models.convnet((1, 8, 8), dropout=1.5), ValueError, r"^dropout ",
        r"got 1\.5", r"\[0, 1\)"),
    bad("build unknown model", lambda e: models.build({"name": "vgg"}, (1, 8, 8), 10), ValueError, r"name",
        r"got \{'name': 'vgg'\}", r"mlp, convnet, conv_mlp, resnet18_cifar"),
    bad("build spec str", lambda e: models.build("mlp", (1, 8, 8), 10), ValueError, r"spec", r"got 'mlp'",
        r"dict with name one of"),
    bad("build unknown key", lambda e: models.build({"name": "mlp", "depth": 3}, (1, 8, 8), 10), ValueError,
        r"spec key", r"'depth'", r"allowed: dropout, hidden"),

    # kdnb.train.fit
    bad("fit epochs=0", fit_with(epochs=0), ValueError, r"^epochs ", r"got 0$", r"positive integer"),
    bad("fit epochs float", fit_with(epochs=2.5), ValueError, r"^epochs ", r"got 2\.5", r"positive integer"),
    bad("fit batch_size<0", fit_with(batch_size=-1), ValueError, r"^batch_size ", r"got -1", r"positive integer"),
    bad("fit lr=0", fit_with(lr=0), ValueError, r"^lr ", r"got 0$", r"\(0, inf\)"),
    bad("fit lr nan", fit_with(lr=float("nan")), ValueError, r"^lr ", r"got nan", r"\(0, inf\)"),
    bad("fit lr str", fit_with(lr="fast"), TypeError, r"^lr ", r"got 'fast'", r"real number"),
    bad("fit weight_decay<0", fit_with(weight_decay=-0.1), ValueError, r"^weight_decay ", r"got -0\.1",
        r"\[0, inf\)"),
    bad("fit optimizer", fit_with(optimizer="rmsprop"), ValueError, r"^optimizer ", r"got 'rmsprop'",
        r"'adam', 'adamw' or 'sgd'"),
    bad("fit schedule", fit_with(schedule="step"), ValueError, r"^schedule ", r"got 'step'",
        r"'constant' or 'cosine'"),
    bad("fit select", fit_with(select="worst"), ValueError, r"^select ", r"got 'worst'", r"'best' or 'last'"),
    bad("fit model str", lambda e: quick_fit("mlp", e.toy), TypeError, r"^model ", r"got str", r"torch\.nn\.Module"),
    bad("fit data tuple", lambda e: quick_fit(student(e.toy), e.toy.split("train")), TypeError, r"^data ",
        r"got tuple", r"kdnb\.data\.Data"),
    bad("fit objective int", lambda e: quick_fit(student(e.toy), e.toy, 42), TypeError, r"^method ", r"got int",
        r"callable"),
    bad("fit empty data", fit_on(lambda d: dict(x_train=d.x_train[:0], y_train=d.y_train[:0])), ValueError,
        r"^data\.y_train ", r"empty training split", r"at least 1 sample"),
    bad("fit x int dtype", fit_on(lambda d: dict(x_train=d.x_train.long())), TypeError, r"^data\.x_train ",
        r"torch\.int64", r"floating-point"),
    bad("fit y float dtype", fit_on(lambda d: dict(y_train=d.y_train.float())), TypeError, r"^data\.y_train ",
        r"torch\.float32", r"int64"),
    bad("fit labels out of range", fit_on(lambda d: dict(y_train=d.y_train + 1)), ValueError, r"^data\.y_train ",
        r"got values in \[1, 4\]", r"\[0, 3\]"),
    bad("fit x/y lengths", fit_on(lambda d: dict(y_train=d.y_train[:-1])), ValueError, r"^data\.x_train ",
        r"128 rows, but data\.y_train has 127", r"one row per label"),
    bad("fit model classes", lambda e: quick_fit(student(e.toy, classes=3), e.toy), ValueError, r"^model ",
        r"3 classes", r"'toy' has 4"),
    bad("fit model input shape", lambda e: quick_fit(student(e.toy, in_shape=(1, 4, 4)), e.toy), ValueError,
        r"^model ", r"shape \(1, 8, 8\)", r"in_shape=\(1, 8, 8\)"),

    # kdnb.methods and teachers
    bad("Distill T=0", lambda e: Distill(e.teacher, T=0), ValueError, r"^T ", r"got 0$", r"\(0, inf\)"),
    bad("Distill T nan", lambda e: Distill(e.teacher, T=float("nan")), ValueError, r"^T ", r"got nan", r"\(0, inf\)"),
    bad("Distill alpha>1", lambda e: Distill(e.teacher, alpha=1.2), ValueError, r"^alpha ", r"got 1\.2", r"\[0, 1\]"),
    bad("Distill alpha schedule", lambda e: Distill(e.teacher, alpha=lambda epoch, epochs: 2.0), ValueError, r"^alpha ",
        r"got 2\.0", r"\[0, 1\]"),
    bad("Distill teacher int", lambda e: Distill(42), TypeError, r"^teacher ", r"got int",
        r"TeacherCache, an nn\.Module or a callable"),
    bad("CrossEntropy smoothing", lambda e: CrossEntropy(label_smoothing=-0.1), ValueError, r"^label_smoothing ",
        r"got -0\.1", r"\[0, 1\]"),
    bad("teacher model classes", distill_fit(lambda e: student(e.toy, classes=3)), ValueError, r"^teacher ",
        r"3 classes", r"'toy' has 4"),
    bad("teacher cache classes", distill_fit(lambda e: TeacherCache(torch.randn(len(e.toy.y_train), 7))),
        ValueError, r"^teacher ", r"7 classes", r"'toy' has 4"),
    bad("teacher cache rows", distill_fit(lambda e: TeacherCache(torch.randn(10, 4))), ValueError, r"^teacher ",
        r"holds 10 rows", r"has 128 samples"),
    bad("teacher cache augmented", lambda e: TeacherCache(torch.randn(8, 4))(Batch(S, Y, Y, augmented=True)),
        ValueError, r"augment=True", r"un-augmented", r"live teacher"),

    # kdnb.store, kdnb.book.profiles, the CLI
    bad("store.load missing", lambda e: store.load(e.tmp / "none.pt"), FileNotFoundError, r"^path ",
        r"none\.pt'", r"kdnb\.store\.save"),
    bad("store.load folder", lambda e: store.load(e.tmp), FileNotFoundError, r"^path ", r"test_bad_input",
        r"kdnb\.store\.save"),
    bad("profile unknown", lambda e: profiles.get("fast"), ValueError, r"^profile ", r"got 'fast'", r"quick, full"),
    bad("profile from env", lambda e: (e.monkeypatch.setenv("KDNB_PROFILE", "slow"), profiles.get()), ValueError,
        r"KDNB_PROFILE", r"got 'slow'", r"quick, full"),
    bad("cli download unknown", cli_main("download", "imagenet"), SystemExit, r"name", r"got 'imagenet'",
        r"mnist, fashion_mnist, cifar10, svhn"),
    bad("cli download embedded", cli_main("download", "digits"), SystemExit, r"name", r"got 'digits'",
        r"mnist, fashion_mnist, cifar10, svhn"),
    bad("cli unknown command", cli_main("frobnicate"), SystemExit, r"command", r"'frobnicate'",
        r"choose from .*list.*download.*cache"),
]

# kdnb.sweep and kdnb.book.widgets: each row skips where its module is absent.
M = {"alpha": 0.5, "T": 4.0, "seed": 0}
TL = torch.randn(128, 4)  # teacher logits for the toy training split


def grid_fit(members=(M,), teacher_logits=TL, make_student=MLP, **kwargs):
    return lambda e: pytest.importorskip("kdnb.sweep").fit_grid(make_student, e.toy, teacher_logits, list(members),
                                                                 **{"epochs": 1, "device": "cpu", **kwargs})


def explorer(label=0, t=T4[0], s=S[0], **kwargs):
    return lambda e: pytest.importorskip("kdnb.book.widgets").temperature_widget(t, s, label, **kwargs)


OPTIONAL_BAD = [
    bad("grid no members", grid_fit(members=()), ValueError, r"^members ", r"got \[\]", r"non-empty list"),
    bad("grid member keys", grid_fit(members=({"alpha": 0.5},)), ValueError, r"^members\[0\]", r"\{'alpha': 0\.5\}",
        r"exactly the keys alpha, T, seed"),
    bad("grid member alpha", grid_fit(members=({**M, "alpha": 1.5},)), ValueError, r"alpha ", r"got 1\.5",
        r"\[0, 1\]"),
    bad("grid member T=0", grid_fit(members=({**M, "T": 0},)), ValueError, r"T ", r"got 0$", r"\(0, inf\)"),
    bad("grid member T nan", grid_fit(members=({**M, "T": float("nan")},)), ValueError, r"T ", r"got nan",
        r"\(0, inf\)"),
    bad("grid member seed", grid_fit(members=({**M, "seed": -1},)), ValueError, r"seed ", r"got -1",
        r"non-negative integer"),
    bad("grid teacher shape", grid_fit(teacher_logits=TL[:, :3]), ValueError, r"^teacher_logits ",
        r"got \(128, 3\)", r"shape \(128, 4\)"),
    bad("grid teacher nan", grid_fit(teacher_logits=nan_at(TL, 5, 1)), ValueError, r"^teacher_logits ",
        r"got nan at \[5, 1\]", r"must be finite"),
    bad("grid make_student", grid_fit(make_student=42), TypeError, r"^make_student ", r"got int",
        r"model spec dict or a callable"),
    bad("grid student classes", grid_fit(make_student=lambda: models.mlp((1, 8, 8), (16,), classes=3)), ValueError,
        r"student", r"3 classes", r"'toy' has 4"),
    bad("grid vectorize", grid_fit(vectorize="yes"), ValueError, r"^vectorize ", r"got 'yes'",
        r"'auto', True or False"),
    bad("grid epochs", grid_fit(epochs=0), ValueError, r"^epochs ", r"got 0$", r"positive integer"),
    bad("grid data_seed", grid_fit(data_seed=-1), ValueError, r"^data_seed ", r"got -1", r"non-negative integer"),
    bad("widget label", explorer(label=10), ValueError, r"^label ", r"got 10", r"\[0, 9\]"),
    bad("widget label float", explorer(label=2.0), ValueError, r"^label ", r"got 2\.0", r"int in \[0, 9\]"),
    bad("widget shapes", explorer(s=S[0, :5]), ValueError, r"^teacher_logits ", r"\(10,\)",
        r"must equal student_logits shape \(5,\)"),
    bad("widget T=0", explorer(T=0), ValueError, r"^T ", r"got 0$", r"\(0, inf\)"),
    bad("widget alpha", explorer(alpha=2.0), ValueError, r"^alpha ", r"got 2\.0", r"\[0, 1\]"),
    bad("widget logits nan", explorer(t=nan_at(T4, 0, 3)[0]), ValueError, r"^teacher_logits ", r"got nan",
        r"must be finite"),
]


@pytest.mark.parametrize("call, exc, arg, value, allowed", BAD + OPTIONAL_BAD)
def test_bad_input_is_refused_with_a_clear_message(call, exc, arg, value, allowed, toy, tmp_path, monkeypatch,
                                                    capsys):
    e = SimpleNamespace(toy=toy, tmp=tmp_path, monkeypatch=monkeypatch, teacher=student(toy))
    with pytest.raises(exc) as err:
        call(e)
    message = capsys.readouterr().err if exc is SystemExit else str(err.value)
    if exc is SystemExit:
        assert err.value.code == 2, "a usage error, not a crash"
    for part, pattern in (("argument", arg), ("value", value), ("allowed", allowed)):
        assert re.search(pattern, message, re.M), f"message does not name the {part} ({pattern!r}): {message}"


def test_bad_input_table_is_large():
    assert len(BAD) >= 40  # without the rows that may skip


# ---------------------------------------------------------------------------------------------
# Properties of the losses on any logits.

def logit_pairs(max_abs=1e4):
    shape = st.tuples(st.integers(1, 5), st.integers(2, 6))
    elements = st.floats(-max_abs, max_abs, allow_nan=False, width=64)
    return shape.flatmap(lambda s: st.tuples(hnp.arrays(np.float64, s, elements=elements),
                                             hnp.arrays(np.float64, s, elements=elements)))


temperatures = st.floats(0.05, 20.0)
alphas = st.floats(0.0, 1.0)
PROPERTY = settings(max_examples=40, deadline=None)


def rounding_slack(s, t, T):
    """KL >= 0 exactly, but float32 may leave a negative residue of a few ulps of the largest
    log-probability term (|logit| / T), times T^2."""
    return 1e-6 * T * T * (1 + max(s.abs().max().item(), t.abs().max().item()) / T)


@PROPERTY
@given(logit_pairs(), temperatures)
def test_kd_loss_is_non_negative(pair, T):
    s, t = (torch.tensor(a, dtype=torch.float32) for a in pair)
    assert losses.kd_loss(s, t, T).item() >= -rounding_slack(s, t, T)


@PROPERTY
@given(logit_pairs(), temperatures, alphas)
def test_hinton_loss_is_non_negative(pair, T, alpha):
    s, t = (torch.tensor(a, dtype=torch.float32) for a in pair)
    labels = torch.arange(len(s)) % s.shape[1]
    assert losses.hinton_loss(s, t, labels, T, alpha).item() >= -rounding_slack(s, t, T)


@PROPERTY
@given(logit_pairs(), temperatures)
def test_losses_are_zero_at_equal_logits(pair, T):
    s = torch.tensor(pair[0], dtype=torch.float32)
    assert losses.kd_loss(s, s.clone(), T).item() == 0.0
    assert losses.hinton_loss(s, s.clone(), None, T, 0.5).item() == 0.0
    assert losses.hinton_loss(s, s.clone(), s.argmax(1), T, 1.0).item() == 0.0


@PROPERTY
@given(logit_pairs(1e4), temperatures, alphas)
def test_losses_and_gradients_are_finite_for_logits_up_to_1e4(pair, T, alpha):
    s, t = (torch.tensor(a, dtype=torch.float32) for a in pair)
    s.requires_grad_(True)
    labels = torch.arange(len(s)) % s.shape[1]
    for loss in (losses.kd_loss(s, t, T), losses.hinton_loss(s, t, labels, T, alpha)):
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.isfinite(losses.soft_targets(t, T)).all()


@PROPERTY
@given(logit_pairs(1e4), temperatures, alphas, st.data())
def test_losses_are_invariant_to_a_constant_added_to_each_row(pair, T, alpha, draw):
    s, t = (torch.tensor(a) for a in pair)  # float64, so the shift itself rounds away
    shift = lambda x: x + torch.tensor(draw.draw(hnp.arrays(np.float64, (len(x), 1),
                                                           elements=st.floats(-1e4, 1e4))))
    labels = torch.arange(len(s)) % s.shape[1]
    for f in (lambda a, b: losses.kd_loss(a, b, T), lambda a, b: losses.hinton_loss(a, b, labels, T, alpha)):
        before, after = f(s, t).item(), f(shift(s), shift(t)).item()
        assert after == pytest.approx(before, rel=1e-6, abs=1e-6 * (1 + T * T))


# ---------------------------------------------------------------------------------------------
# Corrupt and stale files: detected by checksum, named; a checkpoint refused, a cache entry redone.

def truncate_by_one(blob): return blob[:-1]
def truncate_half(blob): return blob[:len(blob) // 2]
def empty(blob): return b""
def flip_payload_bit(blob): return blob[:len(blob) // 3] + bytes([blob[len(blob) // 3] ^ 0x10]) + blob[len(blob) // 3 + 1:]
def flip_digest(blob): return blob[:-1] + (b"0" if blob[-1:] != b"0" else b"1")
def no_footer(blob): return blob[:-store.FOOTER]
def garbage_appended(blob): return blob + b"\x00" * 7


CORRUPTIONS = [truncate_by_one, truncate_half, empty, flip_payload_bit, flip_digest, no_footer, garbage_appended]


def corrupt(path, how):
    path.write_bytes(how(path.read_bytes()))


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_checkpoint_is_refused_naming_its_path(tmp_path, toy, how):
    path = tmp_path / "run.ckpt"
    quick_fit(student(toy), toy, checkpoint=path)
    store.load(path)  # intact before
    corrupt(path, how)
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        quick_fit(student(toy), toy, checkpoint=path, epochs=2)
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        store.load(path)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_cache_entry_is_recomputed_with_a_warning_naming_its_path(how):
    calls = []
    compute = lambda: calls.append(1) or {"w": torch.arange(100.0)}
    first = store.memo("things", {"n": 100}, compute)
    [path] = (store.cache_dir() / "things").glob("*.pt")
    corrupt(path, how)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        again = store.memo("things", {"n": 100}, compute)
    assert len(calls) == 2 and torch.equal(again["w"], first["w"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(store.memo("things", {"n": 100}, compute)["w"], first["w"])  # repaired: served
    assert len(calls) == 2


def test_interrupted_save_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    store.save({"v": torch.zeros(3)}, path)

    def killed(*args):
        raise KeyboardInterrupt  # as if the process died between writing and renaming

    monkeypatch.setattr(store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.save({"v": torch.ones(3)}, path)
    assert torch.equal(store.load(path)["v"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # no temp file left behind


@pytest.fixture
def counted_fit(monkeypatch):
    """kdnb.train.fit, counting the trainings that ``trained`` really runs."""
    runs, real_fit = [], train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **k: runs.append(1) or real_fit(*a, **k))
    return runs


def trained(d, objective=None, spec=MLP, **kwargs):
    return cached.trained(spec, d, objective, epochs=1, batch_size=32, device="cpu", progress=False, **kwargs)


def test_cache_entry_is_served_only_for_its_own_config(counted_fit, toy, monkeypatch):
    model, history = trained(toy)
    again, history_again = trained(toy)
    assert len(counted_fit) == 1 and history_again == history  # same config: served, not retrained
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)

    logits = lambda seed: torch.randn(128, 4, generator=torch.Generator().manual_seed(seed))
    teacher = student(toy)
    other_teacher = models.build(MLP, toy.shape, toy.classes, seed=1)
    for i, stale in enumerate([
            lambda: trained(toy, spec={"name": "mlp", "hidden": [8]}),            # another model
            lambda: trained(toy, lr=3e-3),                                          # another fit config
            lambda: trained(toy, seed=1),                                           # another seed
            lambda: trained(toy.subset(0.5)),                                       # another data set size
            lambda: trained(toy_data(seed=1)),                                      # same name and sizes, other data
            lambda: trained(toy, CrossEntropy(label_smoothing=0.1)),                # another objective
            lambda: trained(toy, Distill(teacher, T=2.0)),                          # distillation
            lambda: trained(toy, Distill(teacher, T=4.0)),                          # another temperature
            lambda: trained(toy, Distill(other_teacher, T=4.0)),                    # another teacher
            lambda: trained(toy, Distill(TeacherCache(logits(0)))),                 # cached teacher outputs
            lambda: trained(toy, Distill(TeacherCache(logits(1)))),                 # other cached outputs
    ], start=2):
        stale()
        assert len(counted_fit) == i, f"case {i - 1}: a cache entry made for another config was served"

    with monkeypatch.context() as m:  # the models' code changed: the old entry is stale
        m.setattr(store, "source_hash", lambda *objects: "edited-code")
        trained(toy)
    assert len(counted_fit) == 13
    trained(toy)
    assert len(counted_fit) == 13  # and the original is still served for the original code


def test_cache_keys_hash_the_training_code_not_only_the_models(counted_fit, toy):
    from kdnb import sweep
    teacher_side = {"kdnb.models", "kdnb.losses", "kdnb.teachers", "kdnb.checks", "kdnb.device", "kdnb.train",
                    "kdnb.methods.base"}
    assert teacher_side | {"kdnb.methods.hinton"} <= set(keys.training_code(CrossEntropy()))
    # Per method: a CE teacher's key holds no other method's file, so adding one retrains nothing.
    assert not {"kdnb.methods.features", "kdnb.methods.adversarial"} & set(keys.training_code(CrossEntropy()))
    configs = []
    real = store.memo
    with pytest.MonkeyPatch.context() as m:
        m.setattr(store, "memo", lambda kind, config, compute: configs.append(config) or real(kind, config, compute))
        cached.trained_grid(MLP, toy, torch.randn(len(toy.y_train), toy.classes), sweep.grid([0.5], [4]),
                            epochs=1, batch_size=32, device="cpu", progress=False)
    assert teacher_side | {"kdnb.sweep", "kdnb.methods.hinton"} <= set(configs[-1]["code"])


def test_corrupt_trained_model_entry_is_retrained(counted_fit, toy):
    trained(toy)
    [path] = (store.cache_dir() / "models").glob("*.pt")
    corrupt(path, flip_payload_bit)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        trained(toy)
    assert len(counted_fit) == 2


# ---------------------------------------------------------------------------------------------
# Untrusted pickles: refused by weights_only loading, never executed.

class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def poisoned(path, marker):
    """A torch.save'd dict holding a code payload, with a valid kdnb checksum footer."""
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "value": Payload(marker)}, buf)
    payload = buf.getvalue()
    path.write_bytes(payload + store.MAGIC + hashlib.sha256(payload).hexdigest().encode())


def test_the_payload_would_run_under_a_plain_unpickle(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))  # the control: this payload is live
    assert marker.exists()


def test_pickle_with_code_payload_is_refused_not_run(tmp_path, toy):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    poisoned(path, marker)
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        store.load(path)
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        quick_fit(student(toy), toy, checkpoint=path)
    assert not marker.exists()


def test_poisoned_cache_entry_is_recomputed_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = store.cache_dir() / "things" / f"{store.key_of({'n': 1})}.pt"
    path.parent.mkdir(parents=True)
    poisoned(path, marker)
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        assert store.memo("things", {"n": 1}, lambda: 41 + 1) == 42
    assert not marker.exists()
    assert store.load(path)["value"] == 42


# ---------------------------------------------------------------------------------------------
# NaN guard.

class NaNAt(CrossEntropy):
    """Cross-entropy that turns NaN at global step ``at``; remembers the finite losses before it."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls, self.finite = at, 0, []

    def losses(self, logits, batch):
        loss = super().losses(logits, batch)["ce"]
        self.calls += 1
        if self.calls - 1 == self.at:
            return {"ce": loss * float("nan")}
        if self.calls - 1 < self.at:
            self.finite.append(loss.item())
        return {"ce": loss}


@pytest.mark.parametrize("at", [6, 2])
def test_non_finite_loss_stops_fit_naming_step_epoch_last_loss_and_lr(tmp_path, toy, at):
    steps = math.ceil(len(toy.y_train) / 32)  # 4 steps per epoch: step 6 is step 2 of epoch 1
    objective, path = NaNAt(at), tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteLoss) as err:
        quick_fit(student(toy), toy, objective, epochs=3, lr=2e-3, checkpoint=path)
    epoch, step = divmod(at, steps)
    message = str(err.value)
    assert f"step {step} of epoch {epoch}" in message
    assert f"last finite loss {objective.finite[-1]:.4g}" in message
    assert "lr 0.002" in message
    # Training stopped in that epoch: the last checkpoint is the epoch before, not garbage.
    if epoch:
        assert store.load(path)["epoch"] == epoch - 1
    else:
        assert not path.exists()


def test_non_finite_loss_at_an_epochs_first_step_names_the_previous_epochs_loss(toy):
    objective = NaNAt(4)  # the first step of epoch 1
    with pytest.raises(NonFiniteLoss) as err:
        quick_fit(student(toy), toy, objective, epochs=2, lr=1e-3)
    mean = sum(objective.finite) / len(objective.finite)
    assert re.search(r"step 0 of epoch 1 .*none this epoch; previous epoch mean (\S+), lr 0\.001", str(err.value))
    assert float(re.search(r"previous epoch mean (\S+),", str(err.value)).group(1)) == pytest.approx(mean, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Two processes want the same cache entry at once.

SHARED = r"""
import os, sys, time
from pathlib import Path
import torch
from kdnb import store
log, rendezvous, me, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

def wait_for(n, what):
    deadline = time.monotonic() + 120
    while len(list(rendezvous.glob(what))) < n:
        assert time.monotonic() < deadline, "the other process never came"
        time.sleep(0.01)

def compute():
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    wait_for(2, "calling-*")  # the other process is now at the lock, or about to be
    time.sleep(1.0)
    return {"by": os.getpid(), "noise": torch.randn(1000)}

(rendezvous / f"ready-{me}").touch()
wait_for(2, "ready-*")
(rendezvous / f"calling-{me}").touch()
value = store.memo("teachers", {"teacher": "shared"}, compute)
store.save(value, out)
"""


def test_two_processes_compute_a_shared_cache_entry_once(tmp_path):
    log, rendezvous = tmp_path / "computed.log", tmp_path / "rendezvous"
    rendezvous.mkdir()
    env = dict(os.environ, KDNB_CACHE=str(tmp_path / "cache"), KDNB_PROGRESS="0")
    procs = [subprocess.Popen([sys.executable, "-c", SHARED, str(log), str(rendezvous), str(i),
                               str(tmp_path / f"got-{i}.pt")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()
    assert len(log.read_text().splitlines()) == 1, "the entry was computed more than once"
    got = [store.load(tmp_path / f"got-{i}.pt") for i in range(2)]
    assert got[0]["by"] == got[1]["by"] and torch.equal(got[0]["noise"], got[1]["noise"])
    [entry] = (tmp_path / "cache" / "teachers").glob("*.pt")
    stored = store.load(entry)
    assert torch.equal(stored["value"]["noise"], got[0]["noise"])


# ---------------------------------------------------------------------------------------------
# Faults a user met (issue 30): each named, each refused early or fixed.

def test_gan_and_wgan_kd_check_their_classes_against_the_data(toy):
    from kdnb.methods import GANKD, WGANKD
    teacher = student(toy)
    for make in (GANKD, WGANKD):
        with pytest.raises(ValueError, match=r"classes=10 in (GANKD|WGANKD) but data 'toy' has 4 classes.*"
                                             r"pass classes=4"):
            quick_fit(student(toy), toy, make(teacher))  # the default classes=10


def test_validation_labels_are_checked(toy):
    bad_val = replace(toy, y_val=toy.y_val.clone().index_fill_(0, torch.tensor([0]), 12))
    with pytest.raises(ValueError, match=r"data\.y_val must hold class indices in \[0, 3\].*got values in \[\d+, 12\]"):
        quick_fit(student(toy), bad_val)


def test_a_model_frozen_as_a_teacher_says_so_when_trained(toy):
    from kdnb.teachers import FrozenTeacher
    mine = student(toy)
    FrozenTeacher(mine)
    with pytest.raises(ValueError, match=r"model has no trainable parameter.*frozen when wrapped as a teacher.*"
                                         r"requires_grad_\(True\)"):
        quick_fit(mine, toy)
    mine.requires_grad_(True)
    quick_fit(mine, toy)


def test_hint_and_projected_follow_a_float64_student(digits):
    from kdnb.methods import Hint, Projected
    d = digits.subset(0.2)
    d = replace(d, x_train=d.x_train.double(), x_val=d.x_val.double(), x_test=d.x_test.double())
    spec = {"name": "convnet", "depth": 4, "width": 4, "hidden": 16}
    t = models.build(spec, d.shape, 10, seed=1).double().eval()
    for method in (Hint(t, "4", "4", stage=None), Projected(t, [("4", "4")], 0.1)):
        s = models.build(spec, d.shape, 10, seed=0).double()
        h = train.fit(s, d, method, epochs=1, batch_size=64, device="cpu", progress=False)
        assert math.isfinite(h["loss"][-1])


def test_label_smoothing_is_exact_in_float64():
    z = torch.randn(16, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    assert losses.smooth_labels(y, 10, 0.1, torch.float64).dtype == torch.float64
    torch.testing.assert_close(losses.label_smoothing_loss(z, y, 0.1),
                               torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1), rtol=1e-12, atol=1e-12)


def test_a_loss_function_returning_a_float_is_named(toy):
    def my_loss(out, batch):
        return 1.0
    with pytest.raises(TypeError, match=r"the loss function .*my_loss must return a scalar tensor.*got float"):
        quick_fit(student(toy), toy, my_loss)


def test_a_validation_split_that_takes_everything_is_refused():
    with pytest.raises(ValueError, match=r"val_fraction=0\.999 leaves data set 'digits' no training samples"):
        kdata.load("digits", val_fraction=0.999)


def test_run_files_are_written_atomically_and_named_when_broken(tmp_path, monkeypatch):
    """sessions.json, run.json and results.json are replaced whole (a kill leaves the old file or
    the new one); an empty or garbled one is refused naming the file."""
    from kdnb.book import report, run as runs
    out = tmp_path / "run"
    out.mkdir()
    writes = []
    real = store.write_atomic
    monkeypatch.setattr(store, "write_atomic", lambda path, payload: writes.append(Path(path).name) or real(path, payload))
    runs.clock(out, 1.0)
    runs.clock(out, 1.0)
    assert writes == ["sessions.json", "sessions.json"]
    (out / "sessions.json").write_text("")
    with pytest.raises(ValueError, match=r"file '.*sessions\.json' should hold the wall times .* empty or not valid JSON"):
        runs.clock(out, 2.0)
    (out / "run.json").write_text("{garbled")
    with pytest.raises(ValueError, match=r"file '.*run\.json' should hold the plan of a kdnb run"):
        runs.resume(out)
    (out / "run.json").write_text('{"experiment": "x", "profile": "quick", "seeds": [0], "epochs": null}')
    with pytest.raises(ValueError, match=r"run\.json' is not the plan of a kdnb run: it lacks 'setting'"):
        runs.resume(out)
    (out / "results.json").write_text('{"experiment": "x", "arms": {"kd": {}}, "profile": "quick", "seeds": [0], '
                                      '"teacher": {"test_acc": 0.9}}')
    with pytest.raises(ValueError, match=r"not a complete results file of kdnb run: it lacks arms\['kd'\]\.test_acc"):
        report.load_results(out)


def test_kdnb_files_of_the_wrong_structure_are_named(tmp_path, toy):
    ckpt = tmp_path / "c.pt"
    store.save({"model": {}}, ckpt)
    with pytest.raises(ValueError, match=r"checkpoint '.*c\.pt' is a kdnb file but not a checkpoint of fit"):
        quick_fit(student(toy), toy, checkpoint=ckpt)
    entry = store.cache_dir() / "kind" / f"{store.key_of({'a': 1})}.pt"
    store.save([1, 2], entry)
    with pytest.warns(UserWarning, match="not a cache entry"):
        assert store.memo("kind", {"a": 1}, lambda: 7) == 7
