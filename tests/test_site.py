"""The built web site, as a reader meets it: every chapter page opened in headless Chromium.

The site is served from 127.0.0.1 and every request to any other host is recorded and refused,
so the pages must work offline. Per page: the title renders, every image loaded, the math is
typeset by MathJax, no output holds a Python traceback, no ipywidgets control (it would change
nothing without a kernel), the kernel-free animation sliders change the shown frame, no code
cell scrolls sideways in the 1280-px viewport (tests/test_book_style.py keeps the lines short),
no check's code (an assert, a claims check) is shown, each chapter says how it was run, and no script error; from a web server and from file://. Screenshots land in _build/screenshots/ for a person to look at.

Building the site executes every chapter (minutes), so the test reuses _build/html when the
stamp `_build/.book-built` (written after a successful `make book`, or by this test) is newer
than book/, kdnb/, _config.yml and _toc.yml; else it builds it first, like `make book`.
KDNB_SITE_REUSE=1 tests whatever is in _build/html as it is.

The browser is Debian's chromium (`apt-get install chromium`, done here when missing and we may)
driven by Playwright (`pip install playwright`; never `playwright install`)."""
import functools
import http.server
import json
import importlib
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
BUILT = BUILD / ".book-built"
SHOTS = BUILD / "screenshots"
SOURCES = ["book", "kdnb", "_config.yml", "_toc.yml"]
WAIT_MS = 20_000  # for MathJax and the widget manager to finish drawing
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def extension():
    """The book's own Sphinx extension, found the way _config.yml's local_extensions names it."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    (name, path), = config["sphinx"]["local_extensions"].items()
    folder = str((ROOT / path).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def chapters(toc=ROOT / "_toc.yml"):
    """The pages of _toc.yml in reading order, as paths without suffix (book/00_intro, ...)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    found.append(node[key])
            for value in node.values():
                walk(value if isinstance(value, list) else None)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(toc.read_text()))
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in found]


