"""The chapters in JupyterLab, as `make lab` starts it: a real server on 127.0.0.1 with a token.

Its contents API hands book/00_intro.md over as a notebook (jupytext at work), Lab's settings
open Markdown/MyST as notebooks by default but not Python files, and a kernel started through the
server runs the chapter's first code cell's imports over the websocket, in book/, with this kdnb.
The whole first cell trains a teacher (minutes on a cold cache): running chapters end to end is
nbval's and `make book`'s job. Saving every page back as Lab's autosave does (on a copy) leaves
its bytes unchanged, and `make lab`, unlike `make book` and `make test`, keeps progress bars on."""
import ast
import contextlib
import difflib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "book/00_intro.md"
LAB_CONFIG = ROOT / ".jupyter" / "jupyter_lab_config.py"
JUPYTEXT_VIEWER = "Jupytext Notebook"  # the document factory jupytext's Lab extension registers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_lab(tmp, *args):
    """A JupyterLab server started like `make lab` (plus ``args``); yields (base url, token)."""
    port, token = free_port(), secrets.token_hex(16)
    # keep the user's own Jupyter config, runtime files and kernels out of the test
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_DATA_DIR": str(tmp / "data")}
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", f"--config={LAB_CONFIG}", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", "--allow-root", *args]
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/api/status", params={"token": token}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in 60 s:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, token
    finally:
        proc.terminate()  # SIGTERM: the server shuts its kernels down and exits
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab")) as server:
        yield server


@pytest.fixture(scope="module")
def lab_on_copy(tmp_path_factory):
    """The same server on a copy of jupytext.toml and book/*.md, for tests that save files;
    yields (server, root of the copy)."""
    root = tmp_path_factory.mktemp("copy")
    shutil.copy(ROOT / "jupytext.toml", root)
    (root / "book").mkdir()
    for md in ROOT.glob("book/*.md"):
        shutil.copy(md, root / "book")
    with running_lab(tmp_path_factory.mktemp("lab-copy"), f"--ServerApp.root_dir={root}") as server:
        yield server, root


def api(lab, method, path, **kwargs):
    url, token = lab
    r = requests.request(method, f"{url}{path}", headers={"Authorization": f"token {token}"},
                         timeout=30, **kwargs)
    assert r.ok, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r.json() if r.text else None


def code_cells_of_md(path):
    """The code cells' sources, without their MyST options (``:tags: [remove-input]`` and the blank
    line after them), which jupytext turns into cell metadata."""
    cells = re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", path.read_text(), re.M | re.S)
    return [re.sub(r"\A(?::[\w-]+:[^\n]*\n)+\n?", "", c) for c in cells]


@pytest.fixture(scope="module")
def chapter(lab):
    return api(lab, "GET", f"/api/contents/{CHAPTER}", params={"type": "notebook", "content": 1})


def test_token_is_required(lab):
    url, _ = lab
    assert requests.get(f"{url}/api/contents/{CHAPTER}", timeout=10).status_code == 403


def test_chapter_opens_as_notebook(chapter):
    assert chapter["type"] == "notebook"
    cells = chapter["content"]["cells"]
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    assert code, "no code cells: jupytext did not read the chapter"
    assert code == [s.rstrip("\n") for s in code_cells_of_md(ROOT / CHAPTER)]
    assert any(c["cell_type"] == "markdown" and c["source"].startswith("# ") for c in cells)
    assert chapter["content"]["metadata"]["kernelspec"]["language"] == "python"


def test_lab_opens_markdown_as_notebook_but_not_python(lab):
    plugin = api(lab, "GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    viewers = {**plugin["schema"]["properties"]["defaultViewers"].get("default", {}),
               **(plugin.get("settings") or {}).get("defaultViewers", {})}
    assert viewers.get("markdown") == JUPYTEXT_VIEWER
    assert viewers.get("myst") == JUPYTEXT_VIEWER
    assert viewers.get("python", "Editor") != JUPYTEXT_VIEWER
    # the factory name is the one jupytext's Lab extension registers
    ext = Path(sys.prefix, "share/jupyter/labextensions/jupyterlab-jupytext/static")
    assert any(f'FACTORY="{JUPYTEXT_VIEWER}"' in p.read_text(errors="ignore") for p in ext.glob("*.js"))


