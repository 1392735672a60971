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
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from experiments import Run, fmt, load_runs
from experiments._figures import save_figure, suptitle_fitted
from experiments._stepsize import (
    ROUNDED,
    ROUNDING_K,
    TIE_RATIO,
    TIME_TIE_RATIO,
    Outcome,
    SetRuns,
    at_rounding,
    best_of_grid,
    best_runs,
    best_step,
    budgets,
    cell,
    chosen_at,
    collect,
    compare_runs,
    draw_rounding_level,
    draw_vs_c,
    gap_curve,
    gap_text,
    initial_gap,
    on_edge,
    rounded_from,
    score,
    targets,
    time_to_target,
)

METHODS = ("AM-MGD", "MGD β=0.9", "MGD β*", "Adam")
STYLE: dict[str, dict[str, Any]] = {
    "AM-MGD": {"color": "tab:red", "lw": 2},
    "MGD β=0.9": {"color": "tab:blue", "ls": "--"},
    "MGD β*": {"color": "tab:green"},
    "Adam": {"color": "tab:purple", "ls": ":"},
}
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
    draw_profile(sets, last, out_dir, scale)
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
    suptitle_fitted(
        fig,
        f"Figure 3 ({scale} scale)\nlogistic regression, lr = 1/L (Adam: 1e-3); {ROUNDED_CAPTION}",
    )
    save_figure(fig, out_dir, "figure3")
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
                adam = score(s.adam, t)  # on the rounding level once it reached it
                if math.isfinite(adam):
                    ax.axhline(
                        adam, color="tab:purple", ls=budget_ls[t], lw=0.8, label=f"Adam, t={t}"
                    )
        ax.axhline(ceiling, color="k", lw=0.5, alpha=0.4, label="diverged (×)")
        draw_rounding_level(ax, s.runs())
        ax.set(yscale="log", title=name, xlabel="c (lr = c / L)", ylabel="f(x_t) − f*")
        ax.legend(fontsize=6)
    suptitle_fitted(
        fig,
        f"Figure 3 across step sizes ({scale} scale): f − f* after t iterations vs c\n"
        "Adam: lr 1e-3, the same at every c",
        fontsize=9,
    )
    save_figure(fig, out_dir, "figure3_stepsize")


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
    suptitle_fitted(
        fig,
        f"Figure 3, each method at its best step size c\n({scale} scale; by f − f* after "
        f"{last} iterations)\n{ROUNDED_CAPTION}",
    )
    save_figure(fig, out_dir, "figure3_best")


PROFILE_DECADES = 6  # the first profile's target: 10^-6 of the starting gap


