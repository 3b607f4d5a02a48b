"""Sliders for the chapters.

:class:`TemperatureExplorer` is the live version (ipywidgets: needs a kernel, as in JupyterLab);
:func:`temperature_frames` renders the same view for a grid of T as an HTML animation whose
slider works in a browser without any kernel (the static site), and without any network: its
buttons are inline SVG, not Font Awesome from a CDN. Callbacks only recompute softmaxes of a
handful of logits: no retraining.

Pictures are drawn at twice :data:`DPI` and shown at their size at :data:`DPI`, so they stay
sharp on high-density screens.
"""
import functools
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from .. import losses

T_RANGE = (0.5, 20.0)
DPI = 80  # CSS pixels per inch of figure


def _svg(path):
    return (f'<svg viewBox="0 0 16 16" width="1em" height="1em" fill="currentColor" aria-hidden="true">'
            f'<path d="{path}"/></svg>')


# to_jshtml's button icons (Font Awesome 4 names) as 16×16 paths
ICONS = {
    "fa-minus": "M3 7h10v2H3z",
    "fa-plus": "M7 3h2v4h4v2H9v4H7V9H3V7h4z",
    "fa-fast-backward": "M2 3h2v10H2zM9 3v10L4 8zM15 3v10l-5-5z",
    "fa-step-backward": "M3 3h2v10H3zM13 3v10L6 8z",
    "fa-play fa-flip-horizontal": "M12 3v10L3 8z",
    "fa-pause": "M4 3h3v10H4zM9 3h3v10H9z",
    "fa-play": "M4 3v10l9-5z",
    "fa-step-forward": "M11 3h2v10h-2zM3 3v10l7-5z",
    "fa-fast-forward": "M12 3h2v10h-2zM7 3v10l5-5zM1 3v10l5-5z",
}
FONT_AWESOME_LINK = re.compile(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">\n?')
FONT_AWESOME_ICON = re.compile(r'<i class="fa ({})"></i>'.format("|".join(map(re.escape, ICONS))))


def offline(html):
    """``html`` with matplotlib's ``to_jshtml`` animations made network-free: the Font Awesome
    stylesheet link dropped, the button icons drawn as inline SVG."""
    html = FONT_AWESOME_LINK.sub("", html)
    return FONT_AWESOME_ICON.sub(lambda m: _svg(ICONS[m.group(1)]), html)


def jshtml(anim, fig):
    """``anim.to_jshtml`` for a figure made at ``2 * DPI``: network-free, frames shown at ``DPI``."""
    html = offline(anim.to_jshtml(fps=2, default_mode="once"))
    width = round(fig.get_figwidth() * DPI)
    return re.sub(r'<img id="(_anim_img\w+)">', rf'<img id="\1" style="width: {width}px">', html)


def explain(teacher_logits, student_logits, label, T, alpha):
    """The numbers a reader sees for one example: softened distributions and the loss terms."""
    T, alpha = losses.check_T(T), losses.check_alpha(alpha)
    t, s = teacher_logits[None].float(), student_logits[None].float()
    y = torch.tensor([label])
    kd = losses.kd_loss(s, t, T).item()
    ce = F.cross_entropy(s, y).item()
    return {"T": T, "alpha": alpha, "teacher": losses.soft_targets(t, T)[0], "student": losses.soft_targets(s, T)[0],
            "kd": kd, "ce": ce, "loss": alpha * kd + (1 - alpha) * ce}


def draw(ax, numbers, class_names, label):
    ax.clear()
    k = torch.arange(len(class_names))
    ax.bar(k - 0.2, numbers["teacher"], width=0.4, label="teacher")
    ax.bar(k + 0.2, numbers["student"], width=0.4, label="student")
    ax.set_xticks(k, [f"{c}*" if i == label else str(c) for i, c in enumerate(class_names)])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("softmax(z / T)")
    ax.set_title(f"T = {numbers['T']:.2f}, α = {numbers['alpha']:.2f}:  T²·KL = {numbers['kd']:.3f},  "
                 f"CE = {numbers['ce']:.3f},  loss = {numbers['loss']:.3f}", fontsize=9)
    # beside the axes: at low T a bar reaches the top, wherever the legend sits inside
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))


