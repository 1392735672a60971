"""Shared pieces of the LLM artifacts (figure5, table_llm, table2, table5, table6): model
sizes, schedules, method names, the smoothed training loss, steps to reach a loss and time per
iteration, all read from the runs' ``config.yaml`` and ``metrics.jsonl``; the runs of one table
cell (size, method, warmup) over the seeds, and the eval tokens' unigram entropy (the loss of
the best context-free model: the reference line of figure5 and table_llm)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from experiments import Run
from experiments._stats import Estimate, combine, estimate, per_seed


def size_label(run: Run) -> str:
    """The model's name from its config (``model.name``, e.g. ``20M``)."""
    return str(run.cfg.model.get("name") or f"h{run.cfg.model.hidden_size}")


def size_order(run: Run) -> tuple[int, int]:
    return int(run.cfg.model.hidden_size), int(run.cfg.model.num_hidden_layers)


def testbed(runs: list[Run]) -> str:
    """What the runs trained on, for titles: the paper's C4, or the reduced character testbed."""
    targets = {str(r.cfg.dataset.get("_target_", "")) for r in runs}
    if all(t.endswith("ShakespeareChar") for t in targets):
        return "character-level LLaMA on tiny Shakespeare"
    return "LLaMA on C4"


def warmup(run: Run) -> int:
    return int(run.cfg.trainer.scheduler.warmup_steps)


def regime(run: Run) -> str:
    return f"warmup {warmup(run)}" if warmup(run) else "no warmup"


def method_name(run: Run) -> str:
    """The display name of the run's declared method (with the variant's threshold)."""
    opt = run.cfg.optimizer
    names = {
        "adamw": "AdamW",
        "am_adamw": "AM-AdamW",  # per-layer beta, as the paper's main runs (figure5.yaml)
        "am_adamw_global": "AM-AdamW (global β)",
        "am_adamw_clip": f"AM-AdamW (Clip, β≥{opt.get('beta_min', 0.0):g})",
        "am_adamw_restart": f"AM-AdamW (Restart, β<{opt.get('restart_below') or 0.0:g})",
    }
    if run.method not in names:
        raise ValueError(
            f"run {run.dir}: method {run.method!r} is not an LLM method; the sweep blocks of "
            f"configs/experiment/ declare one of {sorted(names)}"
        )
    return names[run.method]


def by_size(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by model size, smallest first."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in sorted(runs, key=size_order):
        groups[size_label(r)].append(r)
    return dict(groups)


def by_cell(runs: list[Run]) -> dict[tuple[str, str, int], list[Run]]:
    """(size, declared method label, warmup steps) -> its runs, one per seed (seed order);
    sizes smallest first, then the order of ``runs``."""
    groups: dict[tuple[str, str, int], list[Run]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: (size_order(r), r.seed)):
        groups[(size_label(r), r.method, warmup(r))].append(r)
    return dict(groups)


def final_eval_loss(run: Run) -> float:
    return run.final("eval_loss")


def eval_losses(runs: list[Run]) -> dict[int, float]:
    """seed -> final evaluation loss (NaN: diverged) of one cell's runs."""
    return per_seed(runs, final_eval_loss)


def eval_entropy(runs: list[Run]) -> float | None:
    """The unigram entropy of the eval tokens (``eval_unigram_entropy`` of the runs' summaries;
    None when no run recorded it). Runs evaluated on different tokens are an error: their
    losses would not be comparable."""
    values = sorted(
        {
            float(r.summary["eval_unigram_entropy"])
            for r in runs
            if "eval_unigram_entropy" in r.summary
        }
    )
    if not values:
        return None
    if values[-1] - values[0] > 1e-6:
        raise ValueError(
            f"the runs evaluated on different tokens: the unigram entropy of their eval data "
            f"ranges over {values[0]:.4f}-{values[-1]:.4f} nats; one artifact compares runs on "
            "one eval set (same dataset.eval_tokens, seq_len and data files)"
        )
    return values[0]


def entropy_line(runs: list[Run]) -> str:
    """The reference line of a table: the eval tokens' unigram entropy, or why it is missing."""
    h = eval_entropy(runs)
    if h is None:
        return (
            "Unigram entropy of the eval tokens: not recorded by these runs (made before the "
            "summary had `eval_unigram_entropy`; re-run them for the reference)."
        )
    missing = sum("eval_unigram_entropy" not in r.summary for r in runs)
    note = f" ({missing} of {len(runs)} runs did not record it)" if missing else ""
    return (
        f"Unigram entropy of the eval tokens: {h:.2f} nats{note}; a loss below it uses the "
        "context (the lowest loss of a model that ignores it)."
    )


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


def overhead_pct(a: Mapping[int, float], b: Mapping[int, float]) -> Estimate:
    """Time per iteration of ``a`` over ``b``, minus 1, in %, seed by seed."""
    return estimate(combine(a, b, lambda x, y: 100.0 * (x / y - 1.0)).values())


def clock_drift(adamw: Mapping[int, list[Run]]) -> Estimate | None:
    """AdamW's time per iteration in one warmup regime over another (warmup -> runs), in %,
    seed by seed: a negative control. Warmup changes only the value of the lr, not the
    arithmetic of a step, so any difference is the machine's drift between separate runs.
    None when fewer than two regimes ran."""
    if len(adamw) < 2:
        return None
    first, second = sorted(adamw)[:2]
    return overhead_pct(
        per_seed(adamw[first], time_per_iteration), per_seed(adamw[second], time_per_iteration)
    )


def perplexity(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.nan


def num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "diverged"
