"""Numbers over seeds: mean and spread, paired differences, and the verdict rule of the claims.

Every table states its spread once with ``SPREAD_NOTE``: "mean ± std over n seeds" per cell and,
for a difference, its 95 % t-interval. A comparison between two methods is *paired*: seed s of
one against seed s of the other (same init, same data order), so what is left in the difference
is the method, not the luck of the draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from experiments import Run

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
            "re-run the missing seeds (python -m experiments.reproduce <artifact> --seeds N)"
        )
    return estimate(a[s] - b[s] for s in sorted(a))


class Verdict(str, Enum):
    """A claim's verdict. "Supported" says which way the effect goes and, where the paper gives
    a number, how its size compares: the whole interval of the gain above the paper's effect
    (larger), below it (smaller), or around it (supported)."""

    SUPPORTED = "supported"
    LARGER = "supported, larger than the paper's effect"
    SMALLER = "supported, smaller than the paper's effect"
    NOT_SUPPORTED = "not supported"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value

    @property
    def supported(self) -> bool:
        return self in (Verdict.SUPPORTED, Verdict.LARGER, Verdict.SMALLER)


def verdict(
    diff: Estimate, *, better: str, margin: float = 0.0, paper: float | None = None
) -> Verdict:
    """The claims report's rule, applied to a paired difference ``AM - baseline``.

    ``better="lower"`` (a loss) or ``"higher"`` (an accuracy): the direction the claim says AM
    moves the number. With the 95 % interval [lo, hi] of the difference:

    - **supported**: the whole interval is on the claimed side of 0 ("beats" claims,
      ``margin=0``), or no worse than ``margin`` ("competitive" claims, ``margin > 0``);
      with ``paper`` (the paper's gain, > 0, in the claimed direction) a "beats" claim is
      *larger* when the whole interval of the gain is above it, *smaller* when below it;
    - **not supported**: the whole interval is on the other side: worse (by more than
      ``margin`` for a "competitive" claim);
    - **inconclusive**: the interval crosses, or fewer than 2 seeds (no interval).
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if not math.isfinite(diff.mean):
        return Verdict.NOT_SUPPORTED  # AM diverged where the baseline did not (or both did)
    if diff.n < 2 or not math.isfinite(diff.lo):
        return Verdict.INCONCLUSIVE
    # the gain of AM over the baseline, positive in the claimed direction
    gain_lo, gain_hi = (-diff.hi, -diff.lo) if better == "lower" else (diff.lo, diff.hi)
    if gain_lo > -margin:
        if margin == 0 and paper is not None:
            return magnitude(gain_lo, gain_hi, paper)
        return Verdict.SUPPORTED
    if gain_hi < -margin:
        return Verdict.NOT_SUPPORTED
    return Verdict.INCONCLUSIVE


def magnitude(gain_lo: float, gain_hi: float, paper: float) -> Verdict:
    """A supported gain's interval against the paper's gain ``paper``."""
    if gain_lo > paper:
        return Verdict.LARGER
    if gain_hi < paper:
        return Verdict.SMALLER
    return Verdict.SUPPORTED


def combine_verdicts(verdicts: Iterable[Verdict]) -> Verdict:
    """One claim over several settings (data sets, model sizes, warmup regimes): not supported
    when it is not supported in one, supported when it is supported in all (larger / smaller
    when all settings say so), inconclusive otherwise."""
    found = list(verdicts)
    if not found:
        return Verdict.INCONCLUSIVE
    if Verdict.NOT_SUPPORTED in found:
        return Verdict.NOT_SUPPORTED
    if not all(v.supported for v in found):
        return Verdict.INCONCLUSIVE
    return found[0] if len(set(found)) == 1 else Verdict.SUPPORTED


@dataclass
class Comparison:
    """A paired AM − baseline difference in one setting, its per-seed values and its verdict."""

    setting: str
    diffs: SeedValues
    diff: Estimate
    verdict: Verdict

    def text(self, digits: int = 3) -> str:
        return f"{self.setting}: {self.diff.format_interval(digits)} → {self.verdict}"


def compare(
    setting: str,
    am: Mapping[int, float],
    base: Mapping[int, float],
    *,
    better: str,
    margin: float = 0.0,
    paper: float | None = None,
    stand_in: bool = False,
) -> Comparison:
    """AM − baseline, paired by seed (the same seeds on both sides, else an error naming them).

    A diverged run (NaN) counts against the claim when it is AM's; the baseline's alone, in
    every seed (n >= 2), for it; in some seeds only: inconclusive. Generated stand-in data
    decide nothing (inconclusive)."""
    diffs = combine(am, base, lambda a, b: a - b)
    diff = estimate(diffs.values())
    found = verdict(diff, better=better, margin=margin, paper=paper)
    am_bad = sorted(s for s, v in am.items() if not math.isfinite(v))
    base_bad = sorted(s for s, v in base.items() if not math.isfinite(v))
    if base_bad and set(am_bad) <= set(base_bad):  # the baseline diverged where AM did not
        everywhere = not am_bad and len(base_bad) == len(base) >= 2
        found = Verdict.SUPPORTED if everywhere else Verdict.INCONCLUSIVE
        setting += f" (baseline diverged: seeds {base_bad}; AM: seeds {am_bad})"
    elif am_bad:
        setting += f" (AM diverged: seeds {am_bad}; baseline: seeds {base_bad})"
    return Comparison(setting, diffs, diff, Verdict.INCONCLUSIVE if stand_in else found)


@dataclass
class SignTest:
    """Outcomes over problems (+1 the claim's way, -1 against, 0 tie) and their verdict: the
    exact (Clopper-Pearson) 95 % interval of the share of +1 among the decided problems."""

    ahead: int
    behind: int
    ties: int
    lo: float
    hi: float
    verdict: Verdict

    def text(self) -> str:
        m = self.ahead + self.behind
        if m == 0:
            return f"no problem decides (ties: {self.ties})"
        return (
            f"{self.ahead} of {m} (ties: {self.ties}), {CONFIDENCE:.0%} interval "
            f"[{self.lo:.2f}, {self.hi:.2f}]"
        )


def sign_test(outcomes: Iterable[int]) -> SignTest:
    """Supported when the interval of the share is above 1/2, not supported below it."""
    found = list(outcomes)
    ahead, behind = found.count(1), found.count(-1)
    ties = len(found) - ahead - behind
    if ahead + behind == 0:
        return SignTest(0, 0, ties, math.nan, math.nan, Verdict.INCONCLUSIVE)
    ci = stats.binomtest(ahead, ahead + behind).proportion_ci(CONFIDENCE, method="exact")
    v = (
        Verdict.SUPPORTED
        if ci.low > 0.5
        else Verdict.NOT_SUPPORTED
        if ci.high < 0.5
        else Verdict.INCONCLUSIVE
    )
    return SignTest(ahead, behind, ties, float(ci.low), float(ci.high), v)


# ---- power: how many seeds a paired comparison needs ---------------------------------------

POWER = 0.8  # the power the seed counts are chosen for


def paired_power(effect: float, sd: float, n: int, alpha: float = 1 - CONFIDENCE) -> float:
    """The probability that the paired t-test (two-sided, level ``alpha``) over ``n`` seeds finds
    a true mean difference ``effect`` when the per-seed differences have spread ``sd``: the
    chance that the 95 % interval of ``verdict`` excludes 0 (noncentral t)."""
    if n < 2 or not sd > 0:
        return math.nan
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    shift = abs(effect) / (sd / math.sqrt(n))
    return float(stats.nct.sf(crit, df, shift) + stats.nct.cdf(-crit, df, shift))


def seeds_for_power(
    effect: float, sd: float, power: float = POWER, most: int = 10_000
) -> int | None:
    """The fewest seeds whose paired t-test reaches ``power`` for ``effect`` (None: more than
    ``most``, e.g. an effect of 0)."""
    if not sd > 0:
        return 2
    if effect == 0:
        return None
    n = 2
    while paired_power(effect, sd, n) < power:
        n += 1 if n < 64 else max(1, n // 16)
        if n > most:
            return None
    return n


def minimum_detectable_effect(sd: float, n: int, power: float = POWER) -> float:
    """The smallest true mean difference the paired t-test over ``n`` seeds finds with
    ``power`` (the same units as ``sd``); NaN for n < 2."""
    if n < 2 or not sd > 0:
        return math.nan if n < 2 else 0.0
    lo, hi = 0.0, sd
    while paired_power(hi, sd, n) < power:
        hi *= 2
    for _ in range(60):  # bisection on the increasing power curve
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if paired_power(mid, sd, n) < power else (lo, mid)
    return hi


# ---- runs -> numbers per seed, and curves over seeds (the artifacts' side) -------------------

BAND_NOTE = "line: mean over the seeds; shaded band: min–max over the seeds"


def run_diverged(run: Run) -> bool:
    """The run says it diverged (``summary.json``), or its final training loss is not finite."""
    return bool(run.summary.get("diverged")) or not math.isfinite(run.final("loss"))


class SeedValues(dict[int, float]):
    """seed -> value for one table cell; ``diverged``: the seeds whose run diverged (their value
    is NaN). A NaN of any other seed is a value the run did not measure (e.g. too few steps)."""

    def __init__(
        self, values: Mapping[int, float] | None = None, diverged: Iterable[int] = ()
    ) -> None:
        super().__init__(values or {})
        self.diverged = frozenset(diverged)


def per_seed(runs: Iterable[Run], value: Callable[[Run], float]) -> SeedValues:
    """seed -> ``value(run)`` over the runs of one cell (one setting and method); NaN for a
    diverged run, so that the cell says "diverged" instead of averaging it in.

    Two runs with the same seed in one cell mean the cell mixes settings: an error naming them.
    """
    values = SeedValues()
    where: dict[int, Run] = {}
    for r in runs:
        if r.seed in values:
            raise ValueError(
                f"two runs of seed {r.seed} in one table cell: {where[r.seed].dir} and {r.dir}; "
                "they differ in a setting the artifact does not group by"
            )
        values[r.seed], where[r.seed] = math.nan if run_diverged(r) else float(value(r)), r
    return SeedValues(values, diverged=(s for s, r in where.items() if run_diverged(r)))


def _missing_note(values: Mapping[int, float]) -> str:
    """Why a cell has no number: how many seeds diverged, how many did not measure it."""
    bad = [s for s, v in values.items() if not math.isfinite(v)]
    diverged = [s for s in bad if s in getattr(values, "diverged", ())]
    parts = [f"diverged ({len(diverged)} of {len(values)} seeds)"] if diverged else []
    if len(diverged) < len(bad):
        parts.append(f"not measured ({len(bad) - len(diverged)} of {len(values)} seeds)")
    return "; ".join(parts)


def cell(values: Mapping[int, float], digits: int = 3) -> str:
    """A table cell: ``mean ± std (n=…)`` of the seeds' values, or why there is no number:
    ``diverged (k of n seeds)`` (seeds ``per_seed`` marked) or ``not measured (k of n seeds)``."""
    est = estimate(values.values())
    return est.format(digits) if math.isfinite(est.mean) else _missing_note(values)


def interval_cell(values: Mapping[int, float], digits: int = 3) -> str:
    """A table cell for a per-seed quantity that is itself a comparison (a paired difference, an
    overhead): ``mean [lo, hi] (n=…)`` with its 95 % t-interval, or why there is no number."""
    est = estimate(values.values())
    return est.format_interval(digits) if math.isfinite(est.mean) else _missing_note(values)


def combine(
    a: Mapping[int, float], b: Mapping[int, float], f: Callable[[float, float], float]
) -> SeedValues:
    """``f(a[s], b[s])`` seed by seed (e.g. a difference or a ratio); a seed that diverged on
    either side stays marked. Different seeds on the two sides are an error naming them."""
    paired_difference(a, b)  # raises, naming them, when the seeds differ
    diverged = getattr(a, "diverged", frozenset()) | getattr(b, "diverged", frozenset())
    return SeedValues({s: f(a[s], b[s]) for s in a}, diverged)


def difference_cell(a: Mapping[int, float], b: Mapping[int, float], digits: int = 3) -> str:
    """The paired difference ``a - b`` (same seeds) with its 95 % interval, as a table cell."""
    return interval_cell(combine(a, b, lambda x, y: x - y), digits)


def seeds_note(runs: Iterable[Run]) -> str:
    """One line for a table: which seeds its cells average (each cell also gives its n)."""
    seeds = sorted({r.seed for r in runs})
    return (
        f"Seeds: {', '.join(map(str, seeds))} (n = {len(seeds)} per cell unless a cell says less)."
    )


@dataclass(frozen=True)
class Band:
    """Mean, min and max of several curves (one per seed) at the x values they all have."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int


def band(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> Band:
    """The mean and min–max band of ``(x, y)`` curves over the x values common to all."""
    if not curves:
        raise ValueError("no curves to average")
    maps = [dict(zip(np.asarray(x).tolist(), np.asarray(y).tolist())) for x, y in curves]
    common = sorted(set.intersection(*(set(m) for m in maps)))
    ys = np.asarray([[m[c] for c in common] for m in maps], dtype=np.float64).reshape(
        len(maps), len(common)
    )
    return Band(np.asarray(common, dtype=np.float64), ys.mean(0), ys.min(0), ys.max(0), len(maps))


def draw_band(
    ax: Axes,
    curves: Sequence[tuple[np.ndarray, np.ndarray]],
    diverged: int = 0,
    label: str | None = None,
    **style: Any,
) -> None:
    """Mean over the seeds' curves with a min–max band (one seed: its curve, no band).

    ``diverged`` seeds (not in ``curves``) are left out of the mean and named in the legend,
    so that a diverged run is never drawn as if it were fine.
    """
    if label is not None and diverged:
        label += f" ({diverged} of {len(curves) + diverged} seeds diverged, not drawn)"
    if not curves:
        ax.plot([], [], label=label, **style)  # the legend still names it
        return
    b = band(curves)
    (line,) = ax.plot(b.x, b.mean, label=label, **style)
    if b.n > 1:
        ax.fill_between(b.x, b.lo, b.hi, color=line.get_color(), alpha=0.2, lw=0)