class Explorer:
    """Sliders above a figure: ``update`` redraws ``self.fig`` and calls ``show``, which puts
    the figure into an ``ipywidgets.Image`` as PNG. (An Image, not an Output widget: a value
    change is one message, with no output capturing to go wrong while a notebook executes.)"""

    def show(self):
        import io
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=2 * DPI)
        self.image.width = str(round(self.fig.get_figwidth() * DPI))
        self.image.value = buf.getvalue()

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class TemperatureExplorer(Explorer):
    """Sliders for T and α over one example's teacher and student logits.

    ``explorer.T.value = 8`` (as the slider does) recomputes ``explorer.numbers`` and redraws;
    values outside the sliders' ranges are clamped by the sliders themselves.
    """

    def __init__(self, teacher_logits, student_logits, label, class_names=None, T=4.0, alpha=0.5):
        import ipywidgets as W
        losses.check_logits("teacher_logits", teacher_logits[None])
        losses.check_logits("student_logits", student_logits[None])
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits "
                             f"shape {tuple(student_logits.shape)}")
        classes = teacher_logits.shape[0]
        if not isinstance(label, int) or not 0 <= label < classes:
            raise ValueError(f"label must be an int in [0, {classes - 1}], got {label!r}")
        self.teacher_logits, self.student_logits, self.label = teacher_logits.detach().cpu(), student_logits.detach().cpu(), label
        self.class_names = class_names or [str(i) for i in range(classes)]
        self.T = W.FloatSlider(value=losses.check_T(T), min=T_RANGE[0], max=T_RANGE[1], step=0.5, description="T",
                               continuous_update=True)
        self.alpha = W.FloatSlider(value=losses.check_alpha(alpha), min=0.0, max=1.0, step=0.05, description="α")
        self.readout = W.HTML()
        self.image = W.Image(format="png")
        # A figure outside pyplot's registry, so the notebook doesn't also show it at the cell's end.
        self.fig = Figure(figsize=(7, 3), layout="constrained")
        self.ax = self.fig.subplots()
        self.T.observe(self.update, names="value")
        self.alpha.observe(self.update, names="value")
        self.widget = W.VBox([W.HBox([self.T, self.alpha]), self.readout, self.image])
        self.update()

    def update(self, change=None):
        self.numbers = explain(self.teacher_logits, self.student_logits, self.label, self.T.value, self.alpha.value)
        n = self.numbers
        self.readout.value = (f"<b>T²·KL</b> = {n['kd']:.4f} &nbsp; <b>CE</b> = {n['ce']:.4f} &nbsp; "
                              f"<b>α·T²·KL + (1−α)·CE</b> = {n['loss']:.4f}")
        draw(self.ax, n, self.class_names, self.label)
        self.show()


def temperature_frames(teacher_logits, student_logits, label, class_names=None, Ts=None, alpha=0.5):
    """A kernel-free slider: the explorer's view pre-rendered for each T in ``Ts``, as HTML with
    a JavaScript scrubber (matplotlib's ``to_jshtml``). Returns the HTML string."""
    from matplotlib import animation
    Ts = Ts or [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20]
    class_names = class_names or [str(i) for i in range(teacher_logits.shape[0])]
    # constrained layout: the labels and the legend stay inside the frame
    fig, ax = plt.subplots(figsize=(7, 3), dpi=2 * DPI, layout="constrained")
    frames = [explain(teacher_logits, student_logits, label, T, alpha) for T in Ts]
    anim = animation.FuncAnimation(fig, lambda i: draw(ax, frames[i], class_names, label), frames=len(frames))
    html = jshtml(anim, fig)
    plt.close(fig)
    return html


def draw_member(ax, histories, alpha, T, baseline=None):
    """Validation curves of one grid cell (one line per seed), beside the baseline's mean."""
    ax.clear()
    for s, h in enumerate(histories):
        ax.plot(range(1, len(h["val_acc"]) + 1), h["val_acc"], color="C1", alpha=0.8, label="KD" if s == 0 else None)
    if baseline:
        mean = torch.tensor([h["val_acc"] for h in baseline]).mean(0)
        ax.plot(range(1, len(mean) + 1), mean, "k--", label="CE only (mean)")
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=f"α = {alpha}, T = {T}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)


