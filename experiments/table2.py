"""Table 2 (paper app. D.4): AM-AdamW's cost per iteration and its convergence speedup.

Per model size and warmup regime: the median wall-clock time per iteration of each run
(evaluation steps left out), then mean ± std over the seeds for AdamW and AM-AdamW; AM-AdamW's
overhead in percent, paired by seed (AM-AdamW / AdamW − 1 of the same seed) with its 95 %
interval; and the convergence speedup = (steps AdamW needs to reach its final training loss) /
(steps AM-AdamW needs to reach the same loss), per seed, on the smoothed training loss of
figure5.py. When AM-AdamW never reaches that loss the speedup is below AdamW's steps / the run
length ("<x"). Writes table2.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments import Run, load_runs
from experiments._llm import (
    by_cell,
    by_size,
    clock_drift,
    final_train_loss,
    regime,
    steps_to_reach,
    time_per_iteration,
    warmup,
)
from experiments._stats import SPREAD_NOTE, cell, combine, interval_cell, per_seed, seeds_note


def speedup(adamw: Run, am: Run) -> tuple[float | str, str]:
    """(speedup: a number, or a text when it is a bound or undefined; the steps behind it)."""
    target = final_train_loss(adamw)
    n_adamw = steps_to_reach(adamw, target)
    if n_adamw is None:  # AdamW diverged (NaN loss)
        return "–", "AdamW diverged"
    n_am = steps_to_reach(am, target)
    if n_am is None:
        total = int(am.summary.get("step", 0))
        return f"<{n_adamw / total:.2f}", f"{n_adamw} / not reached in {total}"
    return n_adamw / n_am, f"{n_adamw} / {n_am}"


def speedup_cells(adamw: list[Run], am: list[Run]) -> tuple[str, str]:
    """The speedup over the seeds (mean ± std when every seed has a number, else each seed's
    value) and each seed's steps (AdamW / AM-AdamW)."""
    am_by_seed = {r.seed: r for r in am}
    per = {r.seed: speedup(r, am_by_seed[r.seed]) for r in adamw if r.seed in am_by_seed}
    ratios = {s: v for s, (v, _) in per.items() if isinstance(v, float)}
    if len(ratios) == len(per):
        ratio = cell(ratios, 2)
    else:
        ratio = "; ".join(
            f"seed {s}: {v if isinstance(v, str) else f'{v:.2f}'}" for s, (v, _) in per.items()
        )
    steps = "; ".join(f"seed {s}: {text}" for s, (_, text) in per.items())
    return ratio, steps


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    lines = [
        f"# Table 2 ({scale} scale): time per iteration and convergence speedup of AM-AdamW",
        "",
        SPREAD_NOTE,
        seeds_note(runs),
        "",
        "| model | schedule | time/iter AdamW (ms) | time/iter AM-AdamW (ms) "
        "| AM-AdamW overhead (%, paired) | convergence speedup (AM-AdamW/AdamW) "
        "| steps to AdamW's final loss (AdamW / AM-AdamW) | AdamW final train loss |",
        "|---" * 8 + "|",
    ]
    for size, group in by_size(runs).items():
        cells = by_cell(group)
        for w in sorted({w for _, _, w in cells}, reverse=True):
            adamw, am = cells.get((size, "adamw", w)), cells.get((size, "am_adamw", w))
            if not (adamw and am):
                continue
            t_adamw = per_seed(adamw, lambda r: 1e3 * time_per_iteration(r))
            t_am = per_seed(am, lambda r: 1e3 * time_per_iteration(r))
            overhead = combine(t_am, t_adamw, lambda am_t, adamw_t: 100 * (am_t / adamw_t - 1))
            ratio, steps = speedup_cells(adamw, am)
            lines.append(
                f"| {size} | {regime(adamw[0])} | {cell(t_adamw, 2)} | {cell(t_am, 2)} | "
                f"{interval_cell(overhead, 1)} | {ratio} | {steps} | "
                f"{cell(per_seed(adamw, final_train_loss))} |"
            )
    controls = []
    for size, group in by_size(runs).items():
        cells = by_cell(group)
        adamw_by_warmup = {w: rs for (_, m, w), rs in cells.items() if m == "adamw"}
        drift = clock_drift(adamw_by_warmup)
        if drift is not None:
            first, second = sorted(adamw_by_warmup)[:2]
            controls.append(
                f"{size}: AdamW warmup {first} / warmup {second} − 1 (%): "
                f"{drift.format_interval(1)}"
            )
    lines += [
        "",
        "Times: median milliseconds per update of each run's wall clock (`time_s`), evaluation "
        "intervals left out, then mean ± std over the seeds; the machine is in each run's "
        "meta.json. The overhead is AM-AdamW's time / AdamW's of the same seed − 1. The runs ran "
        "one after another, so the overhead column also measures how the machine's speed "
        "changed between runs.",
        *(
            [
                "Negative control (the same arithmetic per step, in separate runs, seed by seed): "
                + "; ".join(controls)
                + ". An overhead smaller than this drift is not measured by these runs; "
                "`make bench` times the optimizers interleaved (results/bench_train/)."
            ]
            if controls
            else []
        ),
        f"Warmup regimes: {sorted({warmup(r) for r in runs}, reverse=True)} warmup steps.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table2.md").write_text("\n".join(lines) + "\n")
