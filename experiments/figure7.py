"""Figure 7 (paper sec. 4.6) and app. F.2: ablations without a learning-rate schedule.

Final test accuracy vs the swept value, AM-MGD vs MGD, per setting (model / data set):
7a lam (MGD, which has no lam, as a horizontal line), 7b batch size, 7c learning rate. A run
belongs to a sub-figure when its other two values are the experiment's defaults
(``ablation_defaults`` of configs/experiment/figure7.yaml, recorded in every run's config), so
the default point of each grid is run once.
Sub-figures with fewer than two values are left out (the reduced scale sweeps only 7c).

Writes figure7.png|pdf, figure7c_curves.png|pdf (app. F.2: per learning rate, test accuracy
and train loss vs epoch, and AM-MGD's beta_t) and table.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from experiments import Run, load_runs
from experiments._vision import (
    STAND_IN_BANNER,
    STYLE,
    any_stand_in,
    curves,
    diverged,
    draw_beta,
    group_by_setting,
    method,
)

SUBFIGURES = {"a": ("lam", "λ"), "b": ("batch", "batch size"), "c": ("lr", "learning rate")}


def swept_values(run: Run) -> dict[str, float | None]:
    """lr, lam (None for MGD) and batch size of a run."""
    opt = run.cfg.optimizer
    return {
        "lr": float(opt.lr),
        "lam": float(opt.lam) if "lam" in opt else None,
        "batch": float(run.cfg.dataset.batch_size),
    }


def at_default(value: float | None, default: float) -> bool:
    """``value`` is the grid's default (None: the method has no such value, e.g. MGD's lam)."""
    return value is None or math.isclose(value, default)


def select(
    runs: list[Run], key: str, defaults: dict[str, float]
) -> dict[str, dict[float | None, Run]]:
    """method -> {value of ``key``: run} for the runs whose other values are the defaults
    (for ``key="lam"``, MGD's one run at the default lr and batch size is under None)."""
    chosen: dict[str, dict[float | None, Run]] = defaultdict(dict)
    for r in runs:
        v = swept_values(r)
        others = [k for k in ("lr", "lam", "batch") if k != key]
        if all(at_default(v[k], defaults[k]) for k in others):
            chosen[method(r)][v[key]] = r
    return chosen


def grid_defaults(runs: list[Run]) -> dict[str, float]:
    """The default point of the three grids (``ablation_defaults`` in the runs' config)."""
    points = set()
    for r in runs:
        d = r.cfg.get("ablation_defaults")
        if d is None:
            raise ValueError(
                f"run {r.dir}: its config.yaml has no `ablation_defaults` "
                "(configs/experiment/figure7.yaml sets it); re-run it with the current config"
            )
        points.add((float(d.lr), float(d.lam), float(d.batch_size)))
    if len(points) != 1:
        raise ValueError(f"the runs disagree on ablation_defaults (lr, lam, batch): {points}")
    lr, lam, batch = points.pop()
    return {"lr": lr, "lam": lam, "batch": batch}


def final_accuracy(run: Run) -> float:
    return 100 * run.final("eval_accuracy")


def loss_cell(run: Run | None) -> str:
    if run is None:
        return "–"
    return "diverged" if diverged(run) else f"{curves(run).train_loss[-1]:.4f}"


def draw_subfigure(
    ax: Axes, key: str, label: str, by_method: dict[str, dict[float | None, Run]]
) -> list[str]:
    """Final accuracy vs the value of ``key`` (x: diverged); returns the sub-figure's table."""
    am = {x: r for x, r in by_method.get("AM-MGD", {}).items() if x is not None}
    mgd = {x: r for x, r in by_method.get("MGD", {}).items() if x is not None}
    baseline = by_method.get("MGD", {}).get(None)  # 7a: MGD has no lam, one line
    if baseline is not None:
        ax.axhline(final_accuracy(baseline), label="MGD (no λ)", **STYLE["MGD"])
    for m, points in (("AM-MGD", am), ("MGD", mgd)):
        if not points:
            continue
        xs = sorted(points)
        ys = [final_accuracy(points[x]) for x in xs]
        ax.plot(xs, ys, marker="o", label=m, **STYLE[m])
        bad = [(x, y) for x, y in zip(xs, ys) if diverged(points[x])]
        if bad:
            bad_x, bad_y = [x for x, _ in bad], [y for _, y in bad]
            ax.scatter(bad_x, bad_y, marker="x", s=60, color="k", zorder=3)
    if key == "lam":
        ax.set_xscale("symlog", linthresh=0.01)  # lam = 0 is on the grid
    elif key == "batch":
        ax.set_xscale("log", base=2)
    else:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.legend(fontsize=7)

    rows = [
        f"| {label} | AM-MGD acc | MGD acc | AM-MGD train loss | MGD train loss |",
        "|---|---|---|---|---|",
    ]
    for x in sorted(set(am) | set(mgd)):
        pair = (am.get(x), baseline if key == "lam" else mgd.get(x))
        acc = [f"{final_accuracy(r):.2f}" if r is not None else "–" for r in pair]
        rows.append(
            f"| {x:g} | {acc[0]} | {acc[1]} | {loss_cell(pair[0])} | {loss_cell(pair[1])} |"
        )
    return rows


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    groups = group_by_setting(runs)
    defaults = grid_defaults(runs)
    banner = f"\n{STAND_IN_BANNER}" if any_stand_in(runs) else ""
    out_dir.mkdir(parents=True, exist_ok=True)

    # Which sub-figures have a grid (AM-MGD at two or more values) in some setting.
    panels = {
        name: {sub: select(group, key, defaults) for sub, (key, _) in SUBFIGURES.items()}
        for name, group in groups.items()
    }
    subs = [s for s in SUBFIGURES if any(len(p[s].get("AM-MGD", {})) >= 2 for p in panels.values())]

    fig = Figure(figsize=(max(4.3 * len(subs), 7), 3.3 * len(groups) + 0.7), layout="constrained")
    axes = fig.subplots(len(groups), len(subs), squeeze=False)
    table = [
        f"# Figure 7 ({scale} scale): final test accuracy (%), no learning-rate schedule",
        "",
        *([f"**{STAND_IN_BANNER}**", ""] if banner else []),
        f"Defaults (the value of the two parameters not swept): lr {defaults['lr']:g}, "
        f"λ {defaults['lam']:g}, batch size {defaults['batch']:g}. MGD: torch SGD, momentum",
        "0.9, dampening 0.9. Accuracy on the eval data (CIFAR: test set; MNIST: the held-out",
        "validation images) after the last step. Train loss: mean of the last epoch's logged",
        "batch losses; 'diverged': the final train loss is NaN or infinite.",
    ]
    for row, (name, per_sub) in zip(axes, panels.items()):
        for ax, sub in zip(row, subs):
            key, label = SUBFIGURES[sub]
            table += ["", f"## 7{sub}: {name}, {label}", ""]
            table += draw_subfigure(ax, key, label, per_sub[sub])
            ax.set(ylabel="final test accuracy (%)", title=f"7{sub}: {name}")
    fig.suptitle(
        f"Figure 7 ({scale} scale): ablations, no lr schedule (x: diverged){banner}", fontsize=10
    )
    fig.savefig(out_dir / "figure7.png", dpi=130)
    fig.savefig(out_dir / "figure7.pdf")
    (out_dir / "table.md").write_text("\n".join(table) + "\n")

    # App. F.2: the curves behind 7c, and beta_t per learning rate.
    fig = Figure(figsize=(13, 3.3 * len(groups) + 0.7), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    for (ax_loss, ax_acc, ax_beta), (name, per_sub) in zip(axes, panels.items()):
        lrs = sorted({lr for p in per_sub["c"].values() for lr in p if lr is not None})
        colours = colormaps["viridis"](np.linspace(0, 0.9, max(len(lrs), 1)))
        for m, points in per_sub["c"].items():
            for lr, r in sorted((x, r) for x, r in points.items() if x is not None):
                c, colour = curves(r), colours[lrs.index(lr)]
                ls = STYLE.get(m, {}).get("ls", "-")
                legend = f"lr {lr:g}" if m == "AM-MGD" else None
                ax_loss.plot(c.train_x, c.train_loss, label=legend, color=colour, ls=ls)
                ax_acc.plot(
                    c.eval_x, c.eval_accuracy, marker=".", label=legend, color=colour, ls=ls
                )
                if m == "AM-MGD":
                    draw_beta(ax_beta, c, color=colour, label=legend)
        ax_loss.set(yscale="log", xlabel="epoch", ylabel="train loss", title=name)
        ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="AM-MGD solid, MGD dashed")
        ax_beta.set(xlabel="epoch", title="AM-MGD β_t (dark: epoch mean)")
        ax_acc.legend(fontsize=6, ncol=2)
        ax_beta.legend(fontsize=6, ncol=2)
    fig.suptitle(f"Figure 7c curves, app. F.2 ({scale} scale){banner}", fontsize=10)
    fig.savefig(out_dir / "figure7c_curves.png", dpi=130)
    fig.savefig(out_dir / "figure7c_curves.pdf")