def newest_source():
    files = [p for name in SOURCES for p in ([ROOT / name] if (ROOT / name).is_file()
                                              else (ROOT / name).rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return max(p.stat().st_mtime for p in files)


def source_of(page):
    path = ROOT / f"{page}.md"
    return path.read_text() if path.exists() else ""


def code_of(page):
    """The code cells' source of a MyST chapter, joined."""
    return "\n".join(re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", source_of(page), re.M | re.S))


def failures():
    """book/_ext/kdnb_failures.py: names the chapter, cell and claim of a failed build."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        return importlib.import_module("kdnb_failures")
    finally:
        sys.path.pop(0)


def build_errors(text):
    """The Sphinx warnings and the failing cell of a build log, else its end."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = text.splitlines()
    found = [line for line in lines if re.search(r": (WARNING|ERROR|CRITICAL)", line)][:20]
    for i, line in enumerate(lines):
        if "An error occurred while executing the following cell" in line:
            found += lines[i:i + 20]
            break
    return "\n".join(found or lines[-40:])


@pytest.fixture(scope="module")
def site():
    """_build/html, built first when missing or older than its sources."""
    fresh = BUILT.exists() and (HTML / "index.html").exists() and BUILT.stat().st_mtime >= newest_source()
    if not fresh and os.environ.get("KDNB_SITE_REUSE") != "1":
        BUILT.unlink(missing_ok=True)
        BUILD.mkdir(exist_ok=True)
        log = BUILD / "book.log"
        jb = Path(sys.executable).with_name("jupyter-book")
        with open(log, "w") as out:  # same command as `make book`; --all as kdnb/ may have changed
            run = subprocess.run([str(jb), "build", "--all", ".", "-W", "--keep-going"], cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT)
        if run.returncode != 0:
            text = log.read_text()
            f = failures().failure(text)
            why = ("\n" + failures().explain(f, "building the site")) if f else ""
            pytest.fail(f"building the site failed (exit {run.returncode}); from {log}:\n{build_errors(text)}{why}")
        BUILT.touch()
    if not (HTML / "index.html").exists():
        pytest.fail(f"no site in {HTML}")
    return HTML


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def chromium():
    """Path of Debian's chromium, installed with apt-get when missing and we are root."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    why = "chromium is not installed"
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        run = subprocess.run(install, env=env, capture_output=True, text=True)
        if run.returncode != 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            run = subprocess.run(install, env=env, capture_output=True, text=True)
        if shutil.which("chromium"):
            return shutil.which("chromium")
        why += f" and `{' '.join(install)}` failed:\n{(run.stdout + run.stderr)[-2000:]}"
    else:
        why += " and cannot be installed here (needs root and apt-get): run `apt-get install chromium`"
    if os.environ.get("CI"):
        pytest.fail(why)  # CI can install it, so there the test must run
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page that records every request and refuses those leaving 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.external, pg.broken, pg.errors = [], [], []

    def route(r):
        url = r.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname != "127.0.0.1":
            pg.external.append(url)
            return r.abort()
        return r.continue_()

    def answered(response):
        if response.status >= 400 and urlsplit(response.url).path != "/favicon.ico":
            pg.broken.append(f"{response.status} {response.url}")

    context.route("**/*", route)
    pg.on("response", answered)
    pg.on("requestfailed", lambda r: urlsplit(r.url).hostname == "127.0.0.1" and r.response() is None
          and pg.broken.append(f"failed ({r.failure}) {r.url}"))
    pg.on("websocket", lambda ws: pg.external.append(ws.url))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def wait_quietly(pg, script, timeout=None):
    from playwright.sync_api import TimeoutError
    try:
        pg.wait_for_function(script, timeout=timeout or WAIT_MS)
        return True
    except TimeoutError:
        return False


def check_explorers(pg):
    """Move each temperature explorer's sliders (kdnb/explorer.js, running with no kernel) and
    check that the numbers it prints and the bars it draws are kdnb's for the new T and α."""
    from kdnb.book.widgets import explain_all
    problems = []
    explorers = pg.locator(".kdnb-explorer")
    for i in range(explorers.count()):
        ex = explorers.nth(i)
        for T, alpha in ((9.5, 0.3), (1.5, 0.9)):
            ex.evaluate("""(root, [T, a]) => {
                for (const [name, v] of [["T", T], ["alpha", a]]) {
                    const s = root.querySelector(`input[name=${name}]`);
                    s.value = v; s.dispatchEvent(new Event("input"));
                }}""", [T, alpha])
            state = json.loads(ex.get_attribute("data-state"))
            ref = explain_all(state["teacher"], state["student"], state["label"], T, alpha)
            text = ex.locator(".kdnb-x-readout").inner_text()
            if f"T²·KL = {ref['t2kl']:.4f}" not in text or f"loss = {ref['loss']:.4f}" not in text:
                problems.append(f"explorer {i} at T = {T}, α = {alpha} prints {text!r}, not kdnb's "
                                f"T²·KL = {ref['t2kl']:.4f}, loss = {ref['loss']:.4f}")
            bars = ex.locator("rect.teacher").evaluate_all("rs => rs.map(r => +r.getAttribute('height'))")
            if len(bars) != len(ref["p"]) or max(bars) <= 0:
                problems.append(f"explorer {i}: {len(bars)} teacher bars drawn for {len(ref['p'])} classes")
            else:  # the bars' heights are in proportion to kdnb's probabilities
                k = max(bars) / max(ref["p"])
                if any(abs(b - k * p) > 0.5 for b, p in zip(bars, ref["p"])):
                    problems.append(f"explorer {i}: bar heights {bars} are not kdnb's probabilities {ref['p']}")
    return problems


def check_animations(pg):
    """Move each to_jshtml animation's slider like a reader would (a click near its right end);
    the value and the shown frame must change. Returns the problems found."""
    problems = []
    animations = pg.locator("div.animation")
    for i in range(animations.count()):
        anim = animations.nth(i)
        slider, img = anim.locator("input[type=range]"), anim.locator("img")
        if slider.count() != 1 or img.count() != 1:
            problems.append(f"animation {i}: expected one slider and one image")
            continue
        slider.scroll_into_view_if_needed()
        last = int(slider.get_attribute("max") or 0)
        before, src_before = slider.input_value(), img.get_attribute("src")
        if last < 1:
            problems.append(f"animation {i}: only one frame (slider max {last})")
            continue
        box = slider.bounding_box()
        pg.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
        after, src_after = slider.input_value(), img.get_attribute("src")
        if after == before:
            problems.append(f"animation {i}: the slider did not move (value {before})")
        elif src_after == src_before:
            problems.append(f"animation {i}: slider moved {before} -> {after} but the frame did not change")
    return problems


def inspect(page, code, screenshot=None):
    """What is wrong with the loaded page, whose chapter has code cells ``code``; saves a
    screenshot once the page has drawn, before moving its sliders."""
    problems = []

    # title
    h1 = page.locator("article h1").first
    title = h1.inner_text().strip().rstrip("#").strip() if h1.count() else ""
    if not title or not h1.is_visible():
        problems.append("no visible <h1> title")
    elif title not in page.title():
        problems.append(f"page title {page.title()!r} does not name the heading {title!r}")

    # math: every math element typeset by MathJax, none in error
    n_math = page.locator("article .math").count()
    if n_math:
        if not wait_quietly(page, "() => window.MathJax && MathJax.startup && MathJax.startup.promise"):
            problems.append(f"{n_math} math elements but MathJax never started")
        else:
            page.evaluate("() => MathJax.startup.promise")
            bare = page.locator("article .math:not(:has(mjx-container))").count()
            if bare:
                problems.append(f"{bare} of {n_math} math elements not typeset")
            if page.locator("mjx-merror").count():
                problems.append("MathJax reports a TeX error: " + page.locator("mjx-merror").first.inner_text())

    # controls: none that needs a kernel. ipywidgets leave saved views and state (drawn as
    # .jupyter-widgets); any slider outside a kernel-free animation would change nothing either.
    widgets = page.locator('script[type^="application/vnd.jupyter.widget"], .jupyter-widgets').count()
    if widgets:
        problems.append(f"{widgets} ipywidgets views or state on the page: controls that need a kernel")
    sliders = page.locator("input[type=range]:not(div.animation input):not(.kdnb-explorer input)").count()
    if sliders:
        problems.append(f"{sliders} sliders outside the kernel-free animations and explorers")

    # images: every one loaded
    wait_quietly(page, "() => [...document.images].every(i => i.complete)")
    broken = page.evaluate("() => [...document.images].filter(i => !(i.naturalWidth > 0))"
                           ".map(i => (i.getAttribute('src') || '').slice(0, 80))")
    problems += [f"image not loaded: {src}" for src in broken]

    # outputs: no traceback
    outputs = " ".join(page.locator(".cell_output").all_inner_texts())
    if "Traceback (most recent call last)" in outputs or page.locator(".output.traceback, .output.error").count():
        problems.append("an output holds a Python traceback")
    # outputs: markdown tables rendered as tables, not shown as raw pipes and dashes
    if re.search(r"\|\s*(---|—)\s*\|", outputs):
        problems.append("a markdown table in an output was not rendered as a table")

    # code: no code cell's source scrolls sideways (its outputs may: they print what they print)
    wide = page.evaluate("""() => document.fonts.ready.then(() =>
        [...document.querySelectorAll('.cell_input pre')]
        .filter(p => p.scrollWidth > p.clientWidth + 1)
        .map(p => [p.scrollWidth, p.clientWidth, p.textContent.split('\\n')
                   .reduce((a, b) => b.length > a.length ? b : a, '').slice(0, 60)]))""")
    problems += [f"code cell scrolls sideways ({sw} px of code in a {cw}-px box): {line!r}"
                 for sw, cw, line in wide]

    # checks: the chapters' asserts and claim checks run in the build but are hidden on the page
    # (tagged remove-input or remove-cell; tests/test_book_style.py); only their one-line verdict shows
    shown = page.evaluate("""() => [...document.querySelectorAll('.cell_input pre')]
        .map(p => p.textContent).filter(t => /^\\s*assert\\b/m.test(t) || /\\.check\\(\\)/.test(t))
        .map(t => t.trim().split('\\n')[0].slice(0, 60))""")
    problems += [f"a check's code is shown to readers: {first!r}" for first in shown]

    # how the chapter was run, for chapters with code
    if code.strip():
        info = page.locator(".kdnb-run-info")
        if not info.count() or "profile" not in info.inner_text():
            problems.append("no run time / profile line under the title")

    if screenshot:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    problems += check_animations(page)
    problems += check_explorers(page)
    problems += [f"request to an outside host: {url}" for url in page.external]
    problems += [f"missing file: {r}" for r in page.broken]
    problems += [f"script error: {e}" for e in page.errors]
    return problems


PAGES = chapters()


@pytest.mark.parametrize("name", PAGES)
def test_page(name, server, page):
    page.goto(f"{server}/{name}.html", wait_until="load")
    problems = inspect(page, code_of(name), screenshot=SHOTS / f"{Path(name).name}.png")
    assert not problems, f"{name}.html:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", PAGES)
def test_page_from_file(name, site, page):
    """Readers also open the site straight from disk."""
    page.goto((site / f"{name}.html").as_uri(), wait_until="load")
    problems = inspect(page, code_of(name))
    assert not problems, f"{name}.html:\n  " + "\n  ".join(problems)


BAD_PAGE = """<html><head><title>Other</title></head><body><main><article>
<h1>Broken</h1>
<img src="/missing.png"><img src="https://cdn.example.org/logo.png">
<span class="math">\\(x^2\\)</span>
<div class="cell_output"><pre>Traceback (most recent call last):\n  File "x", line 1</pre></div>
<div class="cell_input"><pre style="width: 200px; overflow: auto">short = 1
long_line = "far wider than the 200-px box that holds it"</pre></div>
<div class="cell_input"><pre>x = 2
assert x == 2</pre></div>
<div class="cell_output"><script type="application/vnd.jupyter.widget-view+json">{}</script></div>
<div class="cell_output"><input type="range" min="0" max="3" value="0"></div>
<div class="animation"><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><input type="range" min="0" max="3" value="0"></div>
<script>undefined_function()</script>
</article></main></body></html>"""


def test_inspect_finds_problems(page, monkeypatch):
    """The checks can fail: a page with each fault gets each one reported."""
    monkeypatch.setattr(sys.modules[__name__], "WAIT_MS", 500)
    url = "http://127.0.0.1:9/bad.html"  # answered here; nothing listens on port 9
    page.route(url, lambda r: r.fulfill(body=BAD_PAGE, content_type="text/html"))
    page.route("**/missing.png", lambda r: r.fulfill(status=404, body="not found"))
    page.goto(url, wait_until="load")
    report = "\n".join(inspect(page, "x = 1"))
    for fault in ["does not name the heading", "MathJax never started", "1 ipywidgets views or state",
                  "1 sliders outside the kernel-free animations",
                  "image not loaded: /missing.png", "missing file: 404 http://127.0.0.1:9/missing.png", "traceback", "no run time", "frame did not change",
                  "code cell scrolls sideways", "'long_line = \"far wider", "a check's code is shown",
                  "outside host: https://cdn.example.org/logo.png", "script error"]:
        assert fault in report, f"{fault!r} not reported in:\n{report}"


def test_pages_come_from_toc():
    """The test covers every chapter: each page of _toc.yml exists as a source."""
    assert PAGES, "_toc.yml names no pages"
    missing = [p for p in PAGES if not any((ROOT / f"{p}{s}").exists() for s in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml names pages without a source: {missing}"


def test_offline_assets_are_complete(tmp_path):
    """What the pages load from _static/offline/ is there, with the files it loads in turn."""
    kdnb_site = extension()
    kdnb_site.install_assets(tmp_path, BUILD / ".assets")
    mathjax = tmp_path / kdnb_site.MATHJAX
    assert mathjax.stat().st_size > 1000
    assert (mathjax.parent / "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").exists()
    assert (mathjax.parent / "input/tex/extensions/boldsymbol.js").exists()  # loaded on demand


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    kdnb_site = extension()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"npm not found.*mathjax@3\.2\.2"):
        kdnb_site.tarball("mathjax", "3.2.2", tmp_path)


def test_run_info_line():
    run_info = extension().run_info
    assert run_info(12.34, "quick", "cpu") == "This page's code ran in 12.3 s (quick profile, cpu)."
    assert run_info(125, "full", "cuda") == "This page's code ran in 2 min 5 s (full profile, cuda)."


def test_the_extension_is_the_books_own():
    """Build tooling lives with the book, not in the kdnb package readers import."""
    kdnb_site = extension()
    assert Path(kdnb_site.__file__).resolve().parent == ROOT / "book" / "_ext"
    assert callable(kdnb_site.setup)
    assert not (ROOT / "kdnb" / "site.py").exists()
    assert "book/_ext/*" in yaml.safe_load((ROOT / "_config.yml").read_text())["exclude_patterns"]


def output_with(*mime_types):
    """A code cell's output area as myst-nb parses it: one mime bundle with these mime types."""
    from docutils import nodes
    bundle = nodes.container(nb_element="mime_bundle")
    for mime in mime_types:
        bundle += nodes.container("", nodes.literal_block(text=mime), mime_type=mime)
    return nodes.container("", bundle, nb_element="cell_code_output", classes=["cell_output"])


def test_widget_outputs_are_dropped_and_others_kept():
    from docutils import nodes
    from docutils.utils import new_document
    kdnb_site = extension()
    doc = new_document("chapter")
    doc += output_with("application/vnd.jupyter.widget-view+json", "text/plain")  # TemperatureExplorer(...)
    doc += output_with("text/html", "text/plain")                                 # HTML(temperature_frames(...))
    assert kdnb_site.drop_widgets(doc) == 1
    mimes = [c["mime_type"] for c in doc.findall(nodes.container) if "mime_type" in c]
    assert mimes == ["text/html", "text/plain"]
    note = list(doc.findall(nodes.paragraph))
    assert len(note) == 1 and "JupyterLab" in note[0].astext()
    assert kdnb_site.drop_widgets(doc) == 0
