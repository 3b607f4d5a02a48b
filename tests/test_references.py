"""The bibliography is complete and used: every key a chapter cites with a ``{cite...}`` role is
an entry of book/references.bib, every entry there is cited somewhere in book/*.md (the five
source reports at least in the introduction's table), and the bibliography page is in _toc.yml.
Sphinx would only warn about an unknown key at build time, after the chapters have run."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIB = ROOT / "book" / "references.bib"
ROLE = re.compile(r"\{cite(?::\w+)*\}`([^`]+)`")
ENTRY = re.compile(r"^@\w+\s*\{\s*([^,\s]+)\s*,", re.M)
REPORTS = {"bombay2024dark", "thakkar_kanpur", "karthikeyan_slides", "unsigned_poster", "mandal_mandan_poster"}


def cited(text):
    """The keys of every cite role in ``text`` (``{cite:p}`a,b``` gives a and b)."""
    return {k.strip() for keys in ROLE.findall(text) for k in keys.split(",") if k.strip()}


def entries(text):
    return ENTRY.findall(text)


def pages():
    return {p.name: p.read_text() for p in sorted((ROOT / "book").glob("*.md"))}


def test_cited_keys_exist():
    keys = set(entries(BIB.read_text()))
    bad = [f"{name}: {k}" for name, text in pages().items() for k in sorted(cited(text) - keys)]
    assert not bad, "cite roles naming no entry of book/references.bib:\n  " + "\n  ".join(bad)


def test_entries_are_unique_and_cited():
    keys = entries(BIB.read_text())
    assert len(keys) == len(set(keys)), "duplicate keys in book/references.bib"
    used = set().union(*map(cited, pages().values()))
    assert REPORTS <= set(keys), f"the five source reports are missing: {REPORTS - set(keys)}"
    assert not set(keys) - used, f"entries of book/references.bib no chapter cites: {sorted(set(keys) - used)}"
    assert REPORTS <= cited(pages()["00_intro.md"]), "the introduction's table cites each source report"


def test_bibliography_page_is_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for c in toc.get("chapters", [])]
    assert files[-1] == "book/references", "book/references is the last page of _toc.yml"
    page = (ROOT / "book" / "references.md").read_text()
    assert "```{bibliography}" in page and not page.startswith("---\njupytext:")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["bibtex_bibfiles"] == ["book/references.bib"]


def test_the_checks_can_fail():
    assert cited("see {cite:p}`a,b` and {cite:t}`c`; `{not}` {cite}`d`") == {"a", "b", "c", "d"}
    assert entries("@misc{x,\n title={y}}\n@inproceedings{ z ,\n}") == ["x", "z"]
