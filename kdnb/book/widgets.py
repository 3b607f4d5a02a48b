"""The chapters' explorers: small JavaScript modules run as anywidgets.

:func:`temperature_widget` (``explorer.js``: T and α sliders over one example's logits) and
:func:`grid_widget` (``grid_explorer.js``: an α × T grid of a run's paired gains and its students'
curves) are one code path: in JupyterLab the module runs live as an anywidget; the widget's HTML
output carries the same module, inlined, with the same numbers, so it runs on the static site and
in a plain nbconvert page with no kernel and no network. Their Python reference (what the modules
are tested against) is :func:`explain_all`. :func:`offline` keeps any matplotlib ``to_jshtml``
animation free of its CDN links.
"""
import functools
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import losses

T_RANGE = (0.5, 20.0)


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


EXPLORER_JS = Path(__file__).with_name("explorer.js")
GRID_EXPLORER_JS = Path(__file__).with_name("grid_explorer.js")
SVG_JS = Path(__file__).with_name("svg.js")  # the helpers both explorers draw with


def module_source(path):
    """An explorer's ES module as it runs: the shared ``svg.js`` helpers, then the module."""
    return SVG_JS.read_text() + "\n" + path.read_text()
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
    return (f'<div class="kdnb-static-widget" id="{uid}"></div>\n<script type="module">\n{module_source(module)}\n'
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
        _module = EXPLORER_JS
        _esm = module_source(EXPLORER_JS)
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
        _module = GRID_EXPLORER_JS
        _esm = module_source(GRID_EXPLORER_JS)
        _state = ("alphas", "Ts", "cells", "baseline", "picked")
        alphas = traitlets.List().tag(sync=True)
        Ts = traitlets.List().tag(sync=True)
        cells = traitlets.Dict().tag(sync=True)   # "α|T": {"gains": [per seed], "curves": [per seed]}
        baseline = traitlets.List().tag(sync=True)
        picked = traitlets.List().tag(sync=True)

    return TemperatureWidget, GridWidget


def temperature_widget(teacher_logits, student_logits, label, class_names=None, T=4.0, alpha=0.5):
    """A ``TemperatureWidget`` over one example: its teacher and student logits (one vector each),
    the true ``label``, and the sliders' first T and α."""
    teacher_logits, student_logits = torch.as_tensor(teacher_logits), torch.as_tensor(student_logits)
    losses.check_logits("teacher_logits", teacher_logits[None])
    losses.check_logits("student_logits", student_logits[None])
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits "
                         f"shape {tuple(student_logits.shape)}")
    t, s = teacher_logits.tolist(), student_logits.tolist()
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
