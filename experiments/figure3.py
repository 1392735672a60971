"""Figure 3 (paper sec. 4.1, app. F.1): logistic regression on LIBSVM sets.

One panel per data set: f − f* (log scale) vs iteration for AM-MGD, MGD with beta = 0.9, MGD
with beta* (the momentum of the grid with the lowest final loss, chosen here) and Adam; under
it, a small panel with AM-MGD's beta_t. Writes figure3.png, figure3.pdf and table.md (final
f − f* per method and data set, and beta*).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from experiments import Run, fmt, load_runs, nan_to_inf

METHODS = ("AM-MGD", "MGD β=0.9", "MGD β*", "Adam")
STYLE: dict[str, dict[str, Any]] = {
    "AM-MGD": {"color": "tab:red", "lw": 2},
    "MGD β=0.9": {"color": "tab:blue", "ls": "--"},
    "MGD β*": {"color": "tab:green"},
    "Adam": {"color": "tab:purple", "ls": ":"},
}
MGD_BETA = 0.9  # the commonly used value the paper compares with


def select(runs: list[Run]) -> tuple[dict[str, Run], float | None]:
    """The four methods' runs of one data set, and beta* (None without a momentum grid)."""
    chosen: dict[str, Run] = {}
    grid = {}
    for r in runs:  # by the `method` label of the run's sweep block
        if r.method == "am_mgd":
            chosen["AM-MGD"] = r
        elif r.method == "adam":
            chosen["Adam"] = r
        elif r.method == "mgd":
            grid[float(r.cfg.optimizer.momentum)] = r
        else:
            raise ValueError(f"run {r.dir}: method {r.method!r} is not am_mgd, mgd or adam")
    if MGD_BETA in grid:
        chosen["MGD β=0.9"] = grid[MGD_BETA]
    if not grid:
        return chosen, None
    beta_star = min(grid, key=lambda b: nan_to_inf(grid[b].final("loss")))
    chosen["MGD β*"] = grid[beta_star]
    return chosen, beta_star


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for r in load_runs(run_dirs):
        by_dataset[r.cfg.dataset.name].append(r)
    datasets = list(by_dataset)  # in sweep order

    ncols = min(len(datasets), 4)
    nrows = math.ceil(len(datasets) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 4.2 * nrows), layout="constrained")
    cells = fig.add_gridspec(nrows, ncols)
    table = [
        f"# Figure 3: final f − f* after {{steps}} iterations ({scale} scale)",
        "",
        "| data set | " + " | ".join(METHODS) + " | β* |",
        "|---" * (len(METHODS) + 2) + "|",
    ]
    steps = 0
    for k, name in enumerate(datasets):
        chosen, beta_star = select(by_dataset[name])
        sub = cells[k // ncols, k % ncols].subgridspec(2, 1, height_ratios=[3, 1], hspace=0)
        ax = fig.add_subplot(sub[0])
        ax_beta = fig.add_subplot(sub[1], sharex=ax)
        ax.tick_params(labelbottom=False)
        for method in METHODS:
            if method not in chosen:
                continue
            it, gap = chosen[method].series("objective_gap")
            label = f"MGD β*={beta_star:g}" if method == "MGD β*" else method
            ax.plot(it, gap, label=label, **STYLE[method])
        ax.set(yscale="log", title=name, ylabel="f − f*")
        ax.legend(fontsize=7)
        if "AM-MGD" in chosen:
            step, beta = chosen["AM-MGD"].betas()
            ax_beta.plot(step - 1, beta, color="tab:red", lw=0.8)
        ax_beta.set(ylim=(-0.05, 1.0), xlabel="iteration", ylabel="β_t")
        steps = max([steps, *(int(r.summary.get("step", 0)) for r in chosen.values())])
        finals = [fmt(chosen[m].final("objective_gap")) if m in chosen else "–" for m in METHODS]
        star = "–" if beta_star is None else f"{beta_star:g}"
        table.append(f"| {name} | " + " | ".join(finals) + f" | {star} |")
    fig.suptitle(
        f"Figure 3 ({scale} scale)\nlogistic regression, lr = 1/L (Adam: 1e-3)", fontsize=10
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "figure3.png", dpi=150)
    fig.savefig(out_dir / "figure3.pdf")
    table[0] = table[0].format(steps=steps)
    (out_dir / "table.md").write_text("\n".join(table) + "\n")
