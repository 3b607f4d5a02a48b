"""The web site works offline, shows no control that needs a kernel, and says how each chapter
was run.

The book's own Sphinx extension (build tooling, not part of kdnb), loaded through
``sphinx: local_extensions`` in ``_config.yml``:

- MathJax is served from ``_static/offline/`` of the site itself, never from a CDN, so the book
  reads from a file or an intranet. It comes from the npm registry, once: ``npm pack`` tarballs
  are kept in ``_build/.assets``, so later builds need no network.
- ipywidgets outputs are dropped, with their saved state: on a static page their sliders would
  move and change nothing. An explorer (``kdnb/book/explorer.js``, ``grid_explorer.js``) is kept
  as its own HTML output: the same module and data, live in the browser without a kernel.
- matplotlib's ``to_jshtml`` animations link Font Awesome from a CDN for their buttons; the
  pages get kdnb's inline-SVG icons instead (``kdnb.book.widgets.offline``).
- Each executed chapter shows under its title how long its code ran, with which profile
  and on which device.
"""
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from docutils import nodes

PACKAGES = {"mathjax": "3.2.2"}
VENDOR = "offline"  # under the site's _static/
MATHJAX = f"{VENDOR}/mathjax/tex-mml-chtml.js"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
STATIC_WIDGET = "kdnb-static-widget"  # the HTML output of kdnb.book.widgets' explorers
LIVE_ONLY = "Live sliders here in JupyterLab (make lab); they need a running kernel, so this page leaves them out."


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
    if name == "mathjax":
        if parts == ("LICENSE",):
            return "mathjax/LICENSE"
        # es5/ minus the other combined components (tex-svg.js, ...) the pages never load
        keep = parts[0] == "es5" and (len(parts) > 2 or parts[1] == "tex-mml-chtml.js")
        return "mathjax/" + "/".join(parts[1:]) if keep else None
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
    return count


def drop_widgets(doctree):
    """Replace each notebook output that holds an ipywidgets view (whatever else its mime bundle
    offers, e.g. the text "VBox(...)") by a line saying where the live version is. Returns how
    many were dropped."""
    bundles = [b for b in doctree.findall(nodes.container) if b.get("nb_element") == "mime_bundle"
               and any(c.get("mime_type") == WIDGET_VIEW for c in b.children)]
    for bundle in bundles:
        static = [c for c in bundle.children if c.get("mime_type") == "text/html" and STATIC_WIDGET in c.astext()]
        if static:  # kdnb's explorers carry their own kernel-free version: the same module, the same data
            bundle.replace_self(static[0].deepcopy())
        else:
            bundle.replace_self(nodes.paragraph(text=LIVE_ONLY, classes=["kdnb-live-only"]))
    return len(bundles)


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
    # the widget state is dropped (_read), so no page needs the widget manager; {} also keeps
    # myst-nb's CDN default off any page where some state slipped through
    config.nb_ipywidgets_js = {}


def _fetch(app):
    # early, so a missing npm fails the build before minutes of executing chapters
    if app.builder.format == "html":
        for name, version in PACKAGES.items():
            tarball(name, version, _cache(app))


def _read(app, doctree):
    from myst_nb.sphinx_ import NbMetadataCollector
    drop_widgets(doctree)
    js_files = NbMetadataCollector.get_doc_data(app.env)[app.env.docname].get("js_files", {})
    for key in [k for k in js_files if k.startswith("ipywidgets")]:  # the state and its loaders
        del js_files[key]


def _copy(app, exception):
    if exception is None and app.builder.format == "html":
        install_assets(Path(app.outdir) / "_static", _cache(app))


def _device():
    from kdnb.device import default_device
    return default_device().type


def _page(app, pagename, templatename, context, doctree):
    from kdnb.book.widgets import offline
    _drop_repeated_scripts(context)
    if "body" in context:
        context["body"] = offline(context["body"])
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
    from kdnb.book.profiles import get
    if not hasattr(app, "_kdnb_device"):
        app._kdnb_device = _device()
    line = run_info(data["runtime"], get().name, app._kdnb_device)
    html = f'<p class="kdnb-run-info"><small>{line}</small></p>'
    body = context["body"]
    context["body"] = body.replace("</h1>", "</h1>\n" + html, 1) if "</h1>" in body else html + body


def setup(app):
    app.connect("config-inited", _configure)
    app.connect("builder-inited", _fetch)
    app.connect("doctree-read", _read)
    app.connect("build-finished", _copy)
    app.connect("html-page-context", _page, priority=900)  # after MathJax's and myst-nb's
    return {"parallel_read_safe": True, "parallel_write_safe": True}
