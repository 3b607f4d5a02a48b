"""kdnb.book.stats: paired intervals with n − 1 degrees of freedom, Holm, equivalence margins, and
declared claims that fail with a message naming the claim; and the failure summary that ends
`make book` / `make test` (book/_ext/kdnb_failures.py)."""
import importlib
import sys
from pathlib import Path

import pytest
from scipy import stats as sps

from kdnb.book import stats

ROOT = Path(__file__).resolve().parents[1]


def test_paired_interval_is_students_t_with_n_minus_1_df():
    treated, base = [0.71, 0.69, 0.74, 0.70], [0.70, 0.70, 0.71, 0.66]
    d = stats.paired(treated, base)
    diffs = [t - b for t, b in zip(treated, base)]
    ref = sps.ttest_rel(treated, base)
    assert d.n == 4 and d.mean == pytest.approx(sum(diffs) / 4)
    assert d.p == pytest.approx(ref.pvalue)
    lo, hi = d.interval()
    ci = ref.confidence_interval(0.95)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # three seeds: "3 s.e." is not significant at 5 % (t quantile with 2 df is 4.30)
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)


def test_holm_steps_down():
    assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]
    assert stats.holm([0.001, 0.02, 0.04]) == [True, True, True]
    assert stats.holm([0.2, 0.001]) == [False, True]


def test_equivalence_needs_a_tight_interval_not_a_noisy_one():
    noisy = stats.paired([0.1, -0.1, 0.12, -0.09], [0, 0, 0, 0])  # mean ~0, huge spread
    tight = stats.paired([0.001, -0.002, 0.0015, 0.0, -0.001], [0] * 5)
    assert not noisy.equivalent(0.01) and tight.equivalent(0.01)
    c = stats.Claims()
    c.same("noisy is the same", noisy, margin=0.01)
    with pytest.raises(stats.ClaimFailed, match=r"claim 'noisy is the same' \(equivalent within ±1 points\) "
                                                r"did not hold.*inconclusive.*did not hold on this machine"):
        c.check()


def test_claims_are_holm_corrected_and_named_when_they_fail():
    base = [0.70, 0.71, 0.69, 0.72, 0.70, 0.68, 0.71, 0.70]
    up = [b + 0.03 + 0.002 * (i % 3) for i, b in enumerate(base)]
    c = stats.Claims()
    c.gain("up beats base", up, base)
    c.no_gain("base does not beat up", base, up)
    c.describe("shown only", base, up)
    assert c.check() == 2
    assert "up beats base" in c.table().data and "established gain" in c.table().data
    c.loss("up is worse", up, base)
    with pytest.raises(stats.ClaimFailed, match="claim 'up is worse' .* the runs say 'established gain'"):
        c.check()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="treated and baseline must be runs over the same >= 2 seeds"):
        stats.paired([0.5], [0.4])
    with pytest.raises(ValueError, match="margin"):
        stats.Claims().same("x", [0.1, 0.2], [0.1, 0.2], margin=-1)


LOG = """\
Executing notebook failed: /tmp/b/book/04_less.md
myst_nb.core.execute.base.ExecutionError: /tmp/b/book/04_less.md
nbclient.exceptions.CellExecutionError: An error occurred while executing the following cell:
------------------
assert knows[0] > 3 * knows[2]
------------------

AssertionError                               Traceback (most recent call last)
Cell In[31], line 1
----> 1 assert knows[0] > 3 * knows[2]

AssertionError: 
myst_nb.core.execute.base.ExecutionError: /tmp/b/book/04_less.md
RuntimeError:
===============================================================================
There was an error in building your book. Look above for the cause.
"""


def test_a_failed_build_ends_with_the_chapter_cell_and_meaning(capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        failures = importlib.import_module("kdnb_failures")
    finally:
        sys.path.pop(0)
    f = failures.failure(LOG)
    assert f["chapter"] == "/tmp/b/book/04_less.md" and f["cell"] == "31" and f["claim"]
    assert f["line"] == "assert knows[0] > 3 * knows[2]" and f["error"] == "AssertionError"
    (tmp_path / "book.log").write_text(LOG)
    failures.main(tmp_path / "book.log")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("=") and "did not hold on this machine" in "\n".join(out[-4:])
    assert "make book failed in /tmp/b/book/04_less.md, cell [31]" in out[1]
