"""Figure 5 (paper sec. 4.3): LLaMA on C4, AdamW vs AM-AdamW, with and without warmup.

One row per model size: training loss (trailing moving average) and evaluation loss vs step
for the four runs (AdamW / AM-AdamW x warmup / none), and AM-AdamW's beta_t. Writes
figure5.png, figure5.pdf and table.md (final smoothed training loss, evaluation loss and
perplexity of every run).

The helpers here (labels, smoothing, steps to reach a loss, time per iteration) are shared by
the other LLM artifacts: table_llm, table2, table5, table6.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from amm.artifacts import Run, load_runs

OPTIMIZER_LABEL = {"adamw": "AdamW", "am_adamw": "AM-AdamW"}
COLOR = {"adamw": "tab:blue", "am_adamw": "tab:red"}


# ---- reading LLM runs (shared by the LLM artifacts) -----------------------------------------


def size_label(run: Run) -> str:
    """The model's name from its config (``model.name``, e.g. ``20M``)."""
    return str(run.cfg.model.get("name") or f"h{run.cfg.model.hidden_size}")


def size_order(run: Run) -> tuple[int, int]:
    return int(run.cfg.model.hidden_size), int(run.cfg.model.num_hidden_layers)


def warmup(run: Run) -> int:
    return int(run.cfg.trainer.scheduler.warmup_steps)


def regime(run: Run) -> str:
    return f"warmup {warmup(run)}" if warmup(run) else "no warmup"


def method(run: Run) -> str:
    """AdamW, AM-AdamW, or an AM-AdamW variant (per-layer beta, Clip, Restart)."""
    opt = run.cfg.optimizer
    name = OPTIMIZER_LABEL.get(opt.name, str(opt.name))
    if opt.name != "am_adamw":
        return name
    if opt.get("restart_below") is not None:
        return f"{name} (Restart, β<{opt.restart_below:g})"
    if float(opt.get("beta_min", 0.0)) > 0:
        return f"{name} (Clip, β≥{opt.beta_min:g})"
    if opt.get("beta_scope", "global") != "global":
        return f"{name} (per-layer β)"
    return name


def by_size(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by model size, smallest first."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=size_order):
        groups[size_label(r)].append(r)
    return dict(groups)


def smoothing_window(run: Run) -> int:
    """Trailing window of the training-loss average: 1/30 of the run (batches are noisy)."""
    return max(1, round(int(run.cfg.trainer.max_steps) / 30))


def train_loss(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(step, trailing moving average of the batch loss); NaN once a run diverged."""
    rows = [(r["step"], r["loss"]) for r in run.metrics if "loss" in r]
    steps = np.asarray([s for s, _ in rows], dtype=np.int64)
    loss = np.asarray([v for _, v in rows], dtype=np.float64)
    w = smoothing_window(run)
    csum = np.concatenate([[0.0], np.cumsum(loss)])
    lo = np.maximum(np.arange(len(loss)) + 1 - w, 0)
    return steps, (csum[1:] - csum[lo]) / (np.arange(len(loss)) + 1 - lo)


def eval_loss(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(step, evaluation loss) at the evaluation steps (the model after that many updates)."""
    rows = [(r["step"], r["eval_loss"]) for r in run.metrics if r.get("eval_loss") is not None]
    return np.asarray([s for s, _ in rows]), np.asarray([v for _, v in rows], dtype=np.float64)


def final_train_loss(run: Run) -> float:
    _, loss = train_loss(run)
    return float(loss[-1]) if len(loss) else math.nan


def steps_to_reach(run: Run, target: float) -> int | None:
    """First step whose smoothed training loss is <= ``target`` (None: never)."""
    steps, loss = train_loss(run)
    hit = np.flatnonzero(loss <= target)
    return int(steps[hit[0]]) if len(hit) else None


def time_per_iteration(run: Run) -> float:
    """Median wall-clock seconds per update, leaving out evaluations and the first 5 steps.

    ``time_s`` is the run's clock at each record; an interval that ends with an evaluation
    includes it, so those intervals are dropped. The median ignores the rare checkpoint save
    and bursts of load from other processes.
    """
    per_step = [
        (b["time_s"] - a["time_s"]) / (b["step"] - a["step"])
        for a, b in zip(run.metrics, run.metrics[1:])
        if a["step"] >= 5 and "eval_loss" not in b and "time_s" in a and "time_s" in b
    ]
    return float(np.median(per_step)) if per_step else math.nan


def perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.nan


def num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "diverged"


# ---- the figure -------------------------------------------------------------------------------


def style(run: Run) -> dict[str, object]:
    return {
        "color": COLOR.get(run.cfg.optimizer.name, "tab:gray"),
        "ls": "-" if warmup(run) else "--",
        "lw": 1.6,
        "label": f"{method(run)}, {regime(run)}",
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
        group = sorted(group, key=lambda r: (r.cfg.optimizer.name, -warmup(r)))
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
                f"| {size} | {method(r)} | {warmup(r)} | {r.summary.get('step')} | "
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
