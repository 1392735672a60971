"""Figure 1 (paper sec. 3.1): fixed vs adaptive momentum on a quadratic.

Left: objective gap vs iteration for MGD with each fixed beta of the grid, AM-MGD (exact and
linear plane bias) and the oracle beta. Right: final gap against the fixed beta, with the
adaptive methods as horizontal lines: how sharply fixed beta degrades around its best value.
Writes figure1.png, figure1.pdf and table.md.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from experiments import Run, fmt, load_runs, nan_to_inf

METHODS = ("am_mgd", "oracle", "mgd")  # the `method` labels of configs/experiment/figure1.yaml


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
    runs = load_runs(run_dirs)
    fixed = sorted((r for r in runs if r.method == "mgd"), key=lambda r: r.cfg.optimizer.momentum)
    adaptive = [r for r in runs if r.method != "mgd"]
    best = min(fixed, key=lambda r: nan_to_inf(r.final("objective_gap"))) if fixed else None

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, ax_beta = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    cmap = colormaps["viridis"]
    for i, r in enumerate(fixed):
        it, gap = r.series("objective_gap")
        ax.plot(
            it,
            gap,
            color=cmap(i / max(1, len(fixed) - 1)),
            lw=2.2 if r is best else 0.9,
            label=label(r) + (" (best fixed)" if r is best else ""),
        )
    for r in adaptive:
        ls, color = style(r)
        it, gap = r.series("objective_gap")
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
    fig.suptitle(f"Figure 1: fixed vs adaptive momentum ({scale} scale)")

    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "figure1.png", dpi=150)
    fig.savefig(out_dir / "figure1.pdf")

    lines = [
        f"# Figure 1: final objective gap after {steps} iterations ({scale} scale)",
        "",
        "| method | f − f* |",
        "|---|---|",
    ]
    lines += [
        f"| {label(r)}{' (best fixed)' if r is best else ''} | {fmt(r.final('objective_gap'))} |"
        for r in adaptive + fixed
    ]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
