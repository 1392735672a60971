"""Table 6 (paper sec. 4.5): what matters when adapting.

Rows: AdamW, AM-AdamW, AM-AdamW (Clip: beta >= beta_min) and AM-AdamW (Restart: momentum reset
when beta < restart_below); one column per model size: final C4 evaluation loss. A second
table gives, for the AM-AdamW runs, the share of steps whose logged beta was below 0.5 (the
steps the Clip and Restart variants change). Writes table6.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import Run, load_runs
from experiments._llm import by_size, method_name, num

LOW_BETA = 0.5  # the threshold of configs/experiment/table6.yaml


def low_beta_share(run: Run) -> float:
    _, beta = run.betas()
    return float(np.mean(beta < LOW_BETA)) if len(beta) else float("nan")


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    groups = by_size(runs)
    methods = {r.method: method_name(r) for r in runs}  # declared label -> name, sweep order
    lines = [
        f"# Table 6 ({scale} scale): final evaluation loss",
        "",
        "| method | " + " | ".join(f"LLaMA {s}" for s in groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    shares = [
        "",
        f"Share of steps with logged β < {LOW_BETA:g}:",
        "",
        "| method | " + " | ".join(f"LLaMA {s}" for s in groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    for m, name in methods.items():
        picked = [next((r for r in g if r.method == m), None) for g in groups.values()]
        lines.append(
            f"| {name} | "
            + " | ".join(num(r.final("eval_loss")) if r else "–" for r in picked)
            + " |"
        )
        if m != "adamw":
            shares.append(
                f"| {name} | "
                + " | ".join(f"{100 * low_beta_share(r):.1f}%" if r else "–" for r in picked)
                + " |"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table6.md").write_text("\n".join(lines + shares) + "\n")