class GridExplorer(Explorer):
    """Two sliders pick a cell of an α × T grid and show that member's learning curves.
    ``cells[(alpha, T)]`` is a list of histories (one per seed)."""

    def __init__(self, cells, alphas, Ts, baseline=None):
        import ipywidgets as W
        if not cells:
            raise ValueError("cells must hold at least one (alpha, T) entry")
        self.cells, self.baseline = cells, baseline
        self.alpha = W.SelectionSlider(options=list(alphas), value=alphas[-1], description="α")
        self.T = W.SelectionSlider(options=list(Ts), value=Ts[0], description="T")
        self.image = W.Image(format="png")
        self.fig = Figure(figsize=(6, 3), layout="constrained")
        self.ax = self.fig.subplots()
        self.alpha.observe(self.update, names="value")
        self.T.observe(self.update, names="value")
        self.widget = W.VBox([W.HBox([self.alpha, self.T]), self.image])
        self.update()

    def update(self, change=None):
        self.shown = (self.alpha.value, self.T.value)
        draw_member(self.ax, self.cells[self.shown], *self.shown, self.baseline)
        self.show()


def grid_frames(cells, alphas, Ts, baseline=None):
    """The kernel-free version of :class:`GridExplorer`: one pre-rendered frame per cell,
    T varying fastest, scrubbed by one JavaScript slider."""
    from matplotlib import animation
    order = [(a, T) for a in alphas for T in Ts]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=2 * DPI, layout="constrained")
    anim = animation.FuncAnimation(fig, lambda i: draw_member(ax, cells[order[i]], *order[i], baseline),
                                   frames=len(order))
    html = jshtml(anim, fig)
    plt.close(fig)
    return html


# --- the explorers as ES modules, live in JupyterLab and on a page with no kernel ---------------

EXPLORER_JS = Path(__file__).with_name("explorer.js")
GRID_EXPLORER_JS = Path(__file__).with_name("grid_explorer.js")
# On a page with no kernel the module gets the get / set / on / save_changes model anywidget gives.
STATIC_MODEL_JS = """const staticModel = (values) => {
  const state = { ...values }, listeners = {};
  return { get: (k) => state[k], save_changes: () => {},
           set: (k, v) => { state[k] = v; (listeners[`change:${k}`] || []).forEach((f) => f()); },
           on: (event, f) => { (listeners[event] = listeners[event] || []).push(f); } };
};"""


def static_html(module, state, uid):
    """A page fragment that runs ``module``'s ``render`` on ``state`` with no kernel: the module
    inlined (no file to fetch, no CDN), the state as JSON."""
    return (f'<div class="kdnb-static-widget" id="{uid}"></div>\n<script type="module">\n{module.read_text()}\n'
            f"{STATIC_MODEL_JS}\nrender({{model: staticModel({json.dumps(state)}), el: document.getElementById({uid!r})}});\n"
            f"</script>")


@functools.lru_cache(maxsize=None)
def _explorer_classes():
    import anywidget
    import traitlets

    class Static(anywidget.AnyWidget):
        """An anywidget whose output also carries its kernel-free HTML (kept by the site)."""
        _state = ()

        def static_html(self):
            return static_html(self._module, {k: getattr(self, k) for k in self._state}, f"kdnb-x-{id(self):x}")

        def _repr_mimebundle_(self, **kwargs):
            bundle = super()._repr_mimebundle_(**kwargs)
            data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
            data = {**data, "text/html": self.static_html()}
            return (data, meta) if isinstance(bundle, tuple) else data

    class TemperatureWidget(Static):
        """T and α sliders over one example's teacher and student logits, computed and drawn in the
        browser by ``kdnb/explorer.js`` (softened distributions, entropies, KL, T²·KL, CE, the
        loss and its gradient on each student logit). In JupyterLab it is an anywidget (traits
        ``T``, ``alpha``, ... sync with the sliders); on the static site its HTML output runs the
        same module with the same data and no kernel."""
        _esm = _module = EXPLORER_JS
        _state = ("teacher", "student", "label", "class_names", "T", "alpha")
        teacher = traitlets.List(traitlets.Float()).tag(sync=True)
        student = traitlets.List(traitlets.Float()).tag(sync=True)
        label = traitlets.Int(0).tag(sync=True)
        class_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
        T = traitlets.Float(4.0).tag(sync=True)
        alpha = traitlets.Float(0.5).tag(sync=True)

        def numbers(self):
            """What the page shows for the current T and α, computed by kdnb.losses."""
            return explain_all(self.teacher, self.student, self.label, self.T, self.alpha)

    class GridWidget(Static):
        """An α × T grid of paired gains (``kdnb/grid_explorer.js``): hover a cell for its mean ±
        standard error over seeds, click it (or set ``picked``) for its students' validation curves
        beside the CE-only students'."""
        _esm = _module = GRID_EXPLORER_JS
        _state = ("alphas", "Ts", "cells", "baseline", "picked")
        alphas = traitlets.List().tag(sync=True)
        Ts = traitlets.List().tag(sync=True)
        cells = traitlets.Dict().tag(sync=True)   # "α|T": {"gains": [per seed], "curves": [per seed]}
        baseline = traitlets.List().tag(sync=True)
        picked = traitlets.List().tag(sync=True)

    return TemperatureWidget, GridWidget


