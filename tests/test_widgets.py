"""The chapters' explorers from Python: their traits hold the run's numbers and kdnb's math, bad
input is refused early, and their kernel-free HTML needs no network. (Their JavaScript is tested
against kdnb in node and in Chromium: tests/test_explorer_js.py; on the built site: test_site.py.)"""
import re

import matplotlib.pyplot as plt
import pytest
import torch

from kdnb import models
from kdnb.book import profiles, stats
from kdnb.book.widgets import explain_all, grid_widget, offline, temperature_widget

ZT = torch.tensor([6.0, 2.0, 1.0, -1.0, 0.5])
ZS = torch.tensor([3.0, 2.5, 0.0, -0.5, 0.2])


def test_the_temperature_widget_holds_the_example_and_kdnbs_numbers():
    w = temperature_widget(ZT, ZS, label=0, T=4.0, alpha=0.5)
    assert w.teacher == ZT.tolist() and w.student == ZS.tolist() and (w.T, w.alpha) == (4.0, 0.5)
    w.T, w.alpha = 8.0, 0.9  # as the sliders do in JupyterLab
    assert w.numbers() == explain_all(ZT.tolist(), ZS.tolist(), 0, 8.0, 0.9)
    assert w.class_names == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("kwargs, match", [
    ({"label": 5}, r"label must be an int in \[0, 4\]"),
    ({"label": 1.0}, r"label must be an int"),
    ({"T": 0.0}, r"^T "),
    ({"T": 50.0}, r"T must be in \[0\.5, 20\.0\]"),
    ({"alpha": 1.5}, r"^alpha "),
])
def test_bad_arguments_are_refused(kwargs, match):
    args = {"teacher_logits": ZT, "student_logits": ZS, "label": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        temperature_widget(**args)


def test_mismatched_logits_are_refused():
    with pytest.raises(ValueError, match=r"teacher_logits shape \(5,\) must equal student_logits shape \(4,\)"):
        temperature_widget(ZT, ZS[:4], label=0)


def fake_history(level, epochs=4):
    return {"val_acc": [level * (e + 1) / epochs for e in range(epochs)]}


def test_the_grid_widget_holds_the_runs_own_numbers():
    alphas, Ts = [0.5, 1.0], [1, 4]
    gains = {(a, T): [a * T / 100, a * T / 90, -a / 50] for a in alphas for T in Ts}
    curves = {(a, T): [fake_history(a * T / 4) for _ in range(3)] for a in alphas for T in Ts}
    w = grid_widget(gains, curves, [fake_history(0.5)] * 3, alphas, Ts, picked=(0.5, 4))
    assert w.picked == [0.5, 4.0] and w.alphas == [0.5, 1.0] and w.Ts == [1.0, 4.0]
    assert w.cells["1|4"]["gains"] == gains[1.0, 4] and w.cells["0.5|1"]["curves"][0] == fake_history(0.125)["val_acc"]
    assert stats.paired(w.cells["1|4"]["gains"], [0.0] * 3).mean == pytest.approx(sum(gains[1.0, 4]) / 3)


def test_the_grid_widget_needs_every_cell_and_a_baseline():
    with pytest.raises(ValueError, match="must hold every"):
        grid_widget({}, {}, [fake_history(0.5)], [1.0], [1])
    with pytest.raises(ValueError, match="baseline must hold"):
        grid_widget({(1.0, 1): [0.1]}, {(1.0, 1): [fake_history(0.5)]}, [], [1.0], [1])


def test_seed001_pair_has_the_published_parameter_counts():
    p = profiles.get("full").extra
    assert models.count_params(models.build(p["seed001_teacher"], (1, 28, 28), 10)) == 1_422_378
    assert models.count_params(models.build(p["seed001_student"], (1, 28, 28), 10)) == 693_962


def test_kernel_free_html_needs_no_network():
    alphas, Ts = [1.0], [1, 4]
    grid = grid_widget({(1.0, T): [0.01 * T] for T in Ts}, {(1.0, T): [fake_history(T / 4)] for T in Ts},
                       [fake_history(0.5)], alphas, Ts)
    for html in (temperature_widget(ZT, ZS, 0).static_html(), grid.static_html()):
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", html), re.findall(r"https?://\S+", html)
        assert '<script type="module">' in html and "render(" in html


def test_offline_replaces_the_font_awesome_of_matplotlibs_animation_html():
    from matplotlib import animation
    fig, ax = plt.subplots()
    anim = animation.FuncAnimation(fig, lambda i: ax.plot([0, i]), frames=2)
    raw = anim.to_jshtml()
    plt.close(fig)
    assert re.search(r"https?://\S*font-awesome", raw) and 'class="fa fa-' in raw  # what it fixes
    html = offline(raw)
    assert not re.search(r"https?://", html) and 'class="fa' not in html
    assert offline(html) == html
