"""Figure 5 (paper sec. 4.3): LLaMA on C4, AdamW vs AM-AdamW, with and without warmup.

One row per model size: training loss (trailing moving average) and evaluation loss vs step
for the four runs (AdamW / AM-AdamW x warmup / none), and AM-AdamW's beta_t. Writes
figure5.png, figure5.pdf and table.md (final smoothed training loss, evaluation loss and
perplexity of every run). The helpers it shares with the other LLM artifacts are in ``_llm``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments import Run, load_runs
from experiments._llm import (
    by_size,
    eval_loss,
    final_train_loss,
    method_name,
    num,
    perplexity,
    regime,
    smoothing_window,
    train_loss,
    warmup,
)

COLOR = {"adamw": "tab:blue", "am_adamw": "tab:red"}


def style(run: Run) -> dict[str, object]:
    return {
        "color": COLOR.get(run.method, "tab:gray"),
        "ls": "-" if warmup(run) else "--",
        "lw": 1.6,
        "label": f"{method_name(run)}, {regime(run)}",
    }


def loss_limits(curves: list[np.ndarray]) -> tuple[float, float] | None:
    """y range from the lowest loss to at most 3 nats above it (the first evaluations are far up)."""
    finite = np.concatenate([c[np.isfinite(c)] for c in curves]) if curves else np.array([])
    if not len(finite):
        return None
    lo = float(finite.min())
    return lo - 0.1, min(float(finite.max()), lo + 3.0) + 0.1


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    groups = by_size(runs)
    fig = Figure(figsize=(14, 3.8 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    table = [
        f"# Figure 5: LLaMA on C4 ({scale} scale), final values",
        "",
        "| model | method | warmup | steps | train loss (smoothed) | eval loss | eval perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, (size, group) in zip(axes, groups.items()):
        ax_train, ax_eval, ax_beta = row
        group = sorted(group, key=lambda r: (r.method, -warmup(r)))
        for r in group:
            steps, loss = train_loss(r)
            ax_train.plot(steps, loss, **style(r))
            e_steps, e_loss = eval_loss(r)
            ax_eval.plot(e_steps, e_loss, marker="o", ms=3, **style(r))
            b_steps, beta = r.betas()
            if len(beta):
                ax_beta.plot(b_steps, beta, alpha=0.8, **{**style(r), "lw": 0.7})
            final = r.final("eval_loss")
            table.append(
                f"| {size} | {method_name(r)} | {warmup(r)} | {r.summary.get('step')} | "
                f"{num(final_train_loss(r))} | {num(final)} | {num(perplexity(final), 1)} |"
            )
        window = smoothing_window(group[0])
        ax_train.set(
            title=f"LLaMA {size}: training loss (mean of last {window} steps)",
            xlabel="step",
            ylabel="loss",
        )
        ax_eval.set(title=f"LLaMA {size}: evaluation loss", xlabel="step", ylabel="loss")
        limits = loss_limits([eval_loss(r)[1] for r in group])
        if limits:  # the training panel keeps its full range: it shows the early instability
            ax_eval.set_ylim(*limits)
        ax_train.legend(fontsize=7)
        ax_eval.legend(fontsize=7)
        ax_beta.set(title="AM-AdamW β_t", xlabel="step", ylabel="β_t", ylim=(-0.05, 1.0))
        if ax_beta.lines:
            ax_beta.legend(fontsize=7)
    cfg = runs[0].cfg
    fig.suptitle(
        f"Figure 5 ({scale} scale): C4, lr {cfg.optimizer.lr:g}, batch "
        f"{cfg.dataset.batch_size} x {cfg.dataset.seq_len} tokens, cosine schedule",
        fontsize=10,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "figure5.png", dpi=150)
    fig.savefig(out_dir / "figure5.pdf")
    (out_dir / "table.md").write_text("\n".join(table) + "\n")
