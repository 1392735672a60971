"""Figure 3 (paper sec. 4.1, app. E.1/F.1): logistic regression on LIBSVM sets, across step sizes.

The runs: AM-MGD and MGD with a momentum grid at lr = c / L for each c of the sweep
(``optimizer.lr_scale``), and Adam once (its lr does not depend on L). Per c, MGD β* is the
momentum of the grid with the lowest f − f* at the last budget (``budgets`` of the config).
Writes:

- figure3.png|pdf and table.md: at c = 1, one panel per data set, f − f* (log scale) vs
  iteration for AM-MGD, MGD β = 0.9, MGD β* and Adam, with AM-MGD's β_t under it;
- figure3_stepsize.png|pdf: per data set, f − f* after the last two budgets vs c for AM-MGD,
  MGD β = 0.9 and MGD β* (x at the top of the panel: diverged; Adam as a dotted line);
- figure3_best.png|pdf: per data set, each method at its own best c (MGD β*: best c and β);
- stepsize.md: f − f* per data set, c and budget; the best c of each method; per c, the
  number of data sets where AM-MGD is ahead.

A curve stops, and AM-MGD's β_t turns grey, where f − f* reaches the rounding level of f*
(``experiments._stepsize.rounding_level``); the tables say "≤ rounding" from there on, and
comparisons count such gaps as ties (β* and best c: the run that reached it first). The runs are full-batch and deterministic: one run per
setting, no spread (``seeds: deterministic`` in the config).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from amm.data.libsvm import path_name
from experiments import Run, fmt, load_runs
from experiments._stepsize import (
    ROUNDED,
    ROUNDING_K,
    at_rounding,
    budgets,
    cell,
    draw_rounding_level,
    draw_vs_c,
    gap_curve,
    gap_text,
    initial_gap,
    lr_scale,
    rounded_from,
    score,
)

METHODS = ("AM-MGD", "MGD β=0.9", "MGD β*", "Adam")
STYLE: dict[str, dict[str, Any]] = {
    "AM-MGD": {"color": "tab:red", "lw": 2},
    "MGD β=0.9": {"color": "tab:blue", "ls": "--"},
    "MGD β*": {"color": "tab:green"},
    "Adam": {"color": "tab:purple", "ls": ":"},
}
MGD_BETA = 0.9  # the commonly used value the paper compares with
BASE_C = 1.0  # the step of the per-set curves (lr = 1/L)
# f* comes from Newton-CG to ||grad f|| <= 1e-8 x ||grad f(0)|| (amm.data.convex), so it is
# within ||grad||^2 / (2 l2) of the minimum: below 1e-17 on the reduced sets (each run's summary
# records fstar_grad_norm), far under the rounding level of f* (ROUNDING_K x eps x |f*|, about
# 1e-16 to 1e-15 there). The gap is thus resolved down to that level, and gaps at it tie.
DETERMINISTIC = (
    "Full-batch gradients from the same starting point: every run is deterministic, so each "
    "setting is run once and no spread over seeds is given."
)
ROUNDING_NOTE = (
    f"{ROUNDED}: f − f* reached the rounding level of f*, {ROUNDING_K} × eps × |f*| (eps = "
    "2.2e-16 in float64), at or before that iteration; below it the gap is rounding noise, and "
    "comparisons count such gaps as ties."
)


def rank(run: Run, t: int) -> float:
    """What "best" and "ahead" compare: the gap at t, inf if diverged, the rounding level of
    f* once it was reached (ties)."""
    return score(run, t)


def pick(run: Run, t: int) -> tuple[float, float]:
    """What "best" (β*, best c) minimises: ``rank``, and among runs tied at the rounding level
    of f*, the one that reached it first (the grid's order would be an arbitrary pick)."""
    start = rounded_from(run)
    return rank(run, t), math.inf if start is None or start > t else float(start)


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


def set_name(run: Run) -> str:
    """The data set a run used: the file's name when given by path (``dataset.path=FILE``, which
    takes the place of ``dataset.name``), else ``dataset.name``."""
    path = run.cfg.dataset.get("path")
    return path_name(path) if path else str(run.cfg.dataset.name)


def collect(runs: list[Run]) -> dict[str, SetRuns]:
    """Runs per data set, data sets in sweep order."""
    sets: dict[str, SetRuns] = defaultdict(SetRuns)
    for r in runs:
        s = sets[set_name(r)]
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
    rounding level go to the one that reached it first."""
    return min(grid, key=lambda b: pick(grid[b], t)) if grid else None


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
    if not points:
        return None
    c = min(points, key=lambda c: pick(points[c], t))
    return c, points[c]


def best_of_grid(s: SetRuns, t: int) -> tuple[float, float, Run] | None:
    """(c, β, run): MGD's best over every step size and momentum."""
    pairs = [(c, b, r) for c, grid in s.grid.items() for b, r in grid.items()]
    return min(pairs, key=lambda p: pick(p[2], t)) if pairs else None


def panel_grid(fig: Figure, n: int) -> tuple[Any, int]:
    ncols = min(n, 4)
    return fig.add_gridspec(math.ceil(n / ncols), ncols), ncols


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    sets = collect(runs)
    ts = budgets(runs)
    last = ts[-1]
    out_dir.mkdir(parents=True, exist_ok=True)
    draw_curves(sets, last, out_dir, scale)
    draw_stepsize(sets, ts, out_dir, scale)
    draw_best(sets, last, out_dir, scale)
    (out_dir / "stepsize.md").write_text("\n".join(stepsize_tables(sets, ts, scale)) + "\n")


def draw_curves(sets: dict[str, SetRuns], last: int, out_dir: Path, scale: str) -> None:
    """figure3.png and table.md: the per-set curves at c = 1."""
    fig = Figure(figsize=(4.2 * min(len(sets), 4), 4.2 * math.ceil(len(sets) / 4)))
    fig.set_layout_engine("constrained")
    cells, ncols = panel_grid(fig, len(sets))
    table = [
        f"# Figure 3: f − f* after {last} iterations at lr = 1/L ({scale} scale)",
        "",
        "| data set | " + " | ".join(METHODS) + " | β* |",
        "|---" * (len(METHODS) + 2) + "|",
    ]
    for k, (name, s) in enumerate(sets.items()):
        chosen, star = chosen_at(s, BASE_C, last)
        sub = cells[k // ncols, k % ncols].subgridspec(2, 1, height_ratios=[3, 1], hspace=0)
        ax = fig.add_subplot(sub[0])
        ax_beta = fig.add_subplot(sub[1], sharex=ax)
        ax.tick_params(labelbottom=False)
        for method in METHODS:
            if method not in chosen:
                continue
            label = f"MGD β*={star:g}" if method == "MGD β*" else method
            draw_gap(ax, chosen[method], label=label, **STYLE[method])
        draw_rounding_level(ax, list(chosen.values()))
        ax.set(yscale="log", title=name, ylabel="f − f*")
        if chosen:  # a set without runs at c = 1 has an empty panel
            ax.legend(fontsize=7)
        if "AM-MGD" in chosen:
            draw_betas(ax_beta, chosen["AM-MGD"])
        ax_beta.set(ylim=(-0.05, 1.0), xlabel="iteration", ylabel="β_t")
        finals = [gap_text(chosen[m], last, fmt) if m in chosen else "–" for m in METHODS]
        table.append(
            f"| {name} | " + " | ".join(finals) + f" | {'–' if star is None else f'{star:g}'} |"
        )
    fig.suptitle(
        f"Figure 3 ({scale} scale)\nlogistic regression, lr = 1/L (Adam: 1e-3); {ROUNDED_CAPTION}",
        fontsize=10,
    )
    fig.savefig(out_dir / "figure3.png", dpi=150)
    fig.savefig(out_dir / "figure3.pdf")
    table += [
        "",
        DETERMINISTIC,
        "",
        ROUNDING_NOTE,
        "",
        "Other step sizes: stepsize.md, figure3_stepsize.png, figure3_best.png.",
    ]
    (out_dir / "table.md").write_text("\n".join(table) + "\n")


# What the figures say about the rounding cut (their captions).
ROUNDED_CAPTION = (
    f"a curve stops (▼) where f − f* reaches the rounding level of f* ({ROUNDING_K} eps |f*|, "
    "grey dotted line), and β_t turns grey from there"
)


def draw_gap(ax: Any, run: Run, **style: Any) -> None:
    """f − f* against the iteration, up to the rounding level of f* (▼ where it stops)."""
    it, gap = gap_curve(run)
    (line,) = ax.plot(it, gap, **style)
    if rounded_from(run) is not None:
        ax.plot(it[-1:], gap[-1:], marker="v", ms=5, color=line.get_color(), ls="none")


def draw_betas(ax: Any, run: Run) -> None:
    """AM-MGD's β_t: red while f − f* is above the rounding level of f*, grey from there."""
    step, beta = run.betas()
    it = step - 1  # the iterate the step starts from, as the gap's iteration
    start = rounded_from(run)
    live = it <= start if start is not None else np.ones(len(it), dtype=bool)
    ax.plot(it[live], beta[live], color="tab:red", lw=0.8)
    if not live.all():
        ax.plot(it[~live], beta[~live], color="0.6", lw=0.5)


def draw_stepsize(sets: dict[str, SetRuns], ts: list[int], out_dir: Path, scale: str) -> None:
    """figure3_stepsize.png: the gap after the last two budgets against c, per data set."""
    shown = ts[-2:]
    budget_ls = dict(zip(shown, [":", "-"][-len(shown) :]))
    fig = Figure(figsize=(4.2 * min(len(sets), 4), 3.6 * math.ceil(len(sets) / 4)))
    fig.set_layout_engine("constrained")
    cells, ncols = panel_grid(fig, len(sets))
    for k, (name, s) in enumerate(sets.items()):
        ax = fig.add_subplot(cells[k // ncols, k % ncols])
        starts = [initial_gap(r) for r in [*s.am.values(), *(s.grid.get(BASE_C, {}).values())]]
        ceiling = 3 * max([g for g in starts if math.isfinite(g)], default=1.0)
        for t in shown:
            per_method: dict[str, dict[float, Run]] = {
                "AM-MGD": s.am,
                "MGD β=0.9": {},
                "MGD β*": {},
            }
            for c in s.scales():
                chosen, _ = chosen_at(s, c, ts[-1])
                for m in ("MGD β=0.9", "MGD β*"):
                    if m in chosen:
                        per_method[m][c] = chosen[m]
            for m, points in per_method.items():
                if points:
                    style = {**STYLE[m], "ls": budget_ls[t]}
                    draw_vs_c(ax, points, t, ceiling, label=f"{m}, t={t}", **style)
            if s.adam is not None:
                adam = rank(s.adam, t)  # on the rounding level once it reached it
                if math.isfinite(adam):
                    ax.axhline(adam, color="tab:purple", ls=budget_ls[t], lw=0.8)
        ax.axhline(ceiling, color="k", lw=0.5, alpha=0.4)
        draw_rounding_level(ax, s.runs())
        ax.set(yscale="log", title=name, xlabel="c (lr = c / L)", ylabel="f(x_t) − f*")
        ax.legend(fontsize=6)
    fig.suptitle(
        f"Figure 3 across step sizes ({scale} scale): f − f* after t iterations vs c\n"
        f"t = {', '.join(map(str, shown))}: dotted, solid; x on the grey line: diverged;\n"
        "purple: Adam (lr 1e-3, once); on the grey dotted line: f − f* reached the rounding "
        f"level of f* ({ROUNDING_K} eps |f*|)",
        fontsize=9,
    )
    fig.savefig(out_dir / "figure3_stepsize.png", dpi=150)
    fig.savefig(out_dir / "figure3_stepsize.pdf")


def draw_best(sets: dict[str, SetRuns], last: int, out_dir: Path, scale: str) -> None:
    """figure3_best.png: each method at its own best step size, per data set."""
    fig = Figure(figsize=(4.2 * min(len(sets), 4), 3.6 * math.ceil(len(sets) / 4)))
    fig.set_layout_engine("constrained")
    cells, ncols = panel_grid(fig, len(sets))
    for k, (name, s) in enumerate(sets.items()):
        ax = fig.add_subplot(cells[k // ncols, k % ncols])
        best = best_runs(s, last)
        for label, run, method in best:
            draw_gap(ax, run, label=label, **STYLE[method])
        draw_rounding_level(ax, [run for _, run, _ in best])
        ax.set(yscale="log", title=name, xlabel="iteration", ylabel="f − f*")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Figure 3, each method at its best step size c\n({scale} scale; by f − f* after "
        f"{last} iterations)\n{ROUNDED_CAPTION}",
        fontsize=10,
    )
    fig.savefig(out_dir / "figure3_best.png", dpi=150)
    fig.savefig(out_dir / "figure3_best.pdf")


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


def gap_ratio(a: Run, b: Run, t: int) -> str:
    """a's gap at t over b's; a gap at the rounding level of f* only bounds the ratio."""
    ga, gb = rank(a, t), rank(b, t)
    if not (math.isfinite(ga) and math.isfinite(gb) and gb > 0):
        return "–"
    rounded = (at_rounding(a, t), at_rounding(b, t))
    if all(rounded):  # both at f* to rounding: say which got there first
        return f"tie ({ROUNDED} from iteration {rounded_from(a)} vs {rounded_from(b)})"
    return {(True, False): "≤ ", (False, True): "≥ "}.get(rounded, "") + f"{ga / gb:.2g}"


def stepsize_tables(sets: dict[str, SetRuns], ts: list[int], scale: str) -> list[str]:
    """stepsize.md: gaps per data set, c and budget; best c per method; AM-MGD's wins per c."""
    last = ts[-1]
    lines = [
        f"# Figure 3 across step sizes ({scale} scale): f(x_t) − f*, lr = c / L",
        "",
        f"MGD β* is the momentum of the grid with the lowest f − f* after {last} iterations at "
        "that c. 'diverged': the loss was not finite by t, or the gap at t is above the starting "
        "point's and the run never came back below it. Adam (lr 1e-3, independent of L) is run "
        "once.",
        "",
        DETERMINISTIC,
        "",
        ROUNDING_NOTE.removesuffix(".") + " ('ahead'); β* and the best c then go to the run "
        "that reached it first.",
    ]
    for t in ts:
        lines += [
            "",
            f"## After {t} iterations",
            "",
            "| data set | c | AM-MGD | MGD β=0.9 | MGD β* | β* | Adam |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in sets.items():
            for c in s.scales():
                chosen, star = chosen_at(s, c, last)
                row = [cell(chosen.get(m), t) for m in ("AM-MGD", "MGD β=0.9", "MGD β*")]
                lines.append(
                    f"| {name} | {c:g} | "
                    + " | ".join(row)
                    + f" | {'–' if star is None else f'{star:g}'} | {cell(s.adam, t)} |"
                )

    lines += [
        "",
        f"## Each method at its best step size (after {last} iterations)",
        "",
        "| data set | AM-MGD | MGD β=0.9 | MGD β* | AM-MGD ÷ best MGD | Adam |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in sets.items():
        best = {method: (label, run) for label, run, method in best_runs(s, last)}
        cells = [
            f"{cell(best[m][1], last)} ({best[m][0].split(', ')[-1]})" if m in best else "–"
            for m in ("AM-MGD", "MGD β=0.9", "MGD β*")
        ]
        ratio = "–"
        if "AM-MGD" in best and "MGD β*" in best:
            ratio = gap_ratio(best["AM-MGD"][1], best["MGD β*"][1], last)
        adam = cell(s.adam, last) if s.adam is not None else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {adam} |")
    lines += [
        "",
        "MGD β*'s best is over every c and momentum of the grid (its β in the label: "
        "figure3_best.png).",
        "",
        "## Data sets where AM-MGD is ahead (lower f − f*), per c",
        "",
        "| c | " + " | ".join(f"vs MGD β=0.9, t={t} | vs MGD β*, t={t}" for t in ts) + " |",
        "|---" * (2 * len(ts) + 1) + "|",
    ]
    scales = sorted({c for s in sets.values() for c in s.scales()})
    for c in scales:
        counts = []
        for t in ts:
            for other in ("MGD β=0.9", "MGD β*"):
                wins = total = 0
                for s in sets.values():
                    chosen, _ = chosen_at(s, c, last)
                    if "AM-MGD" in chosen and other in chosen:
                        total += 1
                        wins += rank(chosen["AM-MGD"], t) < rank(chosen[other], t)
                counts.append(f"{wins} of {total}")
        lines.append(f"| {c:g} | " + " | ".join(counts) + " |")
    return lines
