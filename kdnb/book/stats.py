"""Claims about runs, stated before the runs and checked after them.

A chapter compares arms trained on the same seeds (same initial weights, same batches), so each
comparison is a list of per-seed *paired differences*. What a difference supports:

* **established** — its 95 % interval, t with ``n − 1`` degrees of freedom, excludes 0 (after
  Holm's correction when a chapter declares several primary comparisons together);
* **equivalent within ±m** — its 90 % interval (two one-sided tests at 5 %) lies inside a margin
  ``m`` declared *before* the run;
* **inconclusive** — neither: the runs do not decide.

``abs(mean) < 3 * se`` is not evidence of no effect (it passes more easily the noisier the run),
so there is no such test here. :class:`Claims` holds a chapter's declared comparisons, prints
them as one table and raises :class:`ClaimFailed`, naming the claim and what the runs gave, when
one does not hold."""
import math
from dataclasses import dataclass, field

from ..checks import check_number

VERDICTS = ("established gain", "established loss", "equivalent", "inconclusive")


class ClaimFailed(AssertionError):
    """A claim the chapter makes did not hold on this run: its message names the claim, the
    interval the runs gave, and what that means."""


def t_quantile(p, df):
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Paired:
    """Per-seed differences ``treated[i] − baseline[i]``: their mean, standard error, and
    intervals with ``n − 1`` degrees of freedom."""
    name: str
    diffs: tuple
    n: int = field(init=False)
    mean: float = field(init=False)
    sd: float = field(init=False)
    se: float = field(init=False)

    def __post_init__(self):
        d = [float(x) for x in self.diffs]
        n = len(d)
        mean = sum(d) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        object.__setattr__(self, "diffs", tuple(d))
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "sd", sd)
        object.__setattr__(self, "se", sd / math.sqrt(n))

    def interval(self, level=0.95):
        """Two-sided ``level`` interval of the mean difference (t, ``n − 1`` df)."""
        half = t_quantile(0.5 + level / 2, self.n - 1) * self.se
        return self.mean - half, self.mean + half

    @property
    def p(self):
        """Two-sided p-value of "no difference" (paired t-test)."""
        from scipy.stats import t
        if self.se == 0:
            return 0.0 if self.mean != 0 else 1.0
        return float(2 * t.sf(abs(self.mean / self.se), self.n - 1))

    def equivalent(self, margin):
        """Whether the 90 % interval lies inside ``±margin`` (two one-sided tests at 5 %)."""
        lo, hi = self.interval(0.90)
        return -margin < lo and hi < margin

    def text(self, scale=100, unit=" points"):
        lo, hi = self.interval()
        return (f"{self.mean * scale:+.1f}{unit} (95 % CI {lo * scale:+.1f} to {hi * scale:+.1f}, "
                f"{self.n} seeds)")


def paired(treated, baseline, name="difference"):
    """:class:`Paired` differences of two runs over the same seeds, in order."""
    treated, baseline = list(treated), list(baseline)
    if len(treated) != len(baseline) or len(treated) < 2:
        raise ValueError(f"treated and baseline must be runs over the same >= 2 seeds, got {len(treated)} and "
                         f"{len(baseline)} values")
    return Paired(name, tuple(float(t) - float(b) for t, b in zip(treated, baseline)))


