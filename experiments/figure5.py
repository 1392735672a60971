"""Figure 5 (paper sec. 4.3): LLaMA on C4, AdamW vs AM-AdamW, with and without warmup.

One row per model size: training loss (trailing moving average) and evaluation loss vs step
for the four settings (AdamW / AM-AdamW x warmup / none), and AM-AdamW's beta_t; each curve is
the mean over the seeds with a min–max band (a diverged seed is left out and counted in the
legend). The eval panels draw the unigram entropy of the eval tokens as a reference line.
Writes figure5.png, figure5.pdf and table.md (final smoothed training loss, evaluation loss
and perplexity: mean ± std over the seeds; the paired AM-AdamW − AdamW differences per warmup
regime). The helpers it shares with the other LLM artifacts are in ``_llm``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments import Run, load_runs
from experiments._figures import save_figure
from experiments._llm import (
    by_cell,
    by_size,
    entropy_line,
    eval_entropy,
    eval_loss,
    eval_losses,
    final_train_loss,
    method_name,
    num,
    perplexity,
    regime,
    smoothing_window,
    testbed,
    train_loss,
    warmup,
)
from experiments._stats import (
    BAND_NOTE,
    SPREAD_NOTE,
    cell,
    difference_cell,
    draw_band,
    estimate,
    per_seed,
    run_diverged,
    seeds_note,
)

COLOR = {"adamw": "tab:blue", "am_adamw": "tab:red"}


def style(run: Run) -> dict[str, object]:
    return {
        "color": COLOR.get(run.method, "tab:gray"),
        "ls": "-" if warmup(run) else "--",
        "lw": 1.6,
    }


def label(run: Run) -> str:
    return f"{method_name(run)}, {regime(run)}"


def loss_limits(curves: list[np.ndarray], reference: float | None) -> tuple[float, float] | None:
    """y range from the lowest loss (or the reference line) to at most 3 nats above the lowest
    loss (the first evaluations are far up)."""
    finite = np.concatenate([c[np.isfinite(c)] for c in curves]) if curves else np.array([])
    if not len(finite):
        return None
    lowest = float(finite.min())
    lo = lowest if reference is None else min(lowest, reference)
    return lo - 0.1, min(float(finite.max()), lowest + 3.0) + 0.1


def table_rows(size: str, cells: dict[tuple[str, str, int], list[Run]]) -> list[str]:
    """| model | method | warmup | steps | train loss | eval loss | perplexity | per setting."""
    rows = []
    for (_, _, w), seeds in cells.items():
        evals = eval_losses(seeds)
        mean = estimate(evals.values()).mean
        ppl = num(perplexity(mean), 1) if math.isfinite(mean) else "diverged"
        steps = "/".join(sorted({str(r.summary.get("step")) for r in seeds}))
        rows.append(
            f"| {size} | {method_name(seeds[0])} | {w} | {steps} | "
            f"{cell(per_seed(seeds, final_train_loss))} | {cell(evals)} | {ppl} |"
        )
    return rows


def paired_rows(size: str, cells: dict[tuple[str, str, int], list[Run]]) -> list[str]:
    """AM-AdamW − AdamW per warmup regime (same seeds): eval and smoothed train loss."""
    rows = []
    for w in sorted({w for _, _, w in cells}, reverse=True):
        am, adamw = cells.get((size, "am_adamw", w)), cells.get((size, "adamw", w))
        if not (am and adamw):
            continue
        diff_eval = difference_cell(eval_losses(am), eval_losses(adamw))
        diff_train = difference_cell(
            per_seed(am, final_train_loss), per_seed(adamw, final_train_loss)
        )
        rows.append(f"| {size} | {regime(am[0])} | {diff_eval} | {diff_train} |")
    return rows


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    groups = by_size(runs)
    entropy = eval_entropy(runs)
    fig = Figure(figsize=(14, 3.8 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    table = [
        f"# Figure 5: {testbed(runs)} ({scale} scale), final values",
        "",
        SPREAD_NOTE,
        seeds_note(runs) + " Perplexity: exp of the mean eval loss.",
        "",
        entropy_line(runs),
        "",
        "| model | method | warmup | steps | train loss (smoothed) | eval loss | eval perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    paired = [
        "",
        "Paired differences AM-AdamW − AdamW (seed by seed; negative: AM-AdamW lower):",
        "",
        "| model | schedule | eval loss | train loss (smoothed) |",
        "|---|---|---|---|",
    ]
    for row, (size, group) in zip(axes, groups.items()):
        ax_train, ax_eval, ax_beta = row
        cells = dict(sorted(by_cell(group).items(), key=lambda kv: (kv[0][1], -kv[0][2])))
        for seeds in cells.values():
            ok = [r for r in seeds if not run_diverged(r)]
            bad, first = len(seeds) - len(ok), seeds[0]
            draw_band(ax_train, [train_loss(r) for r in ok], bad, label(first), **style(first))
            e_curves = [eval_loss(r) for r in ok]
            draw_band(ax_eval, e_curves, bad, label(first), marker="o", ms=3, **style(first))
            betas = [r.betas() for r in ok if len(r.betas()[1])]
            if betas:
                draw_band(ax_beta, betas, 0, label(first), **{**style(first), "lw": 0.7})
        table += table_rows(size, cells)
        paired += paired_rows(size, cells)
        window = smoothing_window(group[0])
        ax_train.set(
            title=f"LLaMA {size}: training loss (mean of last {window} steps)",
            xlabel="step",
            ylabel="loss",
        )
        ax_eval.set(title=f"LLaMA {size}: evaluation loss", xlabel="step", ylabel="loss")
        if entropy is not None:
            ax_eval.axhline(
                entropy,
                color="k",
                ls=":",
                lw=1.0,
                label=f"unigram entropy of eval tokens ({entropy:.2f})",
            )
        limits = loss_limits([eval_loss(r)[1] for r in group], entropy)
        if limits:  # the training panel keeps its full range: it shows the early instability
            ax_eval.set_ylim(*limits)
        ax_train.legend(fontsize=7)
        ax_eval.legend(fontsize=7)
        ax_beta.set(title="AM-AdamW β_t", xlabel="step", ylabel="β_t", ylim=(-0.05, 1.0))
        if ax_beta.lines:
            ax_beta.legend(fontsize=7)
    cfg = runs[0].cfg
    n = max(len(seeds) for seeds in by_cell(runs).values())
    fig.suptitle(
        f"Figure 5 ({scale} scale): C4, lr {cfg.optimizer.lr:g}, batch "
        f"{cfg.dataset.batch_size} x {cfg.dataset.seq_len} tokens, cosine schedule"
        + (f"\n{BAND_NOTE} (n = {n})" if n > 1 else ""),
        fontsize=10,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out_dir, "figure5")
    (out_dir / "table.md").write_text("\n".join(table + paired) + "\n")
