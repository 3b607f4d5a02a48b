"""Prose never types a number that a run computes: a measured number appears in a printed line or a
table that the run writes, so the page can't disagree with itself. This test scans every chapter's
prose (markdown outside code cells, math and inline code) for what reads as a measurement — a
"±", a decimal with "%" or "points", a signed difference, a decimal ratio "1.8×", a percentage —
and fails on any that is not a citation. A cited number is allowed when its sentence names where
it comes from: a source report by its short name ("the Kanpur report", or the older "seed 003"), a paper ("Hinton et al. (2015)", "Greydanus, 2020"),
or a ``{cite}`` role. Settings are not measurements: "5 % of the labels" (a percentage followed
by "of") is a fraction the chapter chooses."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if p.read_text().startswith("---\njupytext:"))

MEASURED = re.compile(
    r"±\s*\d"                                           # ± 0.4 (not "mean ± std", which names one)
    r"|\d\.\d+\s*(?:%|points?\b|pp\b)"                  # 1.5 %, 0.4 points
    r"|(?<![\w.])[+−](?:\d+(?:\.\d+)?)\s*(?:%|points?\b|pp\b|s\.e\.)"  # +3 points, −2.2 %
    r"|\d\.\d+\s*×"                                      # 1.8×
    r"|(?<![\w.,])\d{1,3}(?:\.\d+)?\s*%(?!\s*of\b)"      # 64 % (but not "5 % of the labels")
)
# the five source reports (book/00_intro.md names them), by their short names or the old "seed 003"
REPORTS = r"\b(?:Bombay|Kanpur|Karthikeyan) reports?\b|\bunsigned poster\b|\bMandal[–-]Mandan poster\b"
CITED = re.compile(REPORTS + r"|\{cite[:\w]*\}|\b[Ss]eeds? 00\d|\b(?:19|20)\d\d[a-z]?\)|\((?:19|20)\d\d[a-z]?[),;]"
                   r"|,\s*(?:19|20)\d\d\b|\bet al\.")
SKIP = [
    re.compile(r"^```.*?^```", re.M | re.S),           # code cells and other fenced blocks
    re.compile(r"^---\n.*?\n---\n", re.S),             # front matter
    re.compile(r"\$\$.*?\$\$", re.S),                 # display math
    re.compile(r"\$[^$\n]+\$"),                          # inline math
    re.compile(r"`[^`\n]+`"),                            # inline code
    re.compile(r"<!--.*?-->", re.S),
    re.compile(r"^%.*$", re.M),                          # MyST comments
]


def prose(text):
    """The chapter's text with everything but prose blanked out (line numbers kept)."""
    for pattern in SKIP:
        text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    return text


def sentences(text):
    """``(line number, sentence)`` of each sentence or table row."""
    out, line = [], 1
    for block in re.split(r"(\n\s*\n)", text):
        if block.strip():
            rows = block.splitlines() if block.lstrip().startswith("|") else None
            parts = rows if rows else re.split(r"(?<=[.!?:])\s+(?=[A-Z*(\[])", block)
            offset = 0
            for part in parts:
                at = block.find(part, offset)
                offset = at + len(part)
                out.append((line + block.count("\n", 0, max(at, 0)), " ".join(part.split())))
        line += block.count("\n")
    return out


def typed_numbers(path):
    """``(line, sentence)`` of each sentence of ``path``'s prose that types a measured number
    without naming a source."""
    return [(n, s) for n, s in sentences(prose(path.read_text())) if MEASURED.search(s) and not CITED.search(s)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_prose_types_no_measured_number(path):
    bad = typed_numbers(path)
    assert not bad, (f"{path.name}: prose types numbers a run computes (print them from the run, or name "
                     f"the report or paper they come from):\n  " + "\n  ".join(f"line {n}: {s}" for n, s in bad))


def test_the_scan_can_fail(tmp_path):
    page = tmp_path / "ch.md"
    page.write_text("---\njupytext: x\n---\n# T\n\nKD gains +2.2 ± 0.4 points here.\n\n"
                    "Hinton et al. (2015) report 99.26 % for the student.\n\n"
                    "With 5 % of the labels and T = 4, seed 003 measured 98.18 %.\n\n"
                    "```{code-cell} ipython3\nprint(f'{0.5:.1%} ± 1.0')\n```\n\n"
                    "The student reaches 87 % here.\n\n| arm | acc |\n|---|---|\n| KD | 64.0 % |\n")
    assert [n for n, _ in typed_numbers(page)] == [6, 16, 20]


def test_the_reports_short_names_cite(tmp_path):
    page = tmp_path / "ch.md"
    page.write_text("---\njupytext: x\n---\n# T\n\nThe Kanpur report measured 98.87 % on MNIST.\n\n"
                    "On 5 % of CIFAR-10 the unsigned poster saw 66.71 %.\n\n"
                    "The Bombay and Kanpur reports gain +2 points.\n\nOur report gains 3.5 %.\n")
    assert [n for n, _ in typed_numbers(page)] == [12]
