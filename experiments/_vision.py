"""Shared pieces of the image-classification artifacts (figure4, figure7, figure_imagenet):
method names, setting labels, per-epoch curves from ``metrics.jsonl``, the smoke banner, and
the numbers over seeds (mean ± std per cell, paired AM-MGD − MGD differences, curves with a
band: ``experiments._stats``)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import DictConfig

from experiments import Run, load_runs
from experiments._figures import save_figure
from experiments._stats import (
    BAND_NOTE,
    SPREAD_NOTE,
    band,
    cell,
    difference_cell,
    draw_band,
    per_seed,
    run_diverged,
    seeds_note,
)

STYLE: dict[str, dict[str, Any]] = {  # matplotlib line keywords per method name
    "AM-MGD": {"color": "tab:red", "lw": 1.6},
    "MGD": {"color": "tab:blue", "ls": "--", "lw": 1.3},
}
METHODS = tuple(STYLE)
STAND_IN_BANNER = (
    "SMOKE PLUMBING CHECK: generated stand-in images, tiny model, a few steps. Not a result."
)
DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


# declared method label (sweep blocks of configs/experiment/) -> name in figures and tables
METHOD_NAMES = {"am_mgd": "AM-MGD", "mgd": "MGD"}  # MGD: torch SGD with dampening = momentum


def method(run: Run) -> str:
    """AM-MGD or MGD, from the label the run's sweep block declared."""
    if run.method not in METHOD_NAMES:
        raise ValueError(
            f"run {run.dir}: method {run.method!r} is not a vision method; the sweep blocks of "
            f"configs/experiment/ declare one of {sorted(METHOD_NAMES)}"
        )
    return METHOD_NAMES[run.method]


def model_label(cfg: DictConfig) -> str:
    """ "ResNet-18", "VGG-19", "WRN-40-10", ... from a run's model config."""
    m = cfg.model
    if "arch" in m:
        arch = str(m.arch).removesuffix("_bn")
        for prefix, label in (("resnet", "ResNet-"), ("vgg", "VGG-")):
            if arch.startswith(prefix):
                return label + arch.removeprefix(prefix)
        return arch
    return f"WRN-{m.depth}-{m.widen_factor}"


def dataset_label(cfg: DictConfig) -> str:
    """ "CIFAR-10", "ImageNet", "MNIST", ... (marked when it is a generated stand-in)."""
    target = str(cfg.dataset._target_).rsplit(".", 1)[-1]
    if target == "CIFARData":
        label = DATASET_LABELS.get(str(cfg.dataset.name), str(cfg.dataset.name))
    else:
        label = {"ImageNetData": "ImageNet", "MNISTData": "MNIST"}.get(target, target)
    if cfg.dataset.get("stand_in", False):
        label += " (stand-in)"
    return label


def setting(run: Run) -> str:
    """One panel row of a figure: model and data set."""
    return f"{model_label(run.cfg)} / {dataset_label(run.cfg)}"


def any_stand_in(runs: list[Run]) -> bool:
    return any(bool(r.cfg.dataset.get("stand_in", False)) for r in runs)