def temperature_widget(teacher_logits, student_logits, label, class_names=None, T=4.0, alpha=0.5):
    """A :class:`TemperatureWidget` over one example (checked like :class:`TemperatureExplorer`)."""
    losses.check_logits("teacher_logits", torch.as_tensor(teacher_logits)[None])
    losses.check_logits("student_logits", torch.as_tensor(student_logits)[None])
    t, s = torch.as_tensor(teacher_logits).tolist(), torch.as_tensor(student_logits).tolist()
    if len(t) != len(s):
        raise ValueError(f"teacher_logits has {len(t)} classes but student_logits {len(s)}: they must match")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(t):
        raise ValueError(f"label must be an int in [0, {len(t) - 1}], got {label!r}")
    T = losses.check_T(T)
    if not T_RANGE[0] <= T <= T_RANGE[1]:
        raise ValueError(f"T must be in [{T_RANGE[0]}, {T_RANGE[1]}] (the slider's range), got {T!r}")
    return _explorer_classes()[0](teacher=t, student=s, label=label, T=T, alpha=losses.check_alpha(alpha),
                             class_names=class_names or [str(i) for i in range(len(t))])


def explain_all(teacher, student, label, T, alpha):
    """Everything the explorer shows, by kdnb.losses (float64): the reference its JavaScript is
    tested against."""
    t = torch.tensor([teacher], dtype=torch.float64)
    s = torch.tensor([student], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([label])
    p, q = losses.soft_targets(t, T)[0], losses.soft_targets(s.detach(), T)[0]
    loss = losses.hinton_loss(s, t, y, T, alpha)
    loss.backward()
    kd = losses.kd_loss(s.detach(), t, T).item()
    ent = lambda d: -(d * d.clamp_min(1e-300).log()).sum().item()
    return {"p": p.tolist(), "q": q.tolist(), "H_teacher": ent(p), "H_student": ent(q), "kl": kd / T ** 2,
            "t2kl": kd, "ce": F.cross_entropy(s.detach(), y).item(), "loss": loss.item(), "grad": s.grad[0].tolist()}


def grid_widget(gains, histories, baseline, alphas, Ts, picked=None):
    """A :class:`GridWidget` from a run's own numbers: ``gains[(α, T)]`` the per-seed paired
    test-accuracy differences over CE, ``histories[(α, T)]`` the per-seed histories (their
    ``val_acc`` curves are drawn) and ``baseline`` the CE students' histories."""
    alphas, Ts = [float(a) for a in alphas], [float(T) for T in Ts]
    missing = [(a, T) for a in alphas for T in Ts if (a, T) not in gains or (a, T) not in histories]
    if missing:
        raise ValueError(f"gains and histories must hold every (alpha, T) of the grid; missing {missing[:3]}")
    if not baseline:
        raise ValueError("baseline must hold the CE-only students' histories (one per seed)")
    key = lambda a, T: f"{a:g}|{T:g}"
    cells = {key(a, T): {"gains": [float(g) for g in gains[(a, T)]],
                         "curves": [[float(v) for v in h["val_acc"]] for h in histories[(a, T)]]}
             for a in alphas for T in Ts}
    picked = list(picked or (alphas[-1], Ts[0]))
    return _explorer_classes()[1](alphas=alphas, Ts=Ts, cells=cells, picked=picked,
                                  baseline=[[float(v) for v in h["val_acc"]] for h in baseline])
