"""Figure 1 (paper sec. 3.1): fixed vs adaptive momentum on a quadratic.

At lr = 1/L (c = 1), figure1.png|pdf and table.md. Left: objective gap vs iteration for MGD
with each fixed beta of the grid, AM-MGD (exact and linear plane bias) and the oracle beta.
Right: final gap against the fixed beta, with the adaptive methods as horizontal lines: how
sharply fixed beta degrades around its best value.

Across step sizes lr = c / L (``optimizer.lr_scale``, the axis of Figure 3),
figure1_stepsize.png|pdf and stepsize.md: the final gap of each adaptive method, MGD β = 0.9
and MGD β* (the best fixed beta at that c) against c; diverged runs are marked.

Curves stop where f − f* reaches the rounding level of f* (``experiments._stepsize``), as in
Figure 3; here f* = 0 exactly and the gap is f itself, computed without cancellation, so the
level is 0 and no curve stops. The runs are full-batch and deterministic: one run per setting.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from experiments import Run, fmt, load_runs, nan_to_inf
from experiments._figures import save_figure
from experiments._stepsize import (
    cell,
    draw_vs_c,
    gap_curve,
    gap_text,
    initial_gap,
    lr_scale,
    rounding_level,
    score,
)

METHODS = ("am_mgd", "oracle", "mgd")  # the `method` labels of configs/experiment/figure1.yaml
DETERMINISTIC = (
    "Full-batch gradients of a fixed quadratic from a fixed start: every run is deterministic, "
    "so each setting is run once and no spread over seeds is given."
)


def rounding_caption(runs: list[Run]) -> str:
    """What the figure says about the rounding cut (the same rule as Figure 3's)."""
    levels = {rounding_level(r) for r in runs}
    if levels == {0.0}:
        return "f* = 0 exactly (f − f* is f itself): no rounding level, no curve is cut"
    return "a curve stops where f − f* reaches the rounding level of f* (8 eps |f*|)"


def label(run: Run) -> str:
    """The legend / table name: the declared method, with its swept value."""
    opt = run.cfg.optimizer
    if run.method == "mgd":
        return f"MGD β={opt.momentum:g}"
    if run.method == "am_mgd":
        return f"AM-MGD ({opt.plane_bias} bias)"
    if run.method == "oracle":
        return "oracle β (app. B.4)"
    raise ValueError(f"run {run.dir}: method {run.method!r} is not one of {METHODS}")


def style(run: Run) -> tuple[str, str]:
    """(line style, colour) of an adaptive method."""
    if run.method == "oracle":
        return "--", "black"
    return "-", "tab:orange" if run.cfg.optimizer.get("plane_bias") == "linear" else "tab:red"


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    all_runs = load_runs(run_dirs)
    draw_stepsize(all_runs, out_dir, scale)
    runs = [r for r in all_runs if lr_scale(r) == 1.0]  # the figure at lr = 1/L
    if not runs:
        return
    fixed = sorted((r for r in runs if r.method == "mgd"), key=lambda r: r.cfg.optimizer.momentum)
    adaptive = [r for r in runs if r.method != "mgd"]
    best = min(fixed, key=lambda r: nan_to_inf(r.final("objective_gap"))) if fixed else None

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, ax_beta = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    cmap = colormaps["viridis"]
    for i, r in enumerate(fixed):
        it, gap = gap_curve(r)
        ax.plot(
            it,
            gap,
            color=cmap(i / max(1, len(fixed) - 1)),
            lw=2.2 if r is best else 0.9,
            label=label(r) + (" (best fixed)" if r is best else ""),
        )
    for r in adaptive:
        ls, color = style(r)
        it, gap = gap_curve(r)
        ax.plot(it, gap, ls=ls, color=color, lw=2, label=label(r))
    d = runs[0].cfg.dataset
    ax.set(
        yscale="log",
        xlabel="iteration t",
        ylabel="f(x_t) − f*",
        title=f"quadratic, d={d.dim}, eigenvalues in [{d.mu:g}, {d.L:g}], lr = 1/L",
    )
    ax.legend(fontsize=7, ncol=2)

    if fixed:
        momenta = [r.cfg.optimizer.momentum for r in fixed]
        ax_beta.plot(
            momenta,
            [r.final("objective_gap") for r in fixed],
            "o-",
            color="tab:blue",
            label="MGD, fixed β",
        )
    for r in adaptive:
        ls, color = style(r)
        ax_beta.axhline(r.final("objective_gap"), ls=ls, color=color, label=label(r))
    steps = runs[0].summary.get("step")
    ax_beta.set(
        yscale="log",
        xlabel="fixed β",
        ylabel=f"f − f* after {steps} iterations",
        title="sensitivity to β",
    )
    ax_beta.legend(fontsize=7)
    fig.suptitle(
        f"Figure 1: fixed vs adaptive momentum ({scale} scale)\n{rounding_caption(runs)}",
        fontsize=10,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out_dir, "figure1")

    lines = [
        f"# Figure 1: final objective gap after {steps} iterations ({scale} scale)",
        "",
        "| method | f − f* |",
        "|---|---|",
    ]
    last = int(steps) - 1 if steps is not None else 0  # the iterate of the last record
    lines += [
        f"| {label(r)}{' (best fixed)' if r is best else ''} | {gap_text(r, last, fmt)} |"
        for r in adaptive + fixed
    ]
    lines += ["", DETERMINISTIC, "", f"Rounding: {rounding_caption(runs)}."]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")


def draw_stepsize(runs: list[Run], out_dir: Path, scale: str) -> None:
    """figure1_stepsize.png and stepsize.md: the final gap of every method against c."""
    scales = sorted({lr_scale(r) for r in runs})
    t = int(runs[0].summary.get("step", 1)) - 1  # the last recorded iterate
    lines: dict[str, dict[float, Run]] = {}  # name -> c -> run
    stars: dict[float, float] = {}
    for c in scales:
        at_c = [r for r in runs if lr_scale(r) == c]
        for r in at_c:
            if r.method != "mgd":
                lines.setdefault(label(r), {})[c] = r
            elif float(r.cfg.optimizer.momentum) == 0.9:
                lines.setdefault("MGD β=0.9", {})[c] = r
        grid = [r for r in at_c if r.method == "mgd"]
        if grid:
            best = min(grid, key=lambda r: score(r, t))
            lines.setdefault("MGD β*", {})[c] = best
            stars[c] = float(best.cfg.optimizer.momentum)

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ceiling = 3 * max(initial_gap(r) for r in runs)
    colours = {"MGD β=0.9": "tab:blue", "MGD β*": "tab:green"}
    for name, points in lines.items():
        run = next(iter(points.values()))
        ls, colour = style(run) if run.method != "mgd" else ("-", colours[name])
        draw_vs_c(ax, points, t, ceiling, ls=ls, color=colour, label=name)
    ax.axhline(ceiling, color="k", lw=0.5, alpha=0.4, label="diverged (×)")
    ax.set(yscale="log", xlabel="c (lr = c / L)", ylabel=f"f − f* after {t} iterations")
    ax.legend(fontsize=7)
    fig.suptitle(f"Figure 1 across step sizes ({scale} scale)", fontsize=10)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out_dir, "figure1_stepsize")

    names = list(lines)
    table = [
        f"# Figure 1 across step sizes ({scale} scale): f − f* after {t} iterations, lr = c / L",
        "",
        "MGD β*: the fixed beta of the grid with the lowest final gap at that c. 'diverged': "
        "the loss was not finite, or the gap is above the starting point's and never came back.",
        "",
        DETERMINISTIC,
        "",
        f"Rounding: {rounding_caption(runs)}.",
        "",
        "| c | " + " | ".join(names) + " | β* |",
        "|---" * (len(names) + 2) + "|",
    ]
    for c in scales:
        row = [cell(lines[n].get(c), t) for n in names]
        star = f"{stars[c]:g}" if c in stars else "–"
        table.append(f"| {c:g} | " + " | ".join(row) + f" | {star} |")
    (out_dir / "stepsize.md").write_text("\n".join(table) + "\n")
