"""The pilot that chose the reduced LLM learning rate: AdamW with and without warmup per rate.

Per learning rate: the final evaluation loss with warmup and without (mean ± std over the
seeds) and the warmup gain, no warmup − warmup, paired by seed with its 95 % interval. The
reduced scale uses a rate where the gain is clearly positive (configs/experiment/figure5.yaml).
Writes pilot.md.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from experiments import Run, load_runs
from experiments._llm import eval_losses, warmup
from experiments._stats import SPREAD_NOTE, cell, difference_cell, seeds_note


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    cells: dict[float, dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        cells[float(r.cfg.optimizer.lr)][warmup(r)].append(r)
    steps = sorted({int(r.cfg.trainer.max_steps) for r in runs})
    lines = [
        f"# Warmup pilot ({scale} scale): AdamW, final eval loss with and without warmup",
        "",
        SPREAD_NOTE,
        seeds_note(runs),
        f"Steps: {steps}; warmup steps: {sorted({warmup(r) for r in runs}, reverse=True)}.",
        "",
        "| lr | with warmup | no warmup | warmup gain: no warmup − warmup (paired) |",
        "|---|---|---|---|",
    ]
    for lr, regimes in sorted(cells.items()):
        warm = max(regimes)
        with_w, without = eval_losses(regimes[warm]), eval_losses(regimes.get(0, []))
        gain = difference_cell(without, with_w) if without and warm else "–"
        lines.append(f"| {lr:g} | {cell(with_w)} | {cell(without)} | {gain} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pilot.md").write_text("\n".join(lines) + "\n")
