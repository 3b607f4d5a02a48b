"""What a reader reads when a chapter fails: the chapter, the cell, the line that failed, the error,
and what it means, as the last lines of `make book` (from its log) and of `make test` (from
pytest's reports of the chapters' notebooks, tests/conftest.py). Without it `make book` ends with
Sphinx's crash box, which suggests filing a Sphinx bug; the real cause is a hundred lines up."""
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Failed|Exception|Interrupt)):? ?(.*)$", re.M)
MEANING = {
    True: ("a claim this chapter makes did not hold on this machine's run: the chapter's statement is not "
           "supported by these seeds (it is not a Sphinx or Jupyter bug). Run the chapter in JupyterLab to see "
           "its numbers; the claims table above the failing cell shows each interval."),
    False: "the chapter's code raised an error on this machine (not a Sphinx or Jupyter bug); see its traceback above.",
}


def failure(text, chapter=None):
    """``{"chapter", "cell", "line", "error", "claim"}`` of the last failed cell in ``text`` (a
    build log or a notebook test's report), or None."""
    text = ANSI.sub("", text)
    if chapter is None:
        found = re.findall(r"ExecutionError: (\S+\.(?:md|ipynb))", text)
        chapter = found[-1] if found else None
    cells = list(re.finditer(r"Cell In\[(\d+)\], line (\d+)", text))
    # the chapter's own failing line: the first arrow after the cell's frame (later frames are
    # inside the library, e.g. the raise in kdnb.book.stats.Claims.check)
    after = text[cells[-1].end():] if cells else text
    arrows = re.findall(r"^-+> *\d+ (.*)$", after, re.M)[:1] or re.findall(r"^-+> *\d+ (.*)$", text, re.M)
    errors = [m for m in ERROR_LINE.finditer(text)
              if not m.group(1).endswith(("ExecutionError", "RuntimeError")) or "claim" in m.group(2)]
    if not (chapter or cells or errors):
        return None
    error = None
    for m in reversed(errors):  # the cell's own exception, not the build tool's wrapping ones
        if m.group(1).split(".")[-1] not in ("CellExecutionError", "ExecutionError"):
            error = f"{m.group(1)}: {m.group(2)}".strip().rstrip(":")
            break
    name = (error or "").split(":")[0].split(".")[-1]
    return {"chapter": chapter, "cell": cells[-1].group(1) if cells else None, "line": arrows[0].strip() if arrows else None,
            "error": error, "claim": name in ("AssertionError", "ClaimFailed")}


def explain(f, what):
    """The closing lines for one failure ``f`` (see :func:`failure`)."""
    where = f["chapter"] or "a chapter"
    if f["cell"]:
        where += f", cell [{f['cell']}]"
    lines = [f"✗ {what} failed in {where}"]
    if f["line"]:
        lines.append(f"  failing line: {f['line']}")
    if f["error"]:
        lines.append(f"  error:        {f['error'][:600]}")
    lines.append(f"  what it means: {MEANING[f['claim']]}")
    return "\n".join(lines)


def main(path):
    text = open(path, errors="replace").read()
    f = failure(text)
    print("\n" + "=" * 79)
    print(explain(f, "make book") if f else f"✗ make book failed; no chapter failure found in {path}: see the log above.")
    print("=" * 79)


if __name__ == "__main__":
    main(sys.argv[1])
