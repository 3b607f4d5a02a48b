// The grid explorer: an α × T grid of KD students, each cell the paired test-accuracy gains of its
// students over the CE-only student of the same seed. Hover a cell for its mean ± standard error
// over seeds; click it for its students' validation curves beside the baseline's. The numbers are
// the run's own (kdnb.widgets.grid_widget passes them in), computed here as kdnb.stats does
// (tests/test_explorer_js.py compares the two). One module for JupyterLab (anywidget) and a page
// with no kernel (the widget's HTML output brings a model of its own).

export function meanSe(xs) {
  const n = xs.length, m = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (n - 1)) : 0;
  return { n, mean: m, se: sd / Math.sqrt(n) };
}

// el (an SVG element with attributes) comes from svg.js, put before this module by kdnb.book.widgets.
const pts = (v) => (v >= 0 ? "+" : "") + (100 * v).toFixed(1);

function colour(v, lim) {  // red for a loss, blue for a gain, white at 0
  const t = Math.max(-1, Math.min(1, v / lim));
  const c = Math.round(255 * (1 - Math.abs(t)));
  return t >= 0 ? `rgb(${c},${c},255)` : `rgb(255,${c},${c})`;
}

function render({ model, el: root }) {
  root.classList.add("kdnb-grid-explorer");
  const info = document.createElement("div");
  info.className = "kdnb-g-info";
  info.style.cssText = "font-family: monospace; font-size: 13px; min-height: 1.4em";
  const heat = el("svg", { viewBox: "0 0 330 250", width: "48%", role: "img" });
  const curves = el("svg", { viewBox: "0 0 330 250", width: "50%", role: "img" });
  const row = document.createElement("div");
  row.style.cssText = "display: flex; gap: 2%; align-items: flex-start";
  row.append(heat, curves);
  root.append(info, row);

  const cells = () => model.get("cells"), alphas = () => model.get("alphas"), Ts = () => model.get("Ts");
  const key = (a, T) => `${a}|${T}`;

  function show(a, T) {
    const c = cells()[key(a, T)], s = meanSe(c.gains);
    info.textContent = `α = ${a}, T = ${T}: ${pts(s.mean)} ± ${(100 * s.se).toFixed(1)} points over ${s.n} seeds`;
    info.dataset.values = JSON.stringify({ alpha: a, T, ...s });
  }

  function drawCurves() {
    const [a, T] = model.get("picked");
    curves.replaceChildren();
    const c = cells()[key(a, T)], base = model.get("baseline");
    const all = [...c.curves.flat(), ...base.flat()], lo = Math.min(...all), hi = Math.max(...all);
    const E = Math.max(...c.curves.map((h) => h.length), ...base.map((h) => h.length));
    const x = (i) => 40 + 280 * i / Math.max(1, E - 1), y = (v) => 220 - 200 * (v - lo) / Math.max(1e-9, hi - lo);
    const line = (h, attrs) => el("polyline", { points: h.map((v, i) => `${x(i)},${y(v)}`).join(" "), fill: "none", ...attrs });
    base.forEach((h) => curves.append(line(h, { stroke: "#555", "stroke-dasharray": "4 3", class: "baseline" })));
    c.curves.forEach((h) => curves.append(line(h, { stroke: "#ff7f0e", class: "member" })));
    curves.append(el("text", { x: 40, y: 14, "font-size": 12 }, `α = ${a}, T = ${T}: KD (orange) vs CE only (dashed)`),
                  el("text", { x: 2, y: 24, "font-size": 10 }, (100 * hi).toFixed(0) + "%"),
                  el("text", { x: 2, y: 222, "font-size": 10 }, (100 * lo).toFixed(0) + "%"),
                  el("text", { x: 150, y: 244, "font-size": 11 }, "epoch → (validation accuracy)"));
    curves.dataset.picked = JSON.stringify([a, T]);
  }

  function drawHeat() {
    heat.replaceChildren();
    const A = alphas(), Tv = Ts(), w = 260 / Tv.length, h = 200 / A.length;
    const stats = Object.fromEntries(Object.entries(cells()).map(([k, c]) => [k, meanSe(c.gains)]));
    const lim = Math.max(...Object.values(stats).map((s) => Math.abs(s.mean)), 1e-9);
    A.forEach((a, i) => Tv.forEach((T, j) => {
      const s = stats[key(a, T)], x = 50 + j * w, y = 10 + i * h;
      const r = el("rect", { x, y, width: w - 2, height: h - 2, fill: colour(s.mean, lim), class: "cell",
                             "data-alpha": a, "data-t": T, stroke: "#333", "stroke-width": 0.5 });
      r.addEventListener("mouseenter", () => show(a, T));
      r.addEventListener("click", () => { model.set("picked", [a, T]); model.save_changes(); show(a, T); });
      heat.append(r, el("text", { x: x + w / 2 - 1, y: y + h / 2 + 4, "font-size": 11, "text-anchor": "middle",
                                  fill: Math.abs(s.mean) > 0.6 * lim ? "white" : "black", "pointer-events": "none" },
                        pts(s.mean)));
    }));
    A.forEach((a, i) => heat.append(el("text", { x: 44, y: 10 + i * h + h / 2 + 4, "font-size": 11, "text-anchor": "end" }, `α ${a}`)));
    Tv.forEach((T, j) => heat.append(el("text", { x: 50 + j * w + w / 2, y: 226, "font-size": 11, "text-anchor": "middle" }, `T ${T}`)));
    heat.append(el("text", { x: 50, y: 244, "font-size": 11 }, "paired gain over CE (points)"));
  }
  model.on("change:picked", drawCurves);
  model.on("change:cells", () => { drawHeat(); drawCurves(); });
  drawHeat(); drawCurves();
  show(...model.get("picked"));
}

export default { render };
