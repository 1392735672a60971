"""The character-level Shakespeare testbed against numbers we did not make: nanoGPT's CPU example.

AdamW with nanoGPT's README CPU recipe (configs/experiment/shakespeare_baseline.yaml): the final
validation loss per seed, their mean with its 95 % interval, and beside it nanoGPT's README
value (1.88) and what re-runs of the same README command on nanoGPT's current code report
(1.66). The README's number is older than the code: public re-runs of its exact command log a
validation loss of 1.66 after 2,000 iterations (1.6616 at iteration 1750 in one run log; training
loss 1.47-1.70 at iteration 2000 in three logs), so agreement is judged against the re-runs and
both are shown. Writes baseline.md, shakespeare_baseline.png and .pdf.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from experiments import load_runs
from experiments._figures import save_figure
from experiments._llm import eval_loss, final_eval_loss
from experiments._stats import estimate, per_seed

#: nanoGPT's README: its CPU example "gets us a loss of only 1.88" (one run, an older version).
NANOGPT_README = 1.88
#: The same README command re-run on nanoGPT's current code (public run logs, one run each):
#: validation loss 1.66 after 2,000 iterations.
NANOGPT_RERUN = 1.66
#: How close is close: the reference is one run with two digits, and our blocks are LLaMA's, not
#: GPT-2's; a mean outside this band is investigated before any comparison on the testbed.
AGREEMENT = 0.05


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = sorted(load_runs(run_dirs), key=lambda r: r.seed)
    losses = per_seed(runs, final_eval_loss)
    est = estimate(losses.values())
    steps = max(int(r.cfg.trainer.max_steps) for r in runs)
    close = abs(est.mean - NANOGPT_RERUN) <= AGREEMENT
    lines = [
        f"# The Shakespeare testbed ({scale} scale): AdamW, nanoGPT's CPU recipe, {steps} steps",
        "",
        "| | validation loss (nats per character) |",
        "|---|---|",
        f"| nanoGPT README (one run, GPT-2 blocks, older code) | about {NANOGPT_README:.2f} |",
        f"| the README command re-run on nanoGPT's current code (public logs) | "
        f"{NANOGPT_RERUN:.2f} |",
        *(f"| ours, seed {s} (LLaMA blocks) | {v:.4f} |" for s, v in sorted(losses.items())),
        f"| ours, mean ± std | {est.format(4)} |",
        f"| ours, 95 % interval of the mean | [{est.lo:.4f}, {est.hi:.4f}] |",
        "",
        f"Ours − the re-runs: {est.mean - NANOGPT_RERUN:+.3f} nats; ours − the README: "
        f"{est.mean - NANOGPT_README:+.3f} nats. "
        + (
            f"Within ±{AGREEMENT:g} of what nanoGPT's code reaches with this command, so the "
            "data, the recipe and the evaluation are wired as nanoGPT's. The README's 1.88 "
            "predates its code: re-runs of the same command reach 1.66."
            if close
            else f"Outside ±{AGREEMENT:g} of what nanoGPT's code reaches with this command: "
            "investigate before comparing optimizers on this testbed."
        ),
        "",
        f"Evaluation: {runs[0].summary.get('eval_unigram_entropy', float('nan')):.3f} nats is "
        "the unigram entropy of the evaluated characters (a model that ignores the context).",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "baseline.md").write_text("\n".join(lines) + "\n")

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for r in runs:
        x, y = eval_loss(r)
        ax.plot(x, y, lw=1.2, label=f"ours, seed {r.seed}")
    ax.scatter([steps], [NANOGPT_README], color="k", marker="*", s=90, zorder=3,
               label=f"nanoGPT README: {NANOGPT_README:.2f}")  # fmt: skip
    ax.scatter([steps], [NANOGPT_RERUN], color="k", marker="x", s=70, zorder=3,
               label=f"README command re-run: {NANOGPT_RERUN:.2f}")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats / character)")
    ax.set_title("Character-level Shakespeare, AdamW (nanoGPT's CPU recipe)")
    ax.legend()
    save_figure(fig, out_dir, "shakespeare_baseline")
