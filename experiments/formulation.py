"""How much AM-AdamW's ambiguous choices matter: bias correction x lam metric x scope of beta.

The paper leaves two choices open in our copy of it (docs/algorithm.md, section 3) and ran one
scope for its main results; configs/experiment/formulation.yaml runs every combination with and
without warmup, beside AdamW. Per cell (over the seeds): the final evaluation loss, the smoothed
training loss at 10 % of training, and the mean beta_t over the first 100 steps; the paired
(same seed) difference to AdamW in the same warmup regime; and, for each choice, the paired
difference between its two options with the others held fixed. The plot draws the beta_t of the
four formulations (per-tensor beta: the mean over tensors) on one seed. Writes formulation.md,
formulation.png and formulation.pdf.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments import Run, load_runs
from experiments._figures import save_figure
from experiments._llm import eval_losses, train_loss, warmup
from experiments._stats import (
    SPREAD_NOTE,
    cell,
    difference_cell,
    per_seed,
    seeds_note,
)

CORRECTIONS = ("bounded", "exact")
METRICS = ("preconditioned", "scalar")
SCOPES = ("per-tensor", "global")
#: The paper's formulation (app. D.1, its main runs per-layer): the reference of the table.
PAPER = ("bounded", "preconditioned", "per-tensor")
EARLY_STEPS = 100  # mean beta_t over these first steps
EARLY_FRACTION = 0.1  # training loss at this fraction of the run

Cell = tuple[str, str, str]  # (bias correction, lam metric, beta scope)


def formulation(run: Run) -> Cell | None:
    """An AM-AdamW run's (bias_correction, lam_metric, beta_scope) from its config; None for
    AdamW. The label the sweep block declared must agree with the optimizer it ran."""
    opt = run.cfg.optimizer
    if run.method == "adamw":
        if opt.name != "adamw":
            raise ValueError(f"run {run.dir}: labelled adamw but ran optimizer {opt.name!r}")
        return None
    if opt.name != "am_adamw" or not run.method.startswith("am_adamw"):
        raise ValueError(
            f"run {run.dir}: method {run.method!r} with optimizer {opt.name!r} is neither AdamW "
            "nor AM-AdamW; configs/experiment/formulation.yaml declares only those"
        )
    return str(opt.bias_correction), str(opt.lam_metric), str(opt.beta_scope)


def loss_at_fraction(run: Run, fraction: float = EARLY_FRACTION) -> float:
    """The smoothed training loss at ``fraction`` of the run's steps."""
    steps, loss = train_loss(run)
    target = fraction * int(run.cfg.trainer.max_steps)
    idx = np.flatnonzero(steps >= target)
    return float(loss[idx[0]]) if len(idx) else math.nan


def early_beta(run: Run, steps: int = EARLY_STEPS) -> float:
    """The mean beta_t over the first ``steps`` steps (NaN: the run logged none)."""
    at, beta = run.betas()
    early = beta[at <= steps]
    return float(early.mean()) if len(early) else math.nan


