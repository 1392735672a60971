"""The step-size axis of the convex artifacts (figure1, figure3): runs at lr = c / L, with
c = ``optimizer.lr_scale``; the objective gap at fixed budgets; divergence marked, not hidden;
gaps at the rounding level of f* shown as such, not as numbers (``rounding_level``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from omegaconf import OmegaConf

from experiments import Run

#: The rounding level of f* is ROUNDING_K x eps x |f*| (eps of the run's float type). The gap is
#: computed as loss - f*: two numbers of size |f*| (a mean of positive terms, so its rounding
#: error scales with f itself), from two different summations (torch in the run, scipy for
#: f*), so it cannot resolve less than a few ulps of |f*|. On the runs of figure3 reduced that
#: reach it, the gap then jitters within -1.4..2.8 x eps x |f*| (e.g. heart_scale, svmguide1's
#: Adam); k = 8 puts the level above that jitter with a margin of about 3. Below it a curve
#: stops, its beta_t trace turns grey and a table says "≤ rounding". A problem with f* = 0
#: exactly (figure1's quadratic) computes f itself, without cancellation: no level, no cut.
ROUNDING_K = 8


def fstar(run: Run) -> float | None:
    """The run's f*: its summary's ``fstar`` (recorded since the f* solver reports its
    precision), else loss - objective_gap of its first record that has both; None when no
    record says (then no gap is called rounding)."""
    if run.summary.get("fstar") is not None:
        return float(run.summary["fstar"])
    for r in run.metrics:
        if r.get("loss") is not None and r.get("objective_gap") is not None:
            return float(r["loss"]) - float(r["objective_gap"])
    return None


def rounding_level(run: Run) -> float:
    """ROUNDING_K x eps x |f*|, eps of the float type the run computed its loss in."""
    f = fstar(run)
    if f is None:
        return 0.0
    name = OmegaConf.select(run.cfg, "trainer.dtype") or OmegaConf.select(run.cfg, "dataset.dtype")
    eps = torch.finfo(getattr(torch, str(name or "float64"))).eps
    return ROUNDING_K * eps * abs(f)


def rounded_from(run: Run) -> int | None:
    """The first iteration whose f - f* is at or below the rounding level (None: never)."""
    it, gap = run.series("objective_gap")
    hit = np.flatnonzero(gap <= rounding_level(run))  # NaN (a diverged run) is never below
    return int(it[hit[0]]) if len(hit) else None


def at_rounding(run: Run, t: int) -> bool:
    """Whether f - f* reached the rounding level at or before iteration t."""
    start = rounded_from(run)
    return start is not None and start <= t


def gap_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(iteration, f - f*) up to the first iteration at the rounding level, included: what is
    drawn of a curve (past it the numbers are rounding noise)."""
    it, gap = run.series("objective_gap")
    start = rounded_from(run)
    keep = it <= start if start is not None else slice(None)
    return it[keep], gap[keep]


def lr_scale(run: Run) -> float:
    """c of a run: its lr is c x the problem's suggested step (runs made before the key existed
    used the step itself, c = 1)."""
    return float(run.cfg.optimizer.get("lr_scale", 1.0))


def budgets(runs: list[Run]) -> list[int]:
    """The iterations of the summary: ``budgets`` of the experiment config (in every run), up
    to the runs' last iterate, which is always one (``make demo`` runs longer than smoke's)."""
    found = {tuple(int(b) for b in r.cfg.budgets) for r in runs if r.cfg.get("budgets")}
    if len(found) != 1:
        raise ValueError(
            f"the runs give {len(found)} different `budgets` lists ({sorted(found)}); the "
            "experiment config sets one (e.g. budgets: [100, 300, 1000])"
        )
    last = min(int(r.cfg.trainer.max_steps) for r in runs) - 1  # record t+1 holds f(x_t)
    return sorted({b for b in found.pop() if b < last} | {last})


def gap_at(run: Run, t: int) -> float:
    """f(x_t) - f* from the run's records; inf once the loss is not finite (diverged) at or
    before t; NaN when the run has no record of iteration t (stopped earlier, or too short)."""
    it, gap = run.series("objective_gap")
    upto = gap[it <= t]
    if len(upto) and not np.all(np.isfinite(upto)):
        return math.inf
    hit = np.flatnonzero(it == t)
    return float(gap[hit[0]]) if len(hit) else math.nan


