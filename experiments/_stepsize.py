"""The step-size axis of the convex artifacts (figure1, figure3): runs at lr = c / L, with
c = ``optimizer.lr_scale``; the objective gap at fixed budgets; divergence marked, not hidden;
gaps at the rounding level of f* shown as such, not as numbers (``rounding_level``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
        ax.axhline(rounding_level(reached[0]), color="0.5", ls=":", lw=0.7)