def profile(times: dict[str, list[float]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Dolan–Moré performance profiles: per method, the share of problems it solves within a
    factor tau of the fastest method on that problem (``times``: method -> time per problem,
    inf where it never reached the target; problems no method solved are left out)."""
    t = np.asarray(list(times.values()), dtype=np.float64)  # [methods, problems]
    fastest = t.min(axis=0)
    solved = np.isfinite(fastest)
    ratios = t[:, solved] / fastest[solved]
    out = {}
    for method, r in zip(times, ratios):
        taus = np.sort(r[np.isfinite(r)])
        share = np.arange(1, len(taus) + 1) / max(ratios.shape[1], 1)
        out[method] = (taus, share)
    return out


def draw_profile(sets: dict[str, SetRuns], last: int, out_dir: Path, scale: str) -> None:
    """figure3_profile.png: performance profiles over the data sets of the iterations to reach
    f − f* ≤ 10^-6 (f(x_0) − f*) and ≤ the rounding level of f*, each method at its best c."""
    goals = {
        f"f − f* ≤ 1e-{PROFILE_DECADES} (f(x₀) − f*)": lambda r: (
            initial_gap(r) * 10.0**-PROFILE_DECADES
        ),
        "f − f* ≤ rounding level of f*": lambda r: targets([r])[-1],
    }
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(goals))
    for ax, (title, goal) in zip(axes, goals.items()):
        times: dict[str, list[float]] = defaultdict(list)
        for s in sets.values():
            best = {method: run for _, run, method in best_runs(s, last)}
            for method in METHODS:
                run = best.get(method)
                hit = None if run is None else time_to_target(run, goal(run))
                times[method].append(math.inf if hit is None else max(hit, 1))
        for method, (taus, share) in profile(dict(times)).items():
            if len(taus):
                ax.step(np.r_[1.0, taus], np.r_[0.0, share], where="post", label=method,
                        **{k: v for k, v in STYLE[method].items() if k != "lw"})  # fmt: skip
            else:
                ax.plot([], [], label=f"{method} (never)", **STYLE[method])
        ax.set(xscale="log", xlabel="τ: within τ × the fastest method's iterations",
               ylabel="share of data sets", ylim=(-0.02, 1.02), title=title)  # fmt: skip
        ax.legend(fontsize=8, loc="lower right")
    suptitle_fitted(
        fig,
        f"Figure 3, performance profiles over {len(sets)} data sets ({scale} scale), "
        f"each method at its best c after {last} iterations",
    )
    save_figure(fig, out_dir, "figure3_profile")


def gap_ratio(a: Run, b: Run, t: int) -> str:
    """a's gap at t over b's; a gap at the rounding level of f* only bounds the ratio."""
    ga, gb = score(a, t), score(b, t)
    if not (math.isfinite(ga) and math.isfinite(gb) and gb > 0):
        return "–"
    rounded = (at_rounding(a, t), at_rounding(b, t))
    if all(rounded):  # both at f* to rounding: say which got there first
        return f"tie ({ROUNDED} from iteration {rounded_from(a)} vs {rounded_from(b)})"
    return {(True, False): "≤ ", (False, True): "≥ "}.get(rounded, "") + f"{ga / gb:.2g}"


def outcome_counts(found: list[Outcome]) -> str:
    """'a / t / b of n': ahead, tied, behind."""
    a, t, b = (sum(o == k for o in found) for k in (Outcome.AHEAD, Outcome.TIE, Outcome.BEHIND))
    return f"{a} / {t} / {b} of {len(found)}"


def time_to_target_table(sets: dict[str, SetRuns], last: int) -> list[str]:
    """Iterations each method (at its best c by the gap after ``last``) needs to reach each
    target, per data set: the speed a tie at the budget hides (AlgoPerf's time to target)."""
    lines = [
        f"## Time to target: iterations to reach f − f* ≤ ε (each method at its best c, by "
        f"f − f* after {last} iterations)",
        "",
        "ε: 10⁻² … 10⁻¹⁰ of the starting gap f(x_0) − f*, then the rounding level of f* "
        "(the last column); '>': not reached within the run.",
        "",
    ]
    for name, s in sets.items():
        best = best_runs(s, last)
        if not best:
            continue
        eps = targets([best[0][1]])
        lines += [
            f"### {name}",
            "",
            "| method | " + " | ".join(f"{e:.1e}" for e in eps) + " |",
            "|---" * (len(eps) + 1) + "|",
        ]
        for label, run, _ in best:
            row = [time_to_target(run, e) for e in eps]
            lines.append(
                f"| {label} | " + " | ".join(">" if v is None else str(v) for v in row) + " |"
            )
        lines.append("")
    return lines


def edge_notes(sets: dict[str, SetRuns], last: int) -> list[str]:
    """Every best setting that sits on an edge of its grid: not a tuned value (the best may lie
    beyond the grid)."""
    notes = []
    for name, s in sets.items():
        cs = s.scales()
        momenta = sorted({b for grid in s.grid.values() for b in grid})
        am = best_step(s.am, last)
        if am is not None and on_edge(am[0], cs):
            notes.append(f"- {name}: AM-MGD's best c = {am[0]:g} is on the edge of c {cs}")
        star = best_of_grid(s, last)
        if star is not None:
            edges = [f"c = {star[0]:g}"] if on_edge(star[0], cs) else []
            edges += [f"β = {star[1]:g}"] if on_edge(star[1], momenta) else []
            if edges:
                notes.append(
                    f"- {name}: MGD β*'s best ({' and '.join(edges)}) is on the edge of its "
                    f"grid (c {cs}, β {momenta})"
                )
    head = "## Best settings on a grid edge (not tuned: the best may lie beyond the grid)"
    return [head, "", *(notes or ["None: every best setting is inside its grid."])]


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
        "## Data sets where AM-MGD is ahead / tied / behind, per c",
        "",
        f"The one comparison of figure1, figure3 and the claims report "
        f"(`experiments._stepsize.compare_runs`): the lower f − f* at t beyond a ratio of "
        f"{TIE_RATIO:g}; equal gaps (both at the rounding level of f*, or within the ratio) go "
        f"to the run that reached the smallest common target first (beyond {TIME_TIE_RATIO:g}x "
        "the iterations), else a tie.",
        "",
        "| c | " + " | ".join(f"vs MGD β=0.9, t={t} | vs MGD β*, t={t}" for t in ts) + " |",
        "|---" * (2 * len(ts) + 1) + "|",
    ]
    scales = sorted({c for s in sets.values() for c in s.scales()})
    for c in scales:
        counts = []
        for t in ts:
            for other in ("MGD β=0.9", "MGD β*"):
                found = [
                    compare_runs(chosen["AM-MGD"], chosen[other], t)
                    for chosen, _ in (chosen_at(s, c, last) for s in sets.values())
                    if "AM-MGD" in chosen and other in chosen
                ]
                counts.append(outcome_counts(found))
        lines.append(f"| {c:g} | " + " | ".join(counts) + " |")
    lines += ["", *time_to_target_table(sets, last), "", *edge_notes(sets, last)]
    return lines