def initial_gap(run: Run) -> float:
    return gap_at(run, 0)


def diverged(run: Run, t: int) -> bool:
    """By iteration t the loss was not finite, or the gap at t is above the starting point's
    and the run never came back below it (a transient overshoot is shown as its number)."""
    g = gap_at(run, t)
    if math.isinf(g):
        return True
    start = initial_gap(run)
    _, gaps = run.series("objective_gap")
    return g > start and not (len(gaps) > 0 and gaps[-1] <= start)


def score(run: Run, t: int, resolution: float = 0.0) -> float:
    """For "best by gap at t": diverged (or missing) runs are never the best; a gap that has
    reached the rounding level of f* counts as that level, and gaps below ``resolution`` as
    ``resolution`` (ties: runs of one problem share f*, so the same level)."""
    g = gap_at(run, t)
    if math.isnan(g) or diverged(run, t):
        return math.inf
    return max(rounding_level(run) if at_rounding(run, t) else g, resolution)


ROUNDED = "≤ rounding"  # a table's word for a gap at the rounding level of f*


def cell(run: Run | None, t: int) -> str:
    """A table cell: the gap at t, ROUNDED once it reached the rounding level, or why there
    is none."""
    if run is None:
        return "–"
    g = gap_at(run, t)
    if math.isnan(g):
        return "no record"
    if diverged(run, t):
        return "diverged"
    return ROUNDED if at_rounding(run, t) else f"{g:.2e}"


def gap_text(run: Run, t: int, fmt: Callable[[float], str]) -> str:
    """``fmt`` of the gap at t (which says "diverged" when it is not finite), or ROUNDED."""
    return ROUNDED if at_rounding(run, t) else fmt(gap_at(run, t))


# Where a gap at the rounding level is drawn when the level is 0 (f* = 0, or unknown) and the
# gap is not above it: low on the log axis instead of vanishing from it.
FLOOR = 1e-17


def draw_vs_c(ax: Axes, points: dict[float, Run], t: int, ceiling: float, **style: object) -> None:
    """The gap at t against c (log-log). A diverged point is an x at ``ceiling`` (the top of
    the panel), joined to the line, so it stays in view; a gap at the rounding level of f* is
    drawn on that level (see ``draw_rounding_level``), or on ``FLOOR`` when it is 0."""
    cs = sorted(points)

    def height(run: Run) -> float:
        if diverged(run, t):
            return ceiling
        if at_rounding(run, t):
            return max(rounding_level(run), FLOOR)
        return gap_at(run, t)

    ys = [height(points[c]) for c in cs]
    ax.plot(cs, ys, marker="o", ms=4, **style)  # type: ignore[arg-type]
    bad = [(c, y) for c, y in zip(cs, ys) if diverged(points[c], t)]
    if bad:
        ax.scatter(
            [c for c, _ in bad],
            [y for _, y in bad],
            marker="x",
            s=70,
            color=str(style.get("color", "k")),
            zorder=3,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [f"{c:g}" for c in cs])


def draw_rounding_level(ax: Axes, runs: list[Run]) -> None:
    """The rounding level of f* as a thin grey dotted line, where one of ``runs`` (runs of one
    problem: one f*) reached it; else nothing, so the axis does not stretch down to it."""
    reached = [r for r in runs if rounded_from(r) is not None]
    if reached and rounding_level(reached[0]) > 0:
        ax.axhline(
            rounding_level(reached[0]),
            color="0.5",
            ls=":",
            lw=0.7,
            label=f"rounding level of f* ({ROUNDING_K} eps |f*|)",
        )


# ---- the one definition of a convex comparison (figure1, figure3 and the claims report) -----

#: Two gaps within 1 % of each other are a tie ("ahead" needs more than rounding-level luck).
TIE_RATIO = 1.01
#: Two times-to-target within 10 % of each other are a tie.
TIME_TIE_RATIO = 1.1
#: The targets of time-to-target: f - f* <= 10^-k (f(x_0) - f*) for these k, then the rounding
#: level of f* (the smallest gap the runs resolve).
TARGET_DECADES = (2, 4, 6, 8, 10)


