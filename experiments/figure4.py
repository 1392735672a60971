"""Figure 4 (paper sec. 4.2): image classification, AM-MGD vs MGD.

One row per setting (model / data set): train loss (mean over each epoch's logged batches, log
scale), test accuracy and AM-MGD's beta_t vs epoch, each the mean over the seeds with a min–max
band. Writes figure4.png|pdf, figure4_beta.png|pdf (the appendix plot of the beta behaviour:
every step's beta_t, its epoch mean and the learning rate, one panel per setting) and table.md
(final and best test accuracy, final train loss: mean ± std over the seeds, and the paired
AM-MGD − MGD differences).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from experiments._figures import save_figure
from experiments._vision import (
    by_method,
    curves,
    diverged,
    draw_betas,
    make_training_artifact,
)

NOTES = [
    "Accuracy (%) on the eval data (CIFAR: test set; MNIST: the held-out validation images)",
    "after the last step and the best over the per-epoch evaluations; train loss: mean of",
    "the last epoch's logged batch losses.",
]


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    groups, banner = make_training_artifact(
        run_dirs,
        out_dir,
        "figure4",
        f"Figure 4 ({scale} scale): AM-MGD vs MGD (dampening 0.9)",
        NOTES,
    )

    # Appendix: the behaviour of beta_t against the learning-rate schedule.
    fig = Figure(figsize=(6.5, 2.6 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (name, group) in zip(axes, groups.items()):
        am = [curves(r) for r in by_method(group).get("AM-MGD", []) if not diverged(r)]
        if am:
            draw_betas(ax, am, label="β_t (epoch mean; band: min–max over seeds)")
            ax_lr = ax.twinx()  # the schedule is the same for every seed
            ax_lr.plot(am[0].lr_x, am[0].lr, color="gray", ls=":", label="learning rate")
            ax_lr.set(ylabel="learning rate")
        ax.set(title=name, xlabel="epoch")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"AM-MGD β_t per step and epoch mean ({scale} scale){banner}", fontsize=10)
    save_figure(fig, out_dir, "figure4_beta")
