"""Table 5 (paper app. D.3): AM-AdamW with one global beta ("shared") vs one per tensor.

Rows: shared and per-layer beta; one column per model size and warmup regime: final C4
evaluation loss, with the final smoothed training loss. Writes table5.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments import load_runs
from experiments._llm import by_size, final_train_loss, num, regime, warmup

# declared method label -> row
ROWS = {"am_adamw": "Shared (global β)", "am_adamw_per_layer": "Per-layer (β per tensor)"}


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    columns = [
        (size, reg)
        for size, group in by_size(runs).items()
        for reg in sorted({regime(r) for r in group}, key=lambda x: x == "no warmup")
    ]
    lines = [
        f"# Table 5 ({scale} scale): AM-AdamW, shared vs per-layer β: "
        "final eval loss (final smoothed training loss)",
        "",
        "| β | " + " | ".join(f"LLaMA {s}, {reg}" for s, reg in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for label_key, label in ROWS.items():
        cells = []
        for size, reg in columns:
            match = [r for r in by_size(runs)[size] if regime(r) == reg and r.method == label_key]
            cells.append(
                f"{num(match[0].final('eval_loss'))} ({num(final_train_loss(match[0]))})"
                if match
                else "–"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Warmup steps: {sorted({warmup(r) for r in runs}, reverse=True)}."]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table5.md").write_text("\n".join(lines) + "\n")
