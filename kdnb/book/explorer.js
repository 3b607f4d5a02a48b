// The temperature explorer: a teacher's and a student's logits for one example, softened at T and
// mixed with weight α, computed and drawn in the browser as the sliders move. One ES module for
// both homes: anywidget's render() in JupyterLab (the model is the Python widget's traits), and a
// static page (kdnb.widgets.TemperatureWidget's HTML output brings a small model of its own).
// The arithmetic is kdnb.losses' (tests/test_widgets.py compares the two to 1e-6).

export function softmax(z, T) {
  const m = Math.max(...z.map((v) => v / T));
  const e = z.map((v) => Math.exp(v / T - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

const entropy = (p) => -p.reduce((a, v) => a + (v > 0 ? v * Math.log(v) : 0), 0);

// p = softmax(z_t / T), q = softmax(z_s / T); KL(p ‖ q); the Hinton loss
// α·T²·KL + (1 − α)·CE(softmax(z_s), y); and its gradient on each student logit,
// α·T·(q − p) + (1 − α)·(softmax(z_s) − onehot(y)).
export function explain(teacher, student, label, T, alpha) {
  const p = softmax(teacher, T), q = softmax(student, T), q1 = softmax(student, 1);
  const kl = p.reduce((a, v, i) => a + (v > 0 ? v * (Math.log(v) - Math.log(q[i])) : 0), 0);
  const ce = -Math.log(q1[label]);
  const grad = q.map((v, i) => alpha * T * (v - p[i]) + (1 - alpha) * (q1[i] - (i === label ? 1 : 0)));
  return { p, q, H_teacher: entropy(p), H_student: entropy(q), kl, t2kl: T * T * kl, ce,
           loss: alpha * T * T * kl + (1 - alpha) * ce, grad };
}

// el (an SVG element with attributes) comes from svg.js, put before this module by kdnb.book.widgets.
const fmt = (v) => v.toFixed(4);

function slider(name, label, min, max, step, model) {
  const box = document.createElement("label");
  box.className = "kdnb-x-slider";
  const input = Object.assign(document.createElement("input"),
    { type: "range", min, max, step, value: model.get(name), name });
  const out = document.createElement("output");
  box.append(label + " ", input, out);
  input.addEventListener("input", () => { model.set(name, Number(input.value)); model.save_changes(); });
  return { box, input, out };
}

function render({ model, el: root }) {
  root.classList.add("kdnb-explorer");
  const T = slider("T", "T", 0.5, 20, 0.1, model), A = slider("alpha", "α", 0, 1, 0.05, model);
  const controls = document.createElement("div");
  controls.style.cssText = "display: flex; flex-wrap: wrap; gap: 0.5em 2em; align-items: center";
  controls.append(T.box, A.box);
  const readout = document.createElement("div");
  readout.className = "kdnb-x-readout";
  readout.style.cssText = "white-space: pre-wrap; font-family: monospace; font-size: 13px; margin: 0.4em 0";
  const W = 640, H = 300, top = 16, mid = 190, bottom = 280, left = 44;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  root.append(controls, readout, svg);

  function draw() {
    const t = model.get("T"), a = model.get("alpha"), names = model.get("class_names");
    const n = explain(model.get("teacher"), model.get("student"), model.get("label"), t, a);
    T.input.value = t; A.input.value = a;
    T.out.textContent = t.toFixed(1); A.out.textContent = a.toFixed(2);
    readout.textContent = `H(teacher) = ${fmt(n.H_teacher)}   H(student) = ${fmt(n.H_student)}   ` +
      `KL = ${fmt(n.kl)}   T²·KL = ${fmt(n.t2kl)}   CE = ${fmt(n.ce)}   loss = ${fmt(n.loss)}`;
    readout.dataset.values = JSON.stringify(n);
    root.dataset.state = JSON.stringify({ teacher: model.get("teacher"), student: model.get("student"),
                                          label: model.get("label"), T: t, alpha: a });
    svg.replaceChildren();
    const k = n.p.length, w = (W - left - 8) / k;
    const pmax = Math.max(...n.p, ...n.q) * 1.1;          // the axis follows the bars (T = 20: all small)
    const gmax = Math.max(...n.grad.map(Math.abs), 1e-12) * 1.1;
    const y = (v) => mid - (mid - top) * v / pmax, g0 = (bottom + mid + 20) / 2, gy = (v) => g0 - (bottom - mid - 20) / 2 * v / gmax;
    svg.append(el("text", { x: 2, y: top + 4, "font-size": 11 }, pmax.toFixed(2)),
               el("text", { x: 2, y: mid, "font-size": 11 }, "0"),
               el("text", { x: 2, y: g0 - 4, "font-size": 10 }, "∂loss/∂z"),
               el("line", { x1: left, x2: W, y1: g0, y2: g0, stroke: "#999" }));
    n.p.forEach((pv, i) => {
      const x = left + i * w;
      svg.append(el("rect", { x: x + 2, y: y(pv), width: w / 2 - 3, height: mid - y(pv), fill: "#1f77b4", class: "teacher" }),
                 el("rect", { x: x + w / 2, y: y(n.q[i]), width: w / 2 - 3, height: mid - y(n.q[i]), fill: "#ff7f0e", class: "student" }),
                 el("rect", { x: x + w / 4, y: Math.min(g0, gy(n.grad[i])), width: w / 2, height: Math.abs(gy(n.grad[i]) - g0),
                              fill: "#2ca02c", class: "grad" }),
                 el("text", { x: x + w / 2, y: mid + 14, "font-size": 12, "text-anchor": "middle",
                              "font-weight": i === model.get("label") ? "bold" : "normal" }, names[i] + (i === model.get("label") ? "*" : "")));
    });
    svg.append(el("text", { x: W - 150, y: top + 4, "font-size": 12, fill: "#1f77b4" }, "teacher softmax(z/T)"),
               el("text", { x: W - 150, y: top + 20, "font-size": 12, fill: "#ff7f0e" }, "student softmax(z/T)"));
  }
  for (const name of ["T", "alpha", "teacher", "student", "label"]) model.on(`change:${name}`, draw);
  draw();
}

export default { render };
