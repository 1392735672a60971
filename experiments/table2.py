"""Table 2 (paper app. D.4): AM-AdamW's cost per iteration and its convergence speedup.

Per model size and warmup regime: the median wall-clock time per iteration of AdamW and
AM-AdamW (evaluation steps left out), AM-AdamW's overhead in percent, and the convergence
speedup = (steps AdamW needs to reach its final training loss) / (steps AM-AdamW needs to
reach the same loss), both on the smoothed training loss of figure5.py. When AM-AdamW never
reaches that loss the speedup is below AdamW's steps / the run length ("<x"). Writes
table2.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments import Run, load_runs
from experiments._llm import (
    by_size,
    final_train_loss,
    num,
    regime,
    steps_to_reach,
    time_per_iteration,
    warmup,
)


def speedup(adamw: Run, am: Run) -> tuple[str, str]:
    """(speedup as text, the steps behind it)."""
    target = final_train_loss(adamw)
    n_adamw = steps_to_reach(adamw, target)
    if n_adamw is None:  # AdamW diverged (NaN loss)
        return "–", "AdamW diverged"
    n_am = steps_to_reach(am, target)
    if n_am is None:
        total = int(am.summary.get("step", 0))
        return f"<{n_adamw / total:.2f}", f"{n_adamw} / not reached in {total}"
    return f"{n_adamw / n_am:.2f}", f"{n_adamw} / {n_am}"


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    lines = [
        f"# Table 2 ({scale} scale): time per iteration and convergence speedup of AM-AdamW",
        "",
        "| model | schedule | time/iter AdamW (s) | time/iter AM-AdamW (s) | AM-AdamW overhead (%) "
        "| convergence speedup (AM-AdamW/AdamW) | steps to AdamW's final loss (AdamW / AM-AdamW) "
        "| AdamW final train loss |",
        "|---" * 8 + "|",
    ]
    for size, group in by_size(runs).items():
        for reg in sorted({regime(r) for r in group}, key=lambda x: x == "no warmup"):
            pair = {r.method: r for r in group if regime(r) == reg}
            if not {"adamw", "am_adamw"} <= set(pair):
                continue
            adamw, am = pair["adamw"], pair["am_adamw"]
            t_adamw, t_am = time_per_iteration(adamw), time_per_iteration(am)
            ratio, steps = speedup(adamw, am)
            lines.append(
                f"| {size} | {reg} | {t_adamw:.4f} | {t_am:.4f} | "
                f"{100 * (t_am / t_adamw - 1):+.1f} | {ratio} | {steps} | "
                f"{num(final_train_loss(adamw))} |"
            )
    lines += [
        "",
        "Times: median seconds per update of each run's wall clock (`time_s`), evaluation "
        "intervals left out; the machine is in each run's meta.json. The runs ran one after "
        "another, so on a shared machine the overhead column also measures how the load changed "
        "between runs: it measures the optimizer only on a quiet machine.",
        f"Warmup regimes: {sorted({warmup(r) for r in runs}, reverse=True)} warmup steps.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table2.md").write_text("\n".join(lines) + "\n")
