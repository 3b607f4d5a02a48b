"""The web site works offline, and says how each chapter was run.

A Sphinx extension, listed under ``sphinx: extra_extensions`` in ``_config.yml``:

- MathJax, require.js and the ipywidgets HTML manager (which draws the widgets from the
  state saved in the executed notebooks) are served from ``_static/offline/`` of the site
  itself, never from a CDN, so the book reads from a file or an intranet. The JavaScript
  comes from the npm registry, once: ``npm pack`` tarballs are kept in ``_build/.assets``,
  so later builds need no network.
- matplotlib's ``to_jshtml`` animations link Font Awesome 4 from a CDN for their buttons;
  the pages link a local copy instead.
- Each executed chapter shows under its title how long its code ran, with which profile
  and on which device.
"""
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

# html-manager 1.0.x draws ipywidgets 8 state (ipywidgets 7 needs 0.20.x).
PACKAGES = {
    "mathjax": "3.2.2",
    "requirejs": "2.3.8",
    "@jupyter-widgets/html-manager": "1.0.15",
    "font-awesome": "4.7.0",  # icons of the animation buttons
}
VENDOR = "offline"  # under the site's _static/
FONT_AWESOME = f"{VENDOR}/font-awesome/css/font-awesome.min.css"
FONT_AWESOME_CDN = re.compile(r"https?://maxcdn\.bootstrapcdn\.com/font-awesome/[\d.]+/css/font-awesome(\.min)?\.css")
MATHJAX = f"{VENDOR}/mathjax/tex-mml-chtml.js"
REQUIRE = f"{VENDOR}/require.js"
WIDGETS = f"{VENDOR}/jupyter-widgets/embed-amd.js"
WIDGETS_PATHS = f"{VENDOR}/jupyter-widgets-paths.js"
# embed-amd.js loads its icon fonts from beside the AMD module it defines, whose URL requirejs
# makes from the module name (page folder + "@jupyter-widgets/html-manager/dist/"): map that
# name to the local copy. Runs between require.js and embed-amd.js.
WIDGETS_PATHS_JS = """(() => {
  const here = document.currentScript.src.replace(/[^/]*$/, "");
  require.config({paths: {"@jupyter-widgets/html-manager/dist": here + "jupyter-widgets"}});
})();
"""


