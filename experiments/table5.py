"""Table 5 (paper app. D.3): AM-AdamW with one global beta ("shared") vs one per tensor.

Rows: shared and per-layer beta; one column per model size and warmup regime: final C4
evaluation loss, with the final smoothed training loss. Writes table5.md.
"""

from __future__ import annotations

from pathlib import Path

from amm.artifacts import load_runs
from amm.artifacts.figure5 import by_size, final_train_loss, num, regime, warmup

ROWS = {"global": "Shared (global β)", "per-tensor": "Per-layer (β per tensor)"}


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
    for scope, label in ROWS.items():
        cells = []
        for size, reg in columns:
            match = [
                r
                for r in by_size(runs)[size]
                if regime(r) == reg and r.cfg.optimizer.get("beta_scope", "global") == scope
            ]
            cells.append(
                f"{num(match[0].final('eval_loss'))} ({num(final_train_loss(match[0]))})"
                if match
                else "–"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Warmup steps: {sorted({warmup(r) for r in runs}, reverse=True)}."]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table5.md").write_text("\n".join(lines) + "\n")
