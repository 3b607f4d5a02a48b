"""The temperature explorer's JavaScript (kdnb/explorer.js) computes what kdnb.losses computes, to
1e-6, for a table of (logits, T, α); and its static HTML, opened in headless Chromium from file://
with every other request refused, redraws to kdnb's numbers when a slider moves."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kdnb import widgets

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
