"""The temperature explorer's JavaScript (kdnb/explorer.js) computes what kdnb.losses computes, to
1e-6, for a table of (logits, T, α); and its static HTML, opened in headless Chromium from file://
with every other request refused, redraws to kdnb's numbers when a slider moves."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdnb.book import widgets

JS = Path(widgets.__file__).with_name("explorer.js")
CASES = [  # (teacher logits, student logits, label, T, alpha)
    ([6.0, 2.0, 1.0, -1.0, 0.5], [3.0, 2.5, 0.0, -0.5, 0.2], 0, 1.0, 0.5),
    ([6.0, 2.0, 1.0, -1.0, 0.5], [3.0, 2.5, 0.0, -0.5, 0.2], 3, 4.0, 0.9),
    ([12.0, -3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], 1, 0.5, 1.0),
    ([1.0, 1.0, 1.0], [5.0, -5.0, 0.0], 2, 20.0, 0.0),
    ([30.0, -30.0, 0.0, 2.0, 1.0, -4.0, 7.0, 0.5, 3.0, -1.0], [2.0] * 10, 6, 8.0, 0.3),
]
KEYS = ["H_teacher", "H_student", "kl", "t2kl", "ce", "loss"]


def node():
    return shutil.which("node") or pytest.skip("node is not installed (apt-get install nodejs)")


def test_the_browser_math_equals_kdnb_losses():
    script = (f"import {{ explain }} from {json.dumps(JS.as_uri())};\n"
              f"const cases = {json.dumps(CASES)};\n"
              "console.log(JSON.stringify(cases.map(([t, s, y, T, a]) => explain(t, s, y, T, a))));\n")
    run = subprocess.run([node(), "--input-type=module", "-e", script], capture_output=True, text=True, check=True)
    for (t, s, y, T, a), js in zip(CASES, json.loads(run.stdout)):
        ref = widgets.explain_all(t, s, y, T, a)
        for k in KEYS:
            assert js[k] == pytest.approx(ref[k], abs=1e-6), (k, T, a)
        for k in ("p", "q", "grad"):
            assert js[k] == pytest.approx(ref[k], abs=1e-6), (k, T, a)


def test_the_static_widget_moves_in_a_browser_with_no_kernel_and_no_network(tmp_path):
    from playwright.sync_api import sync_playwright
    from test_site import CHROMIUM_FLAGS, chromium  # Debian's chromium, as the site test drives it
    w = widgets.temperature_widget(*CASES[0][:3], T=4.0, alpha=0.5)
    page_file = tmp_path / "page.html"
    page_file.write_text(f"<!doctype html><meta charset='utf-8'><body>{w.static_html()}</body>")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        outside = []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                   else (outside.append(route.request.url), route.abort()))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_selector(".kdnb-x-readout")
        for T, alpha in ((4.0, 0.5), (12.5, 0.5), (12.5, 0.85), (0.5, 0.0)):
            page.evaluate("""([T, a]) => {
                for (const [name, v] of [["T", T], ["alpha", a]]) {
                    const s = document.querySelector(`input[name=${name}]`);
                    s.value = v; s.dispatchEvent(new Event("input"));
                }}""", [T, alpha])
            shown = json.loads(page.get_attribute(".kdnb-x-readout", "data-values"))
            ref = widgets.explain_all(*CASES[0][:3], T, alpha)
            for k in KEYS + ["p", "q", "grad"]:
                assert shown[k] == pytest.approx(ref[k], abs=1e-6), (k, T, alpha)
            assert f"T²·KL = {ref['t2kl']:.4f}" in page.inner_text(".kdnb-x-readout")
            heights = page.eval_on_selector_all("rect.teacher", "rs => rs.map(r => +r.getAttribute('height'))")
            assert len(heights) == 5 and max(heights) > 100  # the axis follows the bars: the tallest fills it
        browser.close()
        assert not errors and not outside, (errors, outside)


def grid_case():
    from kdnb.book import stats
    alphas, Ts = [0.5, 1.0], [1, 4, 16]
    g = lambda a, T, s: 0.01 * (a * T / 4 - 1) + 0.003 * ((s * 7 + int(T)) % 5 - 2)
    gains = {(a, T): [g(a, T, s) for s in range(4)] for a in alphas for T in Ts}
    hist = lambda level: {"val_acc": [level * (1 - 0.5 ** e) for e in range(1, 6)]}
    histories = {(a, T): [hist(0.6 + g(a, T, s)) for s in range(4)] for a in alphas for T in Ts}
    base = [hist(0.6) for _ in range(4)]
    return alphas, Ts, gains, histories, base, stats


def test_the_grid_explorers_statistics_equal_kdnb_stats():
    alphas, Ts, gains, _, _, stats = grid_case()
    js = JS.with_name("grid_explorer.js")
    table = [gains[(a, T)] for a in alphas for T in Ts]
    script = (f"import {{ meanSe }} from {json.dumps(js.as_uri())};\n"
              f"console.log(JSON.stringify({json.dumps(table)}.map(meanSe)));\n")
    run = subprocess.run([node(), "--input-type=module", "-e", script], capture_output=True, text=True, check=True)
    for xs, got in zip(table, json.loads(run.stdout)):
        ref = stats.paired(xs, [0.0] * len(xs))
        assert got["mean"] == pytest.approx(ref.mean, abs=1e-12) and got["se"] == pytest.approx(ref.se, abs=1e-12)


def test_the_static_grid_explorer_hovers_and_picks_in_a_browser(tmp_path):
    from playwright.sync_api import sync_playwright
    from test_site import CHROMIUM_FLAGS, chromium
    alphas, Ts, gains, histories, base, stats = grid_case()
    w = widgets.grid_widget(gains, histories, base, alphas, Ts)
    page_file = tmp_path / "grid.html"
    page_file.write_text(f"<!doctype html><meta charset='utf-8'><body>{w.static_html()}</body>")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_selector("rect.cell")
        assert page.locator("rect.cell").count() == len(alphas) * len(Ts)
        for a, T in ((0.5, 16), (1.0, 1)):
            cell = page.locator(f'rect.cell[data-alpha="{a:g}"][data-t="{T:g}"]')
            cell.hover()
            shown = json.loads(page.get_attribute(".kdnb-g-info", "data-values"))
            ref = stats.paired(gains[(a, T)], [0.0] * 4)
            assert shown["mean"] == pytest.approx(ref.mean) and shown["se"] == pytest.approx(ref.se)
            assert f"{ref.mean * 100:+.1f} ± {ref.se * 100:.1f} points over 4 seeds" in page.inner_text(".kdnb-g-info")
            cell.click()
            assert json.loads(page.locator("svg[data-picked]").get_attribute("data-picked")) == [a, T]
            assert page.locator("polyline.member").count() == 4 and page.locator("polyline.baseline").count() == 4
        browser.close()
        assert not errors, errors
