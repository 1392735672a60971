"""The paper's LLM results table (sec. 4.3): final C4 evaluation perplexity per model size.

Columns: AdamW and AM-AdamW, each with warmup and without; perplexity = exp(mean evaluation
loss over the seeds), the evaluation loss being the mean next-token cross-entropy over the
held-out tokens, given as mean ± std over the seeds. A second table gives the paired (same
seed) differences of the evaluation loss: AM-AdamW − AdamW in each regime, and AM-AdamW
without warmup − AdamW with warmup (the paper: AM-AdamW needs no warmup). The unigram entropy
of the eval tokens is the reference line. Writes table_llm.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from experiments import Run, load_runs
from experiments._llm import (
    by_cell,
    by_size,
    entropy_line,
    eval_losses,
    method_name,
    num,
    perplexity,
    regime,
    testbed,
    warmup,
)
from experiments._stats import SPREAD_NOTE, cell, difference_cell, estimate, seeds_note


def perplexity_cell(seeds: list[Run]) -> str:
    """``perplexity / eval loss mean ± std``; ``diverged (k of n seeds)`` when any seed did."""
    losses = eval_losses(seeds)
    mean = estimate(losses.values()).mean
    if not math.isfinite(mean):
        return cell(losses)
    return f"{num(perplexity(mean), 1)} / {cell(losses)}"


def comparisons(runs: list[Run]) -> list[tuple[str, tuple[str, int], tuple[str, int]]]:
    """(name, (method, warmup) of AM, (method, warmup) of the baseline) for the paired table."""
    with_warmup = sorted({warmup(r) for r in runs if warmup(r)})
    pairs = [
        (f"AM-AdamW − AdamW, {regime(r)}", ("am_adamw", warmup(r)), ("adamw", warmup(r)))
        for r in sorted({warmup(r): r for r in runs}.values(), key=lambda r: -warmup(r))
    ]
    pairs += [
        (f"AM-AdamW no warmup − AdamW warmup {w}", ("am_adamw", 0), ("adamw", w))
        for w in with_warmup
    ]
    return pairs


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    # columns: with warmup first, then without; AdamW before AM-AdamW
    keys = {(-warmup(r), r.method != "adamw", r.method, warmup(r), method_name(r)) for r in runs}
    columns = [(label, w, name) for _, _, label, w, name in sorted(keys)]
    pairs = comparisons(runs)
    lines = [
        f"# {testbed(runs)} ({scale} scale): final evaluation perplexity / evaluation loss",
        "",
        SPREAD_NOTE,
        seeds_note(runs) + " Perplexity: exp of the mean evaluation loss.",
        "",
        entropy_line(runs),
        "",
        "| model | "
        + " | ".join(
            f"{name}, {'warmup ' + str(w) if w else 'no warmup'}" for _, w, name in columns
        )
        + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    paired = [
        "",
        "Paired differences of the evaluation loss (seed by seed; negative: AM-AdamW lower):",
        "",
        "| model | " + " | ".join(name for name, _, _ in pairs) + " |",
        "|---" * (len(pairs) + 1) + "|",
    ]
    for size, group in by_size(runs).items():
        cells = by_cell(group)
        row = [
            perplexity_cell(cells[(size, m, w)]) if (size, m, w) in cells else "–"
            for m, w, _ in columns
        ]
        lines.append(f"| {size} | " + " | ".join(row) + " |")
        diffs = [
            difference_cell(eval_losses(cells[(size, *am)]), eval_losses(cells[(size, *base)]))
            if (size, *am) in cells and (size, *base) in cells
            else "–"
            for _, am, base in pairs
        ]
        paired.append(f"| {size} | " + " | ".join(diffs) + " |")
    cfg = runs[0].cfg
    footer = [
        "",
        f"{runs[0].summary.get('step')} steps of {cfg.dataset.batch_size} x {cfg.dataset.seq_len} "
        f"tokens, lr {cfg.optimizer.lr:g}, cosine schedule; evaluation on the first "
        f"{cfg.dataset.eval_tokens} held-out tokens of {held_out_source(cfg.dataset)}.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table_llm.md").write_text("\n".join(lines + paired + footer) + "\n")


def held_out_source(dataset: DictConfig) -> str:
    """Where the evaluation tokens come from, for the footer (C4 files, the hub split, or a text)."""
    if "path" in dataset:  # a single local text (character-level Shakespeare)
        return f"{Path(dataset.path).name} (last 10 %)"
    return str(
        dataset.get("val_data_files") or dataset.get("data_files") or "the C4 validation split"
    )
