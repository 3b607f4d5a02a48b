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
