"""Figure 7 (paper sec. 4.6) and app. F.2: ablations without a learning-rate schedule.

Final test accuracy vs the swept value, AM-MGD vs MGD, per setting (model / data set):
7a lam (MGD, which has no lam, as a horizontal line), 7b batch size, 7c learning rate. A run
belongs to a sub-figure when its other two values are the experiment's defaults
(``ablation_defaults`` of configs/experiment/figure7.yaml, recorded in every run's config), so
the default point of each grid is run once.
Sub-figures with fewer than two values are left out (the reduced scale sweeps only 7c).

Every point and curve is the mean over the seeds with a min–max band; a diverged seed is left
out of it and marked. table.md gives mean ± std over the seeds per method and value, the paired
AM-MGD − MGD difference (same seed) with its 95 % interval, and for 7c the working range per
seed (the learning rates whose final accuracy reaches 90 % of the grid's best run).

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
from experiments._figures import save_figure
from experiments._stats import (
    BAND_NOTE,
    SPREAD_NOTE,
    cell,
    difference_cell,
    draw_band,
    per_seed,
    seeds_note,
)
from experiments._vision import (
    STAND_IN_BANNER,
    STYLE,
    WORKING_FRACTION,
    any_stand_in,
    curves,
    diverged,
    draw_betas,
    final_accuracy,
    final_train_loss,
    group_by_setting,
    method,
    working_threshold,
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
) -> dict[str, dict[float | None, list[Run]]]:
    """method -> {value of ``key``: its runs, one per seed} for the runs whose other values are
    the defaults (for ``key="lam"``, MGD's runs at the default lr and batch size are under None)."""
    chosen: dict[str, dict[float | None, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(runs, key=lambda r: r.seed):
        v = swept_values(r)
        others = [k for k in ("lr", "lam", "batch") if k != key]
        if all(at_default(v[k], defaults[k]) for k in others):
            chosen[method(r)][v[key]].append(r)
    return {m: dict(points) for m, points in chosen.items()}


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


def accuracy_band(
    points: dict[float, list[Run]],
) -> tuple[list[float], np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """x values, mean, min and max final accuracy over the seeds that did not diverge, and the
    x values where at least one seed diverged."""
    xs, mean, lo, hi, bad = [], [], [], [], []
    for x in sorted(points):
        ok = [final_accuracy(r) for r in points[x] if not diverged(r)]
        if len(ok) < len(points[x]):
            bad.append(x)
        if ok:
            xs.append(x)
            mean.append(np.mean(ok))
            lo.append(np.min(ok))
            hi.append(np.max(ok))
    return xs, np.asarray(mean), np.asarray(lo), np.asarray(hi), bad


def draw_subfigure(
    ax: Axes, key: str, label: str, by_method: dict[str, dict[float | None, list[Run]]]
) -> list[str]:
    """Final accuracy vs the value of ``key``: the mean over the seeds with a min–max band,
    diverged seeds left out and marked x on the axis. Returns the sub-figure's table: mean ± std
    per method and the paired AM-MGD − MGD difference per value."""
    am = {x: rs for x, rs in by_method.get("AM-MGD", {}).items() if x is not None}
    mgd = {x: rs for x, rs in by_method.get("MGD", {}).items() if x is not None}
    baseline = by_method.get("MGD", {}).get(None)  # 7a: MGD has no lam, one line
    if baseline is not None:
        ok = [final_accuracy(r) for r in baseline if not diverged(r)]
        if ok:
            ax.axhspan(min(ok), max(ok), color=STYLE["MGD"]["color"], alpha=0.15, lw=0)
            ax.axhline(float(np.mean(ok)), label="MGD (no λ)", **STYLE["MGD"])
    for m, points in (("AM-MGD", am), ("MGD", mgd)):
        if not points:
            continue
        xs, mean, lo, hi, bad = accuracy_band(points)
        (line,) = ax.plot(xs, mean, marker="o", label=m, **STYLE[m])
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
        if bad:
            ax.scatter(
                bad,
                [0.0] * len(bad),
                marker="x",
                s=60,
                color=line.get_color(),
                zorder=3,
                label=f"{m}: a seed diverged (left out)",
            )
    if key == "lam":
        ax.set_xscale("symlog", linthresh=0.01)  # lam = 0 is on the grid
    elif key == "batch":
        ax.set_xscale("log", base=2)
    else:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.legend(fontsize=7)

    rows = [
        f"| {label} | AM-MGD acc | MGD acc | AM-MGD − MGD acc (paired) | AM-MGD train loss "
        "| MGD train loss |",
        "|---|---|---|---|---|---|",
    ]
    for x in sorted(set(am) | set(mgd)):
        pair = (am.get(x), baseline if key == "lam" else mgd.get(x))
        acc = [per_seed(rs, final_accuracy) if rs else None for rs in pair]
        loss = [cell(per_seed(rs, final_train_loss), 4) if rs else "–" for rs in pair]
        diff = difference_cell(acc[0], acc[1], 2) if acc[0] and acc[1] else "–"
        accs = [cell(a, 2) if a else "–" for a in acc]
        rows.append(f"| {x:g} | {accs[0]} | {accs[1]} | {diff} | {loss[0]} | {loss[1]} |")
    return rows


def working_range(by_method: dict[str, dict[float | None, list[Run]]]) -> list[str]:
    """7c's working range per seed: the learning rates whose final accuracy reaches
    ``WORKING_FRACTION`` of the grid's best run (``working_threshold``; a diverged run does not
    work), counted per seed; mean ± std of the counts per method and the paired AM-MGD − MGD
    difference."""
    accuracies = {
        m: {x: per_seed(rs, final_accuracy) for x, rs in points.items() if x is not None}
        for m, points in by_method.items()
    }
    threshold = working_threshold(
        a for points in accuracies.values() for seeds in points.values() for a in seeds.values()
    )
    counts: dict[str, dict[int, float]] = {}
    lines = []
    for m in ("AM-MGD", "MGD"):
        points = accuracies.get(m, {})
        if not points:
            continue
        working: dict[int, list[float]] = defaultdict(list)
        for x in sorted(points):
            for seed, acc in points[x].items():
                working.setdefault(seed, [])
                if acc >= threshold:  # NaN (diverged) is not
                    working[seed].append(x)
        counts[m] = {seed: float(len(xs)) for seed, xs in working.items()}
        per = "; ".join(
            f"seed {s}: " + (f"{xs[0]:g}–{xs[-1]:g} ({len(xs)})" if xs else "none")
            for s, xs in sorted(working.items())
        )
        lines.append(f"| {m} | {cell(counts[m], 2)} | {per} |")
    if set(counts) == {"AM-MGD", "MGD"}:
        diff = difference_cell(counts["AM-MGD"], counts["MGD"], 2)
        lines.append(f"| AM-MGD − MGD (paired) | {diff} | |")
    grid = sorted({x for p in by_method.values() for x in p if x is not None})
    return [
        f"Working range: the learning rates of the grid ({', '.join(f'{x:g}' for x in grid)}) "
        f"whose final accuracy is at least {WORKING_FRACTION:.0%} of the grid's best run "
        f"(≥ {threshold:.2f} %), counted per seed.",
        "",
        "| method | learning rates that work (count) | per seed: lowest–highest (count) |",
        "|---|---|---|",
        *lines,
    ]


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
        "batch losses; 'diverged': the run's training loss became NaN or infinite.",
        "",
        SPREAD_NOTE,
        seeds_note(runs),
    ]
    for row, (name, per_sub) in zip(axes, panels.items()):
        for ax, sub in zip(row, subs):
            key, label = SUBFIGURES[sub]
            table += ["", f"## 7{sub}: {name}, {label}", ""]
            table += draw_subfigure(ax, key, label, per_sub[sub])
            if sub == "c":
                table += ["", *working_range(per_sub[sub])]
            ax.set(ylabel="final test accuracy (%)", title=f"7{sub}: {name}")
    fig.suptitle(
        # One note per line: the single-panel (reduced) figure is too narrow for them side by side.
        f"Figure 7 ({scale} scale): ablations, no lr schedule\n{BAND_NOTE}\n"
        f"x at 0: a seed diverged, left out of the mean{banner}",
        fontsize=10,
    )
    save_figure(fig, out_dir, "figure7")
    (out_dir / "table.md").write_text("\n".join(table) + "\n")

    # App. F.2: the curves behind 7c, and beta_t per learning rate.
    fig = Figure(figsize=(13, 3.3 * len(groups) + 0.7), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    for (ax_loss, ax_acc, ax_beta), (name, per_sub) in zip(axes, panels.items()):
        lrs = sorted({lr for p in per_sub["c"].values() for lr in p if lr is not None})
        colours = colormaps["viridis"](np.linspace(0, 0.9, max(len(lrs), 1)))
        for m, points in per_sub["c"].items():
            for lr in sorted(x for x in points if x is not None):
                ok = [curves(r) for r in points[lr] if not diverged(r)]
                bad = len(points[lr]) - len(ok)
                style = {"color": colours[lrs.index(lr)], "ls": STYLE.get(m, {}).get("ls", "-")}
                legend = f"lr {lr:g}" if m == "AM-MGD" else None
                draw_band(ax_loss, [(c.train_x, c.train_loss) for c in ok], bad, legend, **style)
                acc = [(c.eval_x, c.eval_accuracy) for c in ok]
                draw_band(ax_acc, acc, bad, legend, marker=".", **style)
                if m == "AM-MGD":
                    draw_betas(ax_beta, ok, color=style["color"], label=legend)
        ax_loss.set(yscale="log", xlabel="epoch", ylabel="train loss", title=name)
        ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="AM-MGD solid, MGD dashed")
        ax_beta.set(xlabel="epoch", title="AM-MGD β_t (dark: epoch mean)")
        ax_acc.legend(fontsize=6, ncol=2)
        ax_beta.legend(fontsize=6, ncol=2)
    fig.suptitle(f"Figure 7c curves, app. F.2 ({scale} scale)\n{BAND_NOTE}{banner}", fontsize=10)
    save_figure(fig, out_dir, "figure7c_curves")
