"""The T/α explorer driven without a browser: set .value as a slider would, check the numbers."""
import pytest
import torch

from kdnb import losses, models, profiles
from kdnb.widgets import TemperatureExplorer, explain, temperature_frames

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
    from kdnb.widgets import GridExplorer, grid_frames
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
    from kdnb.widgets import GridExplorer
    with pytest.raises(ValueError, match="cells must hold"):
        GridExplorer({}, [1.0], [1])


def test_the_picture_changes_with_the_slider(explorer):
    before = explorer.image.value
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    explorer.T.value = 12.0
    assert explorer.image.value != before
