"""Figure 4 (paper sec. 4.2): image classification, AM-MGD vs MGD.

One row per setting (model / data set): train loss (mean over each epoch's logged batches, log
scale), test accuracy and AM-MGD's beta_t vs epoch. Writes figure4.png|pdf, figure4_beta.png|pdf
(the appendix plot of the beta behaviour: every step's beta_t, its epoch mean and the learning
rate, one panel per setting) and table.md (final and best test accuracy, final train loss).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from experiments._vision import (
    curves,
    draw_beta,
    load_settings,
    method,
    save_training_figure,
    write_accuracy_table,
)


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    groups, banner = load_settings(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)

    save_training_figure(
        groups,
        out_dir,
        "figure4",
        f"Figure 4 ({scale} scale): AM-MGD vs MGD (dampening 0.9){banner}",
    )

    # Appendix: the behaviour of beta_t against the learning-rate schedule.
    fig = Figure(figsize=(6.5, 2.6 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (name, group) in zip(axes, groups.items()):
        for r in group:
            if method(r) != "AM-MGD":
                continue
            c = curves(r)
            draw_beta(ax, c, label="β_t (epoch mean)")
            ax_lr = ax.twinx()
            ax_lr.plot(c.lr_x, c.lr, color="gray", ls=":", label="learning rate")
            ax_lr.set(ylabel="learning rate")
        ax.set(title=name, xlabel="epoch")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"AM-MGD β_t per step and epoch mean ({scale} scale){banner}", fontsize=10)
    fig.savefig(out_dir / "figure4_beta.png", dpi=130)
    fig.savefig(out_dir / "figure4_beta.pdf")

    notes = [
        "Accuracy (%) on the eval data (CIFAR: test set; MNIST: the held-out validation images)",
        "after the last step and the best over the per-epoch evaluations; train loss: mean of",
        "the last epoch's logged batch losses.",
    ]
    write_accuracy_table(
        out_dir / "table.md",
        f"Figure 4 ({scale} scale): AM-MGD vs MGD",
        bool(banner),
        notes,
        "final test acc | best test acc",
        groups,
    )