def execute(ws, code, timeout=120):
    """Run ``code`` in the kernel behind websocket ``ws``; returns (reply content, stdout, errors)."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    reply, idle, stdout, errors = None, False, [], []
    deadline = time.monotonic() + timeout
    while reply is None or not idle:
        ws.settimeout(max(0.1, deadline - time.monotonic()))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "execute_reply":
            reply = content
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
        elif kind == "stream" and content["name"] == "stdout":
            stdout.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))
    return reply, "".join(stdout), errors


def imports_of(source):
    """The top-level import statements of a cell and the names they bind."""
    tree = ast.parse(source)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [(a.asname or a.name).split(".")[0] for n in imports for a in n.names]
    return "\n".join(ast.get_source_segment(source, n) for n in imports), names


def test_kernel_runs_the_chapters_first_cell_imports(lab, chapter):
    first = next(c["source"] for c in chapter["content"]["cells"] if c["cell_type"] == "code")
    code, names = imports_of(first)
    assert names, f"the first code cell of {CHAPTER} imports nothing:\n{first}"
    kernel_name = chapter["content"]["metadata"]["kernelspec"]["name"]
    session = api(lab, "POST", "/api/sessions", json={
        "path": CHAPTER, "type": "notebook", "name": Path(CHAPTER).name, "kernel": {"name": kernel_name}})
    url, token = lab
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/api/kernels/{session['kernel']['id']}/channels",
        header=[f"Authorization: token {token}"], timeout=60)
    try:
        reply, _, errors = execute(ws, code)
        assert reply["status"] == "ok" and not errors, "\n".join(errors)
        check = ("import json, os, kdnb\n"
                 f"print(json.dumps({{'cwd': os.getcwd(), 'kdnb': kdnb.__file__, "
                 f"'missing': [n for n in {names!r} if n not in globals()]}}))")
        reply, out, errors = execute(ws, check)
        assert reply["status"] == "ok" and not errors, "\n".join(errors)
        seen = json.loads(out)
        assert seen["missing"] == []
        assert Path(seen["cwd"]).resolve() == (ROOT / CHAPTER).parent.resolve()  # relative paths work as in the book
        assert Path(seen["kdnb"]).resolve().parent == ROOT / "kdnb"  # this checkout's package
    finally:
        ws.close()
        api(lab, "DELETE", f"/api/sessions/{session['id']}")
    assert session["kernel"]["id"] not in [k["id"] for k in api(lab, "GET", "/api/kernels")]


def kernel_info(lab, kernel_name):
    """The kernel_info_reply of a fresh kernel: JupyterLab copies its language_info into the
    notebook's metadata."""
    url, token = lab
    kernel = api(lab, "POST", "/api/kernels", json={"name": kernel_name})
    ws = websocket.create_connection(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/api/kernels/{kernel['id']}/channels",
                                     header=[f"Authorization: token {token}"], timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "kernel_info_request", "username": "test",
                                       "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
                            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [], "content": {}}))
        while True:
            msg = json.loads(ws.recv())
            if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]
    finally:
        ws.close()
        api(lab, "DELETE", f"/api/kernels/{kernel['id']}")


def as_lab_saves_it(nb, kernelspec, language_info):
    """The notebook model as JupyterLab sends it back after a run: the kernel's metadata, widget
    state, outputs and execution counts, cell metadata of its own."""
    nb["metadata"].update(kernelspec=kernelspec, language_info=language_info, widgets={
        "application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}})
    for cell in nb["cells"]:
        cell["metadata"].update(scrolled=True, jupyter={"outputs_hidden": False})
        if cell["cell_type"] == "code":
            cell.update(execution_count=1, outputs=[{"output_type": "stream", "name": "stdout", "text": "ran\n"}])
    return nb


def test_saving_from_lab_leaves_every_page_byte_identical(lab_on_copy):
    """Open each book/*.md through the contents API as JupyterLab does, save it back as Lab's
    autosave would: the file must not change (no jupytext_version, no language_info, no header
    added to a page that has none)."""
    lab, root = lab_on_copy
    specs = api(lab, "GET", "/api/kernelspecs")
    name = specs["default"]
    spec = specs["kernelspecs"][name]["spec"]
    kernelspec = {"display_name": spec["display_name"], "language": spec["language"], "name": name}
    language_info = kernel_info(lab, name)["language_info"]
    pages = sorted((root / "book").glob("*.md"))
    assert any(p.read_text().startswith("---\njupytext:") for p in pages), "no chapter with a jupytext header"
    changed = []
    for page in pages:
        path, before = f"book/{page.name}", page.read_bytes()
        model = api(lab, "GET", f"/api/contents/{path}", params={"type": "notebook", "content": 1})
        assert model["type"] == "notebook" and model["content"]["cells"], path
        nb = as_lab_saves_it(model["content"], kernelspec, language_info)
        api(lab, "PUT", f"/api/contents/{path}", json={"type": "notebook", "format": "json", "content": nb})
        after = page.read_bytes()
        if after != before:
            changed.append("".join(difflib.unified_diff(before.decode().splitlines(True), after.decode().splitlines(True),
                                                        f"{path} as committed", f"{path} saved from Lab", n=1)))
    assert not changed, "saving from JupyterLab rewrote:\n" + "\n".join(changed)


def make_env(target, tmp_path):
    """KDNB_PROGRESS as the recipe of `make <target>` sees it: the Makefile run on a scratch copy
    with stand-ins for the tools, from an environment without KDNB_PROGRESS."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("python", "jupyter", "jupyter-book", "jupytext"):
        (fake / tool).write_text('#!/bin/sh\necho "KDNB_PROGRESS=${KDNB_PROGRESS-unset}"\n')
        (fake / tool).chmod(0o755)
    (tmp_path / "_build").mkdir()
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "stamp").touch()  # newer than pyproject.toml: nothing to install
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDNB_", "MAKE", "MFLAGS"))}
    done = subprocess.run(["make", "-s", target, f"BIN={fake}", "STAMP=stamp"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return set(re.findall(r"^KDNB_PROGRESS=(\S+)$", done.stdout, re.M))


@pytest.mark.skipif(not shutil.which("make"), reason="needs GNU make")
@pytest.mark.parametrize("target, progress", [("lab", "unset"), ("book", "0"), ("test", "0")])
def test_only_the_book_and_test_targets_switch_progress_off(target, progress, tmp_path):
    assert make_env(target, tmp_path) == {progress}