def group_by_setting(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs per setting, settings in sweep order."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[setting(r)].append(r)
    return dict(groups)


def load_settings(run_dirs: list[Path]) -> tuple[dict[str, list[Run]], str]:
    """The runs grouped by setting (sweep order), and what to append to titles: the stand-in
    banner when any run trained on generated images (smoke), else ""."""
    runs = load_runs(run_dirs)
    banner = f"\n{STAND_IN_BANNER}" if any_stand_in(runs) else ""
    return group_by_setting(runs), banner


def diverged(run: Run) -> bool:
    """The run diverged: its summary says so, or the final training loss is not finite."""
    return run_diverged(run)


def by_method(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs of one setting per method (AM-MGD first), each list one run per seed."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (METHODS.index(method(r)), r.seed)):
        groups[method(r)].append(r)
    return dict(groups)


@dataclass
class Curves:
    """Per-epoch views of one run. x values are in epochs (1.0 = the end of the first)."""

    train_x: np.ndarray  # epoch ends
    train_loss: np.ndarray  # mean of the epoch's logged batch losses
    eval_x: np.ndarray
    eval_accuracy: np.ndarray  # percent
    beta_x: np.ndarray  # every step
    beta: np.ndarray
    lr_x: np.ndarray
    lr: np.ndarray


def curves(run: Run) -> Curves:
    """Curves of ``run``; steps -> epochs with the run's steps per epoch, which is
    ``step / (epoch + 1)`` of the last record: exact when the run ends at the end of an epoch
    (the experiments' ``max_steps`` are whole epochs)."""
    records = run.metrics
    last = records[-1]
    steps_per_epoch = last["step"] / (last["epoch"] + 1)
    losses: dict[int, list[float]] = defaultdict(list)
    for r in records:
        losses[r["epoch"]].append(r["loss"])
    epochs = sorted(losses)
    evals = [r for r in records if r.get("eval_accuracy") is not None]
    beta_step, beta = run.betas()
    return Curves(
        train_x=np.asarray(epochs, dtype=float) + 1,
        train_loss=np.asarray([np.mean(losses[e]) for e in epochs]),
        eval_x=np.asarray([r["step"] for r in evals], dtype=float) / steps_per_epoch,
        eval_accuracy=100 * np.asarray([r["eval_accuracy"] for r in evals], dtype=float),
        beta_x=beta_step / steps_per_epoch,
        beta=beta,
        # a record's lr is the one of the next update (the scheduler has stepped)
        lr_x=(np.asarray([r["step"] for r in records], dtype=float) + 1) / steps_per_epoch,
        lr=np.asarray([r["lr"] for r in records], dtype=float),
    )


def epoch_means(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` over each epoch (x in (e, e + 1]), plotted at the epoch's end."""
    if not len(x):
        return x, y
    epoch = np.ceil(x).astype(int)
    ends = np.unique(epoch)
    return ends.astype(float), np.asarray([y[epoch == e].mean() for e in ends])


def draw_betas(
    ax: Axes, cs: list[Curves], color: str = "tab:red", label: str | None = None
) -> None:
    """beta_t over the seeds: every step's mean (light) and each epoch's mean with its min–max
    band over the seeds (dark)."""
    if cs:  # per step a band would be noise on noise: the mean only
        steps = band([(c.beta_x, c.beta) for c in cs])
        ax.plot(steps.x, steps.mean, color=color, lw=0.4, alpha=0.35)
    epochs = [epoch_means(c.beta_x, c.beta) for c in cs]
    marker = "." if epochs and len(epochs[0][0]) < 30 else None
    draw_band(ax, epochs, color=color, lw=1.4, marker=marker, label=label)
    ax.set(ylim=(-0.05, 1.0), ylabel="β_t")


def draw_training(
    axes: Any, runs: list[Run], title: str, accuracy_label: str = "test accuracy (%)"
) -> None:
    """Train loss, test accuracy and AM-MGD's beta_t vs epoch (one row of Figure 4): the mean
    over the seeds with a min–max band; diverged seeds left out and counted in the legend."""
    ax_loss, ax_acc, ax_beta = axes
    for m, seeds in by_method(runs).items():
        ok = [curves(r) for r in seeds if not diverged(r)]
        bad, style = len(seeds) - len(ok), STYLE.get(m, {})
        draw_band(ax_loss, [(c.train_x, c.train_loss) for c in ok], bad, m, **style)
        draw_band(ax_acc, [(c.eval_x, c.eval_accuracy) for c in ok], bad, m, **style)
        if m == "AM-MGD":
            draw_betas(ax_beta, ok)
    ax_loss.set(yscale="log", ylabel="train loss", xlabel="epoch", title=title)
    ax_acc.set(ylabel=accuracy_label, xlabel="epoch", title=title)
    ax_beta.set(xlabel="epoch", title="AM-MGD β_t")
    ax_loss.legend(fontsize=7)
    ax_acc.legend(fontsize=7)


def final_accuracy(run: Run) -> float:
    """Accuracy (%) at the last evaluation (NaN: never evaluated)."""
    acc = curves(run).eval_accuracy
    return float(acc[-1]) if len(acc) else math.nan


def best_accuracy(run: Run) -> float:
    acc = curves(run).eval_accuracy
    return float(np.nanmax(acc)) if len(acc) else math.nan


# Fig. 7c's "learning rates that train": the final accuracy reaches this share of the grid's best
# run. Relative, so that one rule serves MNIST, CIFAR-10 and CIFAR-100 alike; the figure7 table and
# the claims report both count with it.
WORKING_FRACTION = 0.9


def working_threshold(accuracies: Iterable[float]) -> float:
    """``WORKING_FRACTION`` of the best finite accuracy (%) of a grid (NaN: none finite)."""
    finite = [a for a in accuracies if math.isfinite(a)]
    return WORKING_FRACTION * max(finite) if finite else math.nan


def final_train_loss(run: Run) -> float:
    """Mean of the last epoch's logged batch losses."""
    return float(curves(run).train_loss[-1])


# the three numbers of an accuracy table, per seed
MEASURES = (final_accuracy, best_accuracy, final_train_loss)


def accuracy_table_rows(setting_name: str, runs: list[Run]) -> tuple[list[str], list[str]]:
    """Rows of the accuracy table (| setting | method | final acc | best acc | final train loss |,
    mean ± std over the seeds) and of the paired table (AM-MGD − MGD, seed by seed)."""
    groups = by_method(runs)
    values = {m: [per_seed(seeds, f) for f in MEASURES] for m, seeds in groups.items()}
    rows = [
        f"| {setting_name} | {m} | {cell(acc, 2)} | {cell(best, 2)} | {cell(loss, 4)} |"
        for m, (acc, best, loss) in values.items()
    ]
    pairs = []
    if {"AM-MGD", "MGD"} <= set(values):
        diffs = [
            difference_cell(a, b, digits)
            for a, b, digits in zip(values["AM-MGD"], values["MGD"], (2, 2, 4))
        ]
        pairs.append(f"| {setting_name} | " + " | ".join(diffs) + " |")
    return rows, pairs


def save_training_figure(
    groups: dict[str, list[Run]],
    out_dir: Path,
    stem: str,
    title: str,
    accuracy_label: str = "test accuracy (%)",
) -> None:
    """One `draw_training` row per setting, saved as <stem>.png and <stem>.pdf."""
    fig = Figure(figsize=(13, 3.2 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    for row, (name, group) in zip(axes, groups.items()):
        draw_training(row, group, name, accuracy_label)
    n = max(len(seeds) for g in groups.values() for seeds in by_method(g).values())
    fig.suptitle(title + (f"\n{BAND_NOTE} (n = {n})" if n > 1 else ""), fontsize=10)
    save_figure(fig, out_dir, stem)


def write_accuracy_table(
    path: Path,
    heading: str,
    stand_in: bool,
    notes: list[str],
    accuracy_columns: str,
    groups: dict[str, list[Run]],
) -> None:
    """The markdown tables of `accuracy_table_rows` per setting (mean ± std over the seeds, then
    the paired AM-MGD − MGD differences), under a heading, the stand-in banner (smoke runs) and
    `notes`; `accuracy_columns` names the final and best columns."""
    rows, pairs = [], []
    for name, group in groups.items():
        r, p = accuracy_table_rows(name, group)
        rows += r
        pairs += p
    runs = [r for g in groups.values() for r in g]
    table = [
        f"# {heading}",
        "",
        *([f"**{STAND_IN_BANNER}**", ""] if stand_in else []),
        *notes,
        "",
        SPREAD_NOTE,
        seeds_note(runs) + " 'diverged': the run's training loss became NaN or infinite.",
        "",
        f"| setting | method | {accuracy_columns} | final train loss |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if pairs:
        table += [
            "",
            "Paired differences AM-MGD − MGD (seed by seed):",
            "",
            f"| setting | {accuracy_columns} | final train loss |",
            "|---|---|---|---|",
            *pairs,
        ]
    path.write_text("\n".join(table) + "\n")


def make_training_artifact(
    run_dirs: list[Path],
    out_dir: Path,
    stem: str,
    title: str,
    notes: list[str],
    columns: tuple[str, str] = ("final test acc", "best test acc"),
    accuracy_label: str = "test accuracy (%)",
) -> tuple[dict[str, list[Run]], str]:
    """The training figure (<stem>.png|pdf) and table.md of figure4 and figure_imagenet.

    ``columns`` name the final and best accuracy columns. Returns the runs per setting and the
    stand-in banner ("" unless smoke runs trained on generated images) for further plots.
    """
    groups, banner = load_settings(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_training_figure(groups, out_dir, stem, f"{title}{banner}", accuracy_label)
    write_accuracy_table(
        out_dir / "table.md", title, bool(banner), notes, " | ".join(columns), groups
    )
    return groups, banner