def name(c: Cell) -> str:
    correction, metric, scope = c
    return f"{correction}, M = {'P²' if metric == 'preconditioned' else 'P'}, {scope}"


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    cells: dict[tuple[Cell | None, int], list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: r.seed):
        cells[(formulation(r), warmup(r))].append(r)
    regimes = sorted({w for _, w in cells}, reverse=True)
    am_cells = [(c, m, s) for c in CORRECTIONS for m in METRICS for s in SCOPES]

    def values(c: Cell | None, w: int, f: str) -> Mapping[int, float]:
        seeds = cells.get((c, w), [])
        if f == "eval":
            return eval_losses(seeds)
        return per_seed(seeds, loss_at_fraction if f == "early" else early_beta)

    steps = sorted({int(r.cfg.trainer.max_steps) for r in runs})
    lines = [
        f"# AM-AdamW's formulation ({scale} scale): what each ambiguous choice changes",
        "",
        SPREAD_NOTE,
        seeds_note(runs),
        f"Steps: {steps}. Early loss: smoothed training loss at {EARLY_FRACTION:.0%} of the "
        f"steps. Early β: mean β_t over the first {EARLY_STEPS} steps (per-tensor β: the mean "
        "over tensors). The paper's formulation (app. D.1, per-layer β) is marked ★.",
    ]
    for w in regimes:
        label = f"warmup {w}" if w else "no warmup"
        lines += [
            "",
            f"## {label}",
            "",
            "| formulation | final eval loss | − AdamW (paired) | early loss | early β |",
            "|---|---|---|---|---|",
        ]
        adamw = values(None, w, "eval")
        lines.append(
            f"| AdamW | {cell(adamw)} | – | {cell(values(None, w, 'early'))} | – |"
            if adamw
            else "| AdamW | – | – | – | – |"
        )
        for c in am_cells:
            mine = values(c, w, "eval")
            if not mine:
                continue
            star = " ★" if c == PAPER else ""
            vs = difference_cell(mine, adamw) if adamw else "–"
            lines.append(
                f"| {name(c)}{star} | {cell(mine)} | {vs} | {cell(values(c, w, 'early'))} | "
                f"{cell(values(c, w, 'beta'))} |"
            )
    lines += [
        "",
        "## How much each choice matters",
        "",
        "Paired difference of the two options of one choice, the other two held fixed "
        "(second − first; negative: the second option's loss is lower).",
        "",
        "| choice: second − first | held fixed | regime | Δ final eval loss | Δ early loss |",
        "|---|---|---|---|---|",
    ]
    for axis, options in ((0, CORRECTIONS), (1, METRICS), (2, SCOPES)):
        for c in am_cells:
            if c[axis] != options[0]:
                continue
            other = tuple(options[1] if k == axis else v for k, v in enumerate(c))
            fixed = ", ".join(v for k, v in enumerate(c) if k != axis)
            for w in regimes:
                a, b = values(c, w, "eval"), values(other, w, "eval")  # type: ignore[arg-type]
                if not (a and b):
                    continue
                ea, eb = values(c, w, "early"), values(other, w, "early")  # type: ignore[arg-type]
                lines.append(
                    f"| {options[1]} − {options[0]} | {fixed} | "
                    f"{f'warmup {w}' if w else 'no warmup'} | {difference_cell(b, a)} | "
                    f"{difference_cell(eb, ea)} |"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "formulation.md").write_text("\n".join(lines) + "\n")
    _plot(cells, regimes, out_dir)


def _plot(
    cells: dict[tuple[Cell | None, int], list[Run]], regimes: list[int], out_dir: Path
) -> None:
    """beta_t of the four formulations (per-tensor scope) on the lowest seed, per regime."""
    colors = dict(zip([(c, m) for c in CORRECTIONS for m in METRICS],
                      ["tab:red", "tab:orange", "tab:blue", "tab:cyan"]))  # fmt: skip
    fig = Figure(figsize=(6.2 * len(regimes), 4.2), layout="constrained")
    axes = fig.subplots(1, len(regimes), squeeze=False)[0]
    seed = None
    for ax, w in zip(axes, regimes):
        for (correction, metric), color in colors.items():
            runs = cells.get(((correction, metric, "per-tensor"), w), [])
            if not runs:
                continue
            run = runs[0]
            seed = run.seed
            at, beta = run.betas()
            ax.plot(at, beta, color=color, lw=0.9,
                    label=name((correction, metric, "per-tensor")))  # fmt: skip
        ax.axvline(EARLY_STEPS, color="k", lw=0.6, ls=":", label=f"first {EARLY_STEPS} steps")
        ax.set_title(f"{'warmup ' + str(w) if w else 'no warmup'}: β_t (mean over tensors)")
        ax.set_xlabel("step")
        ax.set_ylabel("β_t")
        ax.set_ylim(-0.02, 1.0)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"AM-AdamW's four formulations, per-tensor β, seed {seed}")
    save_figure(fig, out_dir, "formulation")
