"""Table 5 (paper app. D.3): AM-AdamW with one global beta ("shared") vs one per tensor.

Rows: shared and per-layer beta; one column per model size and warmup regime: final C4
evaluation loss / final smoothed training loss, each mean ± std over the seeds. A last row
gives the paired (same seed) difference per-layer − shared of the evaluation loss with its 95 %
interval. Writes table5.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments import load_runs
from experiments._llm import by_cell, eval_losses, final_train_loss, warmup
from experiments._stats import SPREAD_NOTE, cell, difference_cell, per_seed, seeds_note

# declared method label -> row
ROWS = {"am_adamw_global": "Shared (global β)", "am_adamw": "Per-layer (β per tensor)"}


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    cells = by_cell(runs)
    sizes = list(dict.fromkeys(size for size, _, _ in cells))  # smallest first
    columns = sorted({(size, w) for size, _, w in cells}, key=lambda c: (sizes.index(c[0]), -c[1]))
    lines = [
        f"# Table 5 ({scale} scale): AM-AdamW, shared vs per-layer β: "
        "final eval loss / final smoothed training loss",
        "",
        SPREAD_NOTE,
        seeds_note(runs),
        "",
        "| β | "
        + " | ".join(f"LLaMA {s}, {f'warmup {w}' if w else 'no warmup'}" for s, w in columns)
        + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for label_key, label in ROWS.items():
        row = []
        for size, w in columns:
            seeds = cells.get((size, label_key, w))
            row.append(
                f"{cell(eval_losses(seeds))} / {cell(per_seed(seeds, final_train_loss))}"
                if seeds
                else "–"
            )
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    diffs = []
    for size, w in columns:
        shared, per_layer = (cells.get((size, m, w)) for m in ROWS)
        diffs.append(
            difference_cell(eval_losses(per_layer), eval_losses(shared))
            if shared and per_layer
            else "–"
        )
    lines.append("| per-layer − shared, eval loss (paired) | " + " | ".join(diffs) + " |")
    lines += ["", f"Warmup steps: {sorted({warmup(r) for r in runs}, reverse=True)}."]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table5.md").write_text("\n".join(lines) + "\n")