def tarball(name, version, cache):
    """Path of the npm tarball of ``name@version`` in ``cache``, fetched with ``npm pack``
    the first time."""
    cache = Path(cache)
    path = cache / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(
            f"npm not found on PATH: it is needed once to fetch {name}@{version} for the site's "
            f"offline JavaScript; install Node.js/npm, or put {path.name} (from `npm pack "
            f"{name}@{version}`) into {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        run = subprocess.run([npm, "pack", "--silent", f"{name}@{version}", "--pack-destination", tmp],
                             capture_output=True, text=True)
        got = list(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(got) != 1:
            raise RuntimeError(f"`npm pack {name}@{version}` failed (exit {run.returncode}):\n"
                               f"{run.stderr.strip()}")
        os.replace(got[0], path)  # atomic: a killed fetch leaves no half tarball behind
    return path


def _target(name, member):
    """Where a file of an npm package goes under vendor/, or None to leave it out."""
    parts = PurePosixPath(member).parts[1:]  # drop the tarball's "package/"
    if not parts:
        return None
    if parts == ("LICENSE",):
        return f"{name.rsplit('/', 1)[-1]}/LICENSE" if name != "requirejs" else "require.LICENSE"
    if name == "requirejs":
        return "require.js" if parts == ("require.js",) else None
    if name == "mathjax":
        # es5/ minus the other combined components (tex-svg.js, ...) the pages never load
        keep = parts[0] == "es5" and (len(parts) > 2 or parts[1] == "tex-mml-chtml.js")
        return "mathjax/" + "/".join(parts[1:]) if keep else None
    if name == "@jupyter-widgets/html-manager":
        # the embed bundle and the fonts it loads from beside itself
        keep = len(parts) == 2 and parts[0] == "dist" and not parts[1].endswith(".map") \
            and parts[1] not in ("embed.js", "libembed-amd.js")
        return "jupyter-widgets/" + parts[1] if keep else None
    if name == "font-awesome":
        keep = parts[0] == "fonts" or parts == ("css", "font-awesome.min.css")
        return "font-awesome/" + "/".join(parts) if keep else None
    raise ValueError(f"name must be one of {', '.join(PACKAGES)}, got {name!r}")


def install_assets(static_dir, cache):
    """Put the JavaScript (and fonts) of ``PACKAGES`` under ``static_dir/offline/``.
    Returns the number of files written."""
    dest = Path(static_dir) / VENDOR
    count = 0
    for name, version in PACKAGES.items():
        with tarfile.open(tarball(name, version, cache)) as tar:
            for member in tar.getmembers():
                target = _target(name, member.name) if member.isfile() else None
                if target is None:
                    continue
                out = dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
                count += 1
    (Path(static_dir) / WIDGETS_PATHS).write_text(WIDGETS_PATHS_JS)
    return count + 1


def run_info(runtime, profile, device):
    """The line under a chapter's title, e.g. "This page's code ran in 1 min 5 s (quick profile, cpu)."."""
    minutes, seconds = divmod(round(runtime), 60)
    took = f"{minutes} min {seconds} s" if minutes else f"{runtime:.1f} s"
    return f"This page's code ran in {took} ({profile} profile, {device})."


# --- Sphinx hooks -------------------------------------------------------------------------

def _cache(app):
    return Path(app.outdir).parent / ".assets"


def _configure(app, config):
    config.mathjax_path = MATHJAX
    config.nb_ipywidgets_js = {REQUIRE: {}, WIDGETS_PATHS: {}, WIDGETS: {}}  # loaded in this order


def _fetch(app):
    # early, so a missing npm fails the build before minutes of executing chapters
    if app.builder.format == "html":
        for name, version in PACKAGES.items():
            tarball(name, version, _cache(app))


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        install_assets(Path(app.outdir) / "_static", _cache(app))


def _device():
    from .train import default_device
    return default_device().type


# The widget manager typesets labels with MathJax 2's `MathJax.Hub.Queue`, which MathJax 3 lacks
# (uncaught TypeError). Give it that one call: set on the config object in case widgets draw
# before MathJax loads, and on MathJax itself once it is ready.
HUB_SHIM = """(() => {
  const queue = (job) => {
    const el = Array.isArray(job) ? job[2] : null;
    const typeset = () => MathJax.startup.promise.then(() => MathJax.typesetPromise(el ? [el] : undefined));
    if (window.MathJax.typesetPromise) return typeset();
    window.addEventListener("load", typeset);
  };
  window.MathJax = window.MathJax || {};
  MathJax.Hub = {Queue: queue};
  MathJax.startup = Object.assign(MathJax.startup || {}, {ready: () => {
    MathJax.startup.defaultReady();
    MathJax.Hub = {Queue: queue};
  }});
})();"""


def _page(app, pagename, templatename, context, doctree):
    _drop_repeated_scripts(context)
    scripts = [getattr(js, "filename", js) for js in context.get("script_files", [])]
    if f"_static/{MATHJAX}" in scripts and f"_static/{WIDGETS}" in scripts:
        app.builder.add_js_file(None, body=HUB_SHIM)
    if "body" in context:
        local = context["pathto"](f"_static/{FONT_AWESOME}", 1)
        context["body"] = FONT_AWESOME_CDN.sub(local, context["body"])
    _add_run_info(app, pagename, context, doctree)


def _drop_repeated_scripts(context):
    """sphinx-thebe's inline `const THEBE_JS_URL = ...` lands twice on each page, and the second
    copy throws "Identifier has already been declared"; keep the first of identical scripts."""
    scripts, seen = context.get("script_files"), set()
    if not isinstance(scripts, list):
        return
    unique = []
    for js in scripts:
        # one copy comes with filename None, the other with ""
        key = (getattr(js, "filename", js) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def _add_run_info(app, pagename, context, doctree):
    from myst_nb.sphinx_ import NbMetadataCollector
    if doctree is None or pagename not in NbMetadataCollector.get_doc_data(app.env):
        return
    data = NbMetadataCollector.get_exec_data(app.env, pagename)
    if not data or not data.get("succeeded") or data.get("runtime") is None or "body" not in context:
        return
    from .profiles import get
    if not hasattr(app, "_kdnb_device"):
        app._kdnb_device = _device()
    line = run_info(data["runtime"], get().name, app._kdnb_device)
    html = f'<p class="kdnb-run-info"><small>{line}</small></p>'
    body = context["body"]
    context["body"] = body.replace("</h1>", "</h1>\n" + html, 1) if "</h1>" in body else html + body


def setup(app):
    app.connect("config-inited", _configure)
    app.connect("builder-inited", _fetch)
    app.connect("build-finished", _copy)
    app.connect("html-page-context", _page, priority=900)  # after MathJax's and myst-nb's
    return {"parallel_read_safe": True, "parallel_write_safe": True}