def holm(pvalues, alpha=0.05):
    """Which of ``pvalues`` are rejected at family-wise error ``alpha`` (Holm's step-down)."""
    check_number("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    reject = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        reject[i] = True
    return reject


@dataclass
class Claim:
    text: str          # what the chapter says, in its words
    expect: str        # one of VERDICTS, or "not established" (a gain that is not claimed)
    diff: Paired
    margin: float = None
    primary: bool = True


class Claims:
    """A chapter's comparisons, declared with what it will say about each, then checked together.

    >>> c = Claims()
    >>> c.gain("KD beats CE with augmentation", kd, ce)          # established gain
    >>> c.same("KD on the same data is within ±1 point of CE", kd, ce, margin=0.01)
    >>> c.check()   # prints the table; raises ClaimFailed naming any claim that did not hold

    Primary claims (the default) are Holm-corrected together at 5 %; ``primary=False`` marks a
    secondary, descriptive comparison: printed, with its verdict, never asserted."""

    def __init__(self, alpha=0.05, scale=100, unit=" points"):
        self.alpha, self.scale, self.unit = alpha, scale, unit
        self.claims = []

    def _add(self, text, expect, treated, baseline, margin=None, primary=True):
        if expect in ("equivalent",) and margin is None:
            raise ValueError("an equivalence claim needs a margin declared before the run")
        if margin is not None:
            check_number("margin", margin, low=0, low_open=True)
        d = treated if isinstance(treated, Paired) else paired(treated, baseline, text)
        self.claims.append(Claim(text, expect, d, margin, primary))
        return d

    def gain(self, text, treated, baseline=None, primary=True):
        """Claim: ``treated`` is better than ``baseline`` (an established gain)."""
        return self._add(text, "established gain", treated, baseline, primary=primary)

    def loss(self, text, treated, baseline=None, primary=True):
        """Claim: ``treated`` is worse than ``baseline`` (an established loss)."""
        return self._add(text, "established loss", treated, baseline, primary=primary)

    def same(self, text, treated, baseline=None, margin=0.01, primary=True):
        """Claim: the two are equivalent within ``±margin`` (declared before the run)."""
        return self._add(text, "equivalent", treated, baseline, margin, primary)

    def no_gain(self, text, treated, baseline=None, primary=True):
        """Claim: ``treated`` is not established as better (a gain is not supported): weaker than
        :meth:`same`, used where the chapter says only that a gain was not seen."""
        return self._add(text, "not a gain", treated, baseline, primary=primary)

    def describe(self, text, treated, baseline=None):
        """A comparison shown with its verdict and interval, asserting nothing."""
        return self._add(text, "shown", treated, baseline, primary=False)

    def verdicts(self):
        """``[(claim, verdict, holds)]``: Holm over the primary claims' p-values."""
        primary = [c for c in self.claims if c.primary]
        reject = dict(zip(map(id, primary), holm([c.diff.p for c in primary], self.alpha))) if primary else {}
        out = []
        for c in self.claims:
            sig = reject.get(id(c), c.diff.p < self.alpha)
            verdict = ("established gain" if sig and c.diff.mean > 0 else "established loss" if sig
                       else "inconclusive")
            if c.margin is not None and c.diff.equivalent(c.margin):
                verdict = ("equivalent" if verdict == "inconclusive" else
                           f"equivalent (a small {verdict.split()[-1]} is established)")
            if c.expect == "equivalent":
                holds = c.diff.equivalent(c.margin)
            elif c.expect == "not a gain":
                holds = verdict != "established gain"
            elif c.expect == "shown":
                holds = True
            else:
                holds = verdict == c.expect
            out.append((c, verdict, holds))
        return out

    def table(self):
        """The claims as a markdown table (one row each)."""
        from .plots import table
        rows = []
        for c, verdict, holds in self.verdicts():
            lo, hi = c.diff.interval()
            said = (f"equivalent within ±{c.margin * self.scale:g}{self.unit}" if c.expect == "equivalent"
                    else c.expect)
            rows.append([c.text, f"{c.diff.mean * self.scale:+.1f}", f"{lo * self.scale:+.1f} to {hi * self.scale:+.1f}",
                         c.diff.n, said if c.primary else "—", verdict,
                         ("✓" if holds else "✗") if c.expect != "shown" else "—"])
        return table(rows, ["comparison", f"mean{self.unit}", "95 % CI", "seeds", "claimed", "runs say", "holds"])

    def check(self):
        """Raise :class:`ClaimFailed` naming every primary claim that did not hold; else return
        the number of claims checked."""
        failed = [(c, v) for c, v, holds in self.verdicts() if c.primary and not holds]
        if failed:
            lines = []
            for c, v in failed:
                lo, hi = c.diff.interval()
                lines.append(f"claim {c.text!r} ({c.expect}"
                             + (f" within ±{c.margin * self.scale:g}{self.unit}" if c.margin is not None else "")
                             + f") did not hold: {c.diff.mean * self.scale:+.2f}{self.unit}, 95 % CI "
                             f"{lo * self.scale:+.2f} to {hi * self.scale:+.2f} over {c.diff.n} seeds, "
                             f"so the runs say {v!r}")
            raise ClaimFailed("; ".join(lines) + ". This claim did not hold on this machine's run: the "
                              "chapter's statement is not supported by these seeds.")
        return sum(c.primary and c.expect != "shown" for c in self.claims)
