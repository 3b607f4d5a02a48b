"""The chapters' code fits the site's code cells: no line of a code cell in book/*.md is longer than
LIMIT characters, so a reader never scrolls a code block sideways.

LIMIT is what a code cell's <pre> shows without horizontal scrolling in a 1280-px-wide desktop
viewport (the default theme: 14 px monospace in a 684-px box with 16-px padding each side fits
77 characters); tests/test_site.py checks the built pages themselves."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 77
CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```", re.M | re.S)


def long_lines(path, limit=LIMIT):
    """``(line number, length)`` of each code-cell line of a MyST chapter longer than ``limit``."""
    text = path.read_text()
    found = []
    for cell in CELL.finditer(text):
        first = text.count("\n", 0, cell.start(1)) + 1
        for i, line in enumerate(cell.group(1).splitlines()):
            if len(line) > limit:
                found.append((first + i, len(line)))
    return found


def test_code_lines_fit_the_site():
    chapters = sorted((ROOT / "book").glob("*.md"))
    assert chapters, "no chapters in book/"
    bad = [f"{p.relative_to(ROOT)}:{n}: {length} characters"
           for p in chapters for n, length in long_lines(p)]
    assert not bad, f"code-cell lines longer than {LIMIT} characters:\n  " + "\n  ".join(bad)


def test_long_lines_are_found(tmp_path):
    """The check can fail, and names the right line: only code cells count, not prose or other
    fenced blocks."""
    page = tmp_path / "chapter.md"
    page.write_text("# Title\n\n" + "prose " * 30 + "\n\n```python\n" + "x" * 100 + "\n```\n\n"
                    "```{code-cell} ipython3\n:tags: [remove-output]\n\nshort = 1\n"
                    + "y" * 78 + "\n" + "z" * 77 + "\n```\n")
    assert long_lines(page) == [(13, 78)]


# Checks run on every build and under nbval, but a reader meets them as if they were part of the
# lesson; a cell holding one is hidden on the site (Jupyter Book's remove-input keeps its output,
# e.g. "✓ 4 claims checked on this run"; remove-cell hides a check that prints nothing).
HIDDEN = {"remove-input", "remove-cell"}
CHECK = re.compile(r"^\s*assert\b|\.check\(", re.M)
TAGGED_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n((?::[^\n]*\n)*)\n?(.*?)^```", re.M | re.S)


def cells(text):
    """``(line, tags, source)`` of each code cell of a MyST chapter."""
    out = []
    for cell in TAGGED_CELL.finditer(text):
        tags = re.search(r"^:tags:\s*\[(.*?)\]", cell.group(1), re.M)
        out.append((text.count("\n", 0, cell.start()) + 1,
                    {t.strip() for t in tags.group(1).split(",")} if tags else set(), cell.group(2)))
    return out


def shown_checks(text):
    """Lines of the code cells that hold a check and are shown on the site."""
    return [n for n, tags, src in cells(text) if CHECK.search(src) and not tags & HIDDEN]


def hidden_names_read_later(text):
    """``(line, name)``: a name a hidden cell binds at its top level that a later shown cell reads
    (the reader would meet a name whose definition the page hides)."""
    import ast
    found, hidden = [], {}
    for n, tags, src in cells(text):
        if src.lstrip().startswith(("%", "!")):
            continue
        tree = ast.parse(src)
        if tags & HIDDEN:
            for st in tree.body:
                if isinstance(st, (ast.FunctionDef, ast.ClassDef)):
                    hidden[st.name] = n
                for target in getattr(st, "targets", []) + [getattr(st, "target", None)]:
                    for node in ast.walk(target) if target is not None else ():
                        if isinstance(node, ast.Name):
                            hidden[node.id] = n
            continue
        bound = set()
        for st in tree.body:
            read = {x.id for x in ast.walk(st) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load)}
            found += [(n, name) for name in sorted(read & hidden.keys() - bound)]
            bound |= {x.id for x in ast.walk(st) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store)}
        for name in bound:
            hidden.pop(name, None)
    return found


def test_checks_are_hidden_from_readers():
    bad = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "book").glob("*.md"))
           for n in shown_checks(p.read_text())]
    assert not bad, ("code cells with an assert or a .check() shown to readers (move the check "
                     "into a cell tagged remove-input or remove-cell):\n  " + "\n  ".join(bad))


def test_hidden_cells_define_nothing_readers_use():
    bad = [f"{p.relative_to(ROOT)}:{n}: {name}" for p in sorted((ROOT / "book").glob("*.md"))
           if p.read_text().startswith("---\njupytext:")
           for n, name in hidden_names_read_later(p.read_text())]
    assert not bad, "shown cells read names that only a hidden cell defines:\n  " + "\n  ".join(bad)


def test_check_rules_can_fail():
    page = ("```{code-cell} ipython3\nx = 1\nassert x == 1\n```\n\n"
            "```{code-cell} ipython3\n:tags: [remove-input]\n\nassert x == 1\nhelper = 2\n"
            "print('✓')\n```\n\n"
            "```{code-cell} ipython3\n:tags: [hide-input]\n\nclaims.check()\n```\n\n"
            "```{code-cell} ipython3\nprint(helper)\n```\n")
    assert shown_checks(page) == [1, 14]
    assert hidden_names_read_later(page) == [(20, "helper")]