def problem_name(run: Run) -> str:
    """The problem a run solved, by one rule everywhere: the file's name when the data set was
    given by path (``dataset.path=FILE``, which takes the place of ``dataset.name``), else
    ``dataset.name``; a problem without a name (figure1's quadratic) is its dataset's target."""
    from amm.data.libsvm import path_name

    data = run.cfg.dataset
    path = data.get("path")
    if path:
        return path_name(str(path))
    name = data.get("name")
    return str(name) if name else str(data.get("_target_", "?")).rsplit(".", 1)[-1]


def pick(run: Run, t: int) -> tuple[float, float]:
    """What "best" (beta*, best c) minimises: the gap at t (``score``), and among runs tied at the
    rounding level of f*, the one that reached it first."""
    start = rounded_from(run)
    return score(run, t), math.inf if start is None or start > t else float(start)


def best_setting(points: dict[Any, Run], t: int) -> Any | None:
    """The key (c, momentum, (c, momentum), ...) of the run with the lowest ``pick`` at t; on a
    full tie the smaller key. None when there are no runs."""
    if not points:
        return None
    return min(points, key=lambda k: (pick(points[k], t), k))


def on_edge(value: float, grid: list[float]) -> bool:
    """A tuned value on the edge of its grid has not been tuned: the best may lie beyond it."""
    return len(grid) > 1 and value in (min(grid), max(grid))


def targets(runs: list[Run]) -> list[float]:
    """The gaps time-to-target asks for, for runs of one problem (one f*, one start): 10^-k of
    the starting gap for ``TARGET_DECADES``, down to the rounding level of f*, which is the last
    target."""
    start = initial_gap(runs[0])
    level = rounding_level(runs[0])
    out = [start * 10.0**-k for k in TARGET_DECADES if start * 10.0**-k > level]
    return out + ([level] if level > 0 else [])


def time_to_target(run: Run, eps: float) -> int | None:
    """The first iteration whose f - f* is at most ``eps`` (AlgoPerf's time to target, in
    iterations); None when the run never reached it (or diverged first)."""
    it, gap = run.series("objective_gap")
    finite = np.isfinite(gap)
    if not finite.all():  # a diverged run counts only up to its first non-finite gap
        stop = int(np.argmin(finite))
        it, gap = it[:stop], gap[:stop]
    hit = np.flatnonzero(gap <= eps)
    return int(it[hit[0]]) if len(hit) else None


class Outcome(IntEnum):
    """Run a against run b on one problem, from a's side."""

    BEHIND = -1
    TIE = 0
    AHEAD = 1


def compare_runs(a: Run, b: Run, t: int, factor: float = 1.0) -> Outcome:
    """a against b after t iterations, the one rule of every convex comparison.

    1. The gap at t (``score``: a diverged run is inf, a gap at the rounding level of f* is that
       level): a is ahead when its gap is lower than b's beyond ``TIE_RATIO``, behind when higher.
       With ``factor`` > 1 the question is "within factor x of b": ahead (within) when
       a <= factor x b, behind otherwise; equal gaps are within.
    2. When the gaps tie (within the ratio, both at the rounding level, or both diverged), the
       faster run to the smallest target both reached is ahead (beyond ``TIME_TIE_RATIO``): a
       run that reaches f* to rounding in 384 iterations beats one that needs 695.
    """
    ga, gb = score(a, t), score(b, t)
    if math.isinf(ga) and math.isinf(gb):  # both diverged (or never recorded t)
        return Outcome.TIE
    if factor > 1.0:
        if ga == gb or ga <= factor * gb:
            return Outcome.AHEAD
        return Outcome.BEHIND
    if math.isinf(gb) or ga * TIE_RATIO < gb:
        return Outcome.AHEAD
    if math.isinf(ga) or gb * TIE_RATIO < ga:
        return Outcome.BEHIND
    return compare_times(a, b, t)


