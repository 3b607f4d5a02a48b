"""The T/α explorer driven without a browser: set .value as a slider would, check the numbers;
the pictures: sharp, nothing cut off or covered, and the kernel-free HTML needs no network."""
import base64
import re
import struct

import matplotlib.pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg
import pytest
import torch

from kdnb import losses, models
from kdnb.book import profiles
from kdnb.book.widgets import DPI, TemperatureExplorer, explain, grid_frames, offline, temperature_frames

ZT = torch.tensor([6.0, 2.0, 1.0, -1.0, 0.5])
ZS = torch.tensor([3.0, 2.5, 0.0, -0.5, 0.2])


@pytest.fixture
def explorer():
    return TemperatureExplorer(ZT, ZS, label=0, T=4.0, alpha=0.5)


def test_numbers_follow_the_math(explorer):
    n = explorer.numbers
    assert n["kd"] == pytest.approx(losses.kd_loss(ZS[None], ZT[None], 4.0).item())
    assert n["loss"] == pytest.approx(0.5 * n["kd"] + 0.5 * n["ce"])
    torch.testing.assert_close(n["teacher"], losses.soft_targets(ZT[None], 4.0)[0])


def test_moving_T_softens_and_redraws(explorer):
    before = [p.get_height() for p in explorer.ax.patches]
    explorer.T.value = 16.0
    after = [p.get_height() for p in explorer.ax.patches]
    assert explorer.numbers["T"] == 16.0
    assert max(after[:5]) < max(before[:5])          # teacher bars: the top class loses mass
    assert explorer.numbers["teacher"].max() < losses.soft_targets(ZT[None], 4.0).max()
    assert "16.00" in explorer.ax.get_title()


def test_moving_alpha_reweighs_the_loss_only(explorer):
    ce, kd = explorer.numbers["ce"], explorer.numbers["kd"]
    explorer.alpha.value = 1.0
    assert explorer.numbers["loss"] == pytest.approx(kd)
    explorer.alpha.value = 0.0
    assert explorer.numbers["loss"] == pytest.approx(ce)
    assert explorer.numbers["kd"] == pytest.approx(kd)   # α does not change the terms themselves
    assert "CE" in explorer.readout.value and f"{ce:.4f}" in explorer.readout.value


