"""Table 6 (paper sec. 4.5): what matters when adapting.

Rows: AdamW, AM-AdamW, AM-AdamW (Clip: beta >= beta_min) and AM-AdamW (Restart: momentum reset
when beta < restart_below); one column per model size: final C4 evaluation loss, mean ± std
over the seeds. A second table gives each AM variant's paired (same seed) difference against
AM-AdamW and against AdamW with its 95 % interval; a third, for the AM-AdamW runs, the share of
steps whose logged beta was below 0.5 (the steps the Clip and Restart variants change), mean ±
std over the seeds. Writes table6.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import Run, load_runs
from experiments._llm import by_cell, eval_losses, method_name, size_label, size_order
from experiments._stats import SPREAD_NOTE, cell, difference_cell, per_seed, seeds_note

LOW_BETA = 0.5  # the threshold of configs/experiment/table6.yaml
BASELINES = ("am_adamw", "adamw")  # each variant is compared with these (paired by seed)


def low_beta_share(run: Run) -> float:
    """Percent of the steps whose logged beta is below LOW_BETA."""
    _, beta = run.betas()
    return 100 * float(np.mean(beta < LOW_BETA)) if len(beta) else float("nan")


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    cells = {(size, m): seeds for (size, m, _), seeds in by_cell(runs).items()}
    sizes = list(dict.fromkeys(size_label(r) for r in sorted(runs, key=size_order)))
    # declared label -> name: AdamW, AM-AdamW, then the variants in sweep order
    first = BASELINES[::-1]
    ordered = sorted(runs, key=lambda r: first.index(r.method) if r.method in first else 2)
    methods = {r.method: method_name(r) for r in ordered}
    header = ["| method | " + " | ".join(f"LLaMA {s}" for s in sizes) + " |"]
    header.append("|---" * (len(sizes) + 1) + "|")
    lines = [
        f"# Table 6 ({scale} scale): final evaluation loss",
        "",
        SPREAD_NOTE,
        seeds_note(runs),
        "",
        *header,
    ]
    paired = ["", "Paired differences of the final evaluation loss (seed by seed):", "", *header]
    shares = ["", f"Share of steps with logged β < {LOW_BETA:g} (%):", "", *header]
    for m, name in methods.items():
        picked = [cells.get((s, m)) for s in sizes]
        lines.append(
            f"| {name} | "
            + " | ".join(cell(eval_losses(rs)) if rs else "–" for rs in picked)
            + " |"
        )
        if m == "adamw":
            continue
        shares.append(
            f"| {name} | "
            + " | ".join(cell(per_seed(rs, low_beta_share), 1) if rs else "–" for rs in picked)
            + " |"
        )
        for base in BASELINES:
            if base == m or base not in methods:
                continue
            diffs = [
                difference_cell(eval_losses(rs), eval_losses(cells[(s, base)]))
                if rs and (s, base) in cells
                else "–"
                for s, rs in zip(sizes, picked)
            ]
            paired.append(f"| {name} − {methods[base]} | " + " | ".join(diffs) + " |")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table6.md").write_text("\n".join(lines + paired + shares) + "\n")
