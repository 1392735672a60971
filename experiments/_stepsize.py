"""The step-size axis of the convex artifacts (figure1, figure3): runs at lr = c / L, with
c = ``optimizer.lr_scale``; the objective gap at fixed budgets; divergence marked, not hidden.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes

from experiments import Run


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
    """For "best by gap at t": diverged (or missing) runs are never the best; gaps below
    ``resolution`` (what the problem's f* can tell apart) are ties."""
    g = gap_at(run, t)
    return math.inf if math.isnan(g) or diverged(run, t) else max(g, resolution)


def cell(run: Run | None, t: int) -> str:
    """A table cell: the gap at t, or why there is none."""
    if run is None:
        return "–"
    g = gap_at(run, t)
    if math.isnan(g):
        return "no record"
    if diverged(run, t):
        return "diverged"
    return f"{g:.2e}"


# A logistic loss evaluated at f* rounds to f* +- 1e-16, so its gap can be 0 or slightly
# negative; those points are drawn here instead of vanishing from the log axis.
FLOOR = 1e-17


def draw_vs_c(ax: Axes, points: dict[float, Run], t: int, ceiling: float, **style: object) -> None:
    """The gap at t against c (log-log). A diverged point is an x at ``ceiling`` (the top of
    the panel), joined to the line, so it stays in view; a gap <= 0 sits on ``FLOOR``."""
    cs = sorted(points)
    gaps = {c: gap_at(points[c], t) for c in cs}
    ys = [ceiling if diverged(points[c], t) else (gaps[c] if gaps[c] > 0 else FLOOR) for c in cs]
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