def test_out_of_range_values_are_clamped(explorer):
    explorer.T.value = 1000.0
    assert explorer.T.value == explorer.T.max == 20.0
    explorer.T.value = -3.0
    assert explorer.T.value == explorer.T.min > 0
    explorer.alpha.value = 7.0
    assert explorer.alpha.value == 1.0
    assert explorer.numbers["T"] == explorer.T.value and explorer.numbers["alpha"] == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"T": 0.0}, r"T must be in \(0, inf\)"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"label": 9}, r"label must be an int in \[0, 4\]"),
])
def test_bad_arguments_are_refused(kwargs, match):
    args = {"teacher_logits": ZT, "student_logits": ZS, "label": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        TemperatureExplorer(**args)


def test_mismatched_logits_are_refused():
    with pytest.raises(ValueError, match="teacher_logits shape"):
        TemperatureExplorer(ZT, ZS[:4], label=0)


def test_kernel_free_frames_hold_one_frame_per_T():
    html = temperature_frames(ZT, ZS, 0, Ts=[1, 2, 4])
    assert html.count("data:image/png;base64") == 3 and 'type="range"' in html
    a, b = explain(ZT, ZS, 0, 1.0, 0.5), explain(ZT, ZS, 0, 4.0, 0.5)
    assert a["teacher"].max() > b["teacher"].max()


def test_seed001_pair_has_the_published_parameter_counts():
    p = profiles.get("full").extra
    assert models.count_params(models.build(p["seed001_teacher"], (1, 28, 28), 10)) == 1_422_378
    assert models.count_params(models.build(p["seed001_student"], (1, 28, 28), 10)) == 693_962


def fake_history(level, epochs=4):
    return {"val_acc": [level * (e + 1) / epochs for e in range(epochs)]}


def test_grid_explorer_shows_the_picked_cell():
    from kdnb.book.widgets import GridExplorer, grid_frames
    alphas, Ts = [0.5, 1.0], [1, 4]
    cells = {(a, T): [fake_history(a * T / 4), fake_history(a * T / 5)] for a in alphas for T in Ts}
    ex = GridExplorer(cells, alphas, Ts, baseline=[fake_history(0.5)])
    ex.alpha.value, ex.T.value = 0.5, 4
    assert ex.shown == (0.5, 4) and ex.ax.get_title() == "α = 0.5, T = 4"
    top = max(max(line.get_ydata()) for line in ex.ax.lines[:2])
    assert top == pytest.approx(0.5)                      # the curves of that cell, not another's
    with pytest.raises(Exception):
        ex.T.value = 3                                    # not a grid value: the slider refuses it
    html = grid_frames(cells, alphas, Ts)
    assert html.count("data:image/png;base64") == 4


def test_grid_explorer_needs_cells():
    from kdnb.book.widgets import GridExplorer
    with pytest.raises(ValueError, match="cells must hold"):
        GridExplorer({}, [1.0], [1])


def test_the_picture_changes_with_the_slider(explorer):
    before = explorer.image.value
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    explorer.T.value = 12.0
    assert explorer.image.value != before


PEAKED = torch.tensor([1.0, 2.0, 0.5, -1.0, 9.5])  # at low T the right-most class takes all: a bar of height 1


def png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def frames_of(html):
    return [base64.b64decode(f.replace("\\\n", "")) for f in re.findall(r'"data:image/png;base64,([^"]+)"', html)]


def test_pictures_are_drawn_at_twice_the_size_they_are_shown(explorer):
    assert explorer.image.width == str(7 * DPI)
    assert png_size(explorer.image.value)[0] == 2 * 7 * DPI
    html = temperature_frames(ZT, ZS, 0, Ts=[1, 4])
    shown = int(re.search(r'<img id="_anim_img\w+" style="width: (\d+)px">', html).group(1))
    assert shown == 7 * DPI and all(png_size(f)[0] == 2 * shown for f in frames_of(html))


def inside(box, outer):
    return box.x0 >= outer.x0 and box.y0 >= outer.y0 and box.x1 <= outer.x1 and box.y1 <= outer.y1


def check_layout(fig, ax):
    """Axis labels and legend inside the figure; the legend covers no bar."""
    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    # twice: an animation's figure redraws its first frame after its first draw
    canvas.draw()
    canvas.draw()
    r = canvas.get_renderer()
    texts = [t for t in (ax.xaxis.label, ax.yaxis.label, ax.title) if t.get_text()]
    for artist in texts + [ax.get_legend()]:
        assert inside(artist.get_window_extent(r), fig.bbox), f"{artist} is cut off"
    legend = ax.get_legend().get_window_extent(r)
    assert not [p for p in ax.patches if p.get_height() > 0 and p.get_window_extent(r).overlaps(legend)]


def test_the_explorers_figure_keeps_labels_and_legend_clear_of_the_bars():
    ex = TemperatureExplorer(PEAKED, ZS, label=4, T=0.5)
    assert max(p.get_height() for p in ex.ax.patches) == pytest.approx(1.0)
    check_layout(ex.fig, ex.ax)


def test_kernel_free_frames_keep_their_labels_inside(monkeypatch):
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    temperature_frames(PEAKED, ZS, 4, Ts=[0.5])
    alphas, Ts = [0.5, 1.0], [1, 4]
    cells = {(a, T): [fake_history(a * T / 4)] for a in alphas for T in Ts}
    grid_frames(cells, alphas, Ts, baseline=[fake_history(0.5)])
    monkeypatch.undo()
    try:
        assert len(figures) == 2
        for fig in figures:
            check_layout(fig, fig.axes[0])
    finally:
        for fig in figures:
            plt.close(fig)


def test_kernel_free_html_needs_no_network():
    alphas, Ts = [1.0], [1, 4]
    cells = {(a, T): [fake_history(T / 4)] for a in alphas for T in Ts}
    for html in (temperature_frames(ZT, ZS, 0, Ts=[1, 4]), grid_frames(cells, alphas, Ts)):
        assert not re.search(r"https?://", html), re.findall(r"https?://\S+", html)
        assert 'class="fa' not in html and html.count("<svg") == 9  # every button has its icon


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