def compare_times(a: Run, b: Run, t: int) -> Outcome:
    """The tie-break of ``compare_runs``: iterations to the smallest common target by t."""
    for eps in reversed(targets([a])):
        ta, tb = time_to_target(a, eps), time_to_target(b, eps)
        if ta is None or tb is None or ta > t or tb > t:
            continue
        if ta * TIME_TIE_RATIO < tb:
            return Outcome.AHEAD
        if tb * TIME_TIE_RATIO < ta:
            return Outcome.BEHIND
        return Outcome.TIE
    return Outcome.TIE


# ---- figure3's runs per problem: the methods, beta* and the best c (shared with the claims) --

MGD_BETA = 0.9  # the commonly used value the paper compares with


@dataclass
class SetRuns:
    """One data set's runs, by the `method` label of their sweep block."""

    am: dict[float, Run] = field(default_factory=dict)  # c -> AM-MGD run
    grid: dict[float, dict[float, Run]] = field(default_factory=dict)  # c -> momentum -> run
    adam: Run | None = None

    def scales(self) -> list[float]:
        return sorted(set(self.am) | set(self.grid))

    def runs(self) -> list[Run]:
        grid = [r for by_beta in self.grid.values() for r in by_beta.values()]
        return [*self.am.values(), *grid, *([self.adam] if self.adam else [])]


def collect(runs: list[Run]) -> dict[str, SetRuns]:
    """Runs per data set, data sets in sweep order."""
    sets: dict[str, SetRuns] = defaultdict(SetRuns)
    for r in runs:
        s = sets[problem_name(r)]
        if r.method == "am_mgd":
            s.am[lr_scale(r)] = r
        elif r.method == "mgd":
            s.grid.setdefault(lr_scale(r), {})[float(r.cfg.optimizer.momentum)] = r
        elif r.method == "adam":
            s.adam = r
        else:
            raise ValueError(f"run {r.dir}: method {r.method!r} is not am_mgd, mgd or adam")
    return dict(sets)


def beta_star(grid: dict[float, Run], t: int) -> float | None:
    """The momentum of the grid with the lowest gap at iteration t (None: no grid); ties at the
    rounding level go to the one that reached it first (``_stepsize.best_setting``)."""
    return best_setting(grid, t)


def chosen_at(s: SetRuns, c: float, t: int) -> tuple[dict[str, Run], float | None]:
    """The four methods' runs at step c (Adam: its one run), and β* at c."""
    grid = s.grid.get(c, {})
    star = beta_star(grid, t)
    runs = {
        "AM-MGD": s.am.get(c),
        "MGD β=0.9": grid.get(MGD_BETA),
        "MGD β*": grid[star] if star is not None else None,
        "Adam": s.adam,
    }
    return {m: r for m, r in runs.items() if r is not None}, star


def best_step(points: dict[float, Run], t: int) -> tuple[float, Run] | None:
    """(c, run) with the lowest gap at t over the step sizes (None: no runs)."""
    c = best_setting(points, t)
    return None if c is None else (c, points[c])


def best_of_grid(s: SetRuns, t: int) -> tuple[float, float, Run] | None:
    """(c, β, run): MGD's best over every step size and momentum."""
    pairs = {(c, b): r for c, grid in s.grid.items() for b, r in grid.items()}
    key = best_setting(pairs, t)
    return None if key is None else (key[0], key[1], pairs[key])


def best_runs(s: SetRuns, t: int) -> list[tuple[str, Run, str]]:
    """(label, run, method) of each method at its best step size (by the gap at t)."""
    out = []
    am = best_step(s.am, t)
    if am is not None:
        out.append((f"AM-MGD, c={am[0]:g}", am[1], "AM-MGD"))
    fixed = {c: g[MGD_BETA] for c, g in s.grid.items() if MGD_BETA in g}
    mgd = best_step(fixed, t)
    if mgd is not None:
        out.append((f"MGD β=0.9, c={mgd[0]:g}", mgd[1], "MGD β=0.9"))
    star = best_of_grid(s, t)
    if star is not None:
        out.append((f"MGD β*={star[1]:g}, c={star[0]:g}", star[2], "MGD β*"))
    if s.adam is not None:
        out.append(("Adam", s.adam, "Adam"))
    return out
