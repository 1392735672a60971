"""Numbers over seeds: mean and spread, paired differences, and the verdict rule of the claims.

Every table states its spread once with ``SPREAD_NOTE``: "mean ± std over n seeds" per cell and,
for a difference, its 95 % t-interval. A comparison between two methods is *paired*: seed s of
one against seed s of the other (same init, same data order), so what is left in the difference
is the method, not the luck of the draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SPREAD_NOTE = (
    "Cells: mean ± standard deviation over the n seeds (n given); differences: mean of the "
    "paired (same seed) differences with its 95 % t-interval [lo, hi]."
)


@dataclass(frozen=True)
class Estimate:
    """Mean, standard deviation (ddof 1) and the 95 % t-interval of the mean over ``n`` values.

    One value: ``std`` and the interval are NaN (no spread can be measured). A NaN among the
    values (a diverged run) makes the mean NaN: it is reported, never averaged away.
    """

    mean: float
    std: float
    n: int
    lo: float
    hi: float

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3) -> str:
        """``mean ± std (n=…)``; ``diverged`` when the mean is not finite."""
        if not math.isfinite(self.mean):
            return "diverged"
        if self.n < 2:
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"

    def format_interval(self, digits: int = 3) -> str:
        """``mean [lo, hi] (n=…)`` for a difference."""
        if not math.isfinite(self.mean):
            return "diverged"
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n=1, no interval)"
        return (
            f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}] (n={self.n})"
        )


def estimate(values: Iterable[float]) -> Estimate:
    """Mean, std and 95 % t-interval of ``values`` (e.g. one number per seed)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to estimate from (no runs for this cell)")
    n = int(x.size)
    if not np.all(np.isfinite(x)):
        return Estimate(math.nan, math.nan, n, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1)) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Estimate:
    """``a - b`` seed by seed (mappings seed -> value), with its 95 % t-interval.

    The two must have run the same seeds: a difference between unpaired seeds would mix the
    method with the draw, so a mismatch is an error that names the missing seeds.
    """
    if set(a) != set(b):
        raise ValueError(
            f"paired difference needs the same seeds on both sides: {sorted(a)} vs {sorted(b)}; "
            "re-run the missing seeds (python -m amm.reproduce <artifact> --seeds N)"
        )
    return estimate(a[s] - b[s] for s in sorted(a))


def verdict(diff: Estimate, *, better: str, margin: float = 0.0) -> str:
    """The claims report's rule, applied to a paired difference ``AM - baseline``.

    ``better="lower"`` (a loss) or ``"higher"`` (an accuracy): the direction the claim says AM
    moves the number. With the 95 % interval [lo, hi] of the difference:

    - **supported**: the whole interval is on the claimed side of 0 ("beats" claims,
      ``margin=0``), or no worse than ``margin`` ("competitive" claims, ``margin > 0``);
    - **not supported**: the whole interval is on the other side: worse (by more than
      ``margin`` for a "competitive" claim);
    - **inconclusive**: the interval crosses, or fewer than 2 seeds (no interval).
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if not math.isfinite(diff.mean):
        return "not supported"  # AM diverged where the baseline did not (or both did)
    if diff.n < 2 or not math.isfinite(diff.lo):
        return "inconclusive"
    # the gain of AM over the baseline, positive in the claimed direction
    gain_lo, gain_hi = (-diff.hi, -diff.lo) if better == "lower" else (diff.lo, diff.hi)
    if gain_lo > -margin:
        return "supported"
    if gain_hi < -margin:
        return "not supported"
    return "inconclusive"
