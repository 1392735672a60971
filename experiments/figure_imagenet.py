"""ImageNet (paper app. F.4): ResNet-18, AM-MGD vs MGD with the step schedule.

Train loss (epoch mean, log scale), top-1 validation accuracy and AM-MGD's beta_t vs epoch.
Writes figure_imagenet.png|pdf and table.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments._vision import (
    load_settings,
    save_training_figure,
    write_accuracy_table,
)


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    groups, banner = load_settings(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)

    title = f"ImageNet, app. F.4 ({scale} scale): AM-MGD vs MGD"
    save_training_figure(
        groups, out_dir, "figure_imagenet", f"{title}{banner}", "top-1 validation accuracy (%)"
    )
    notes = [
        "Top-1 validation accuracy (%) at the end and the best over the per-epoch evaluations;",
        "train loss: mean of the last epoch's logged batch losses.",
    ]
    write_accuracy_table(
        out_dir / "table.md", title, bool(banner), notes, "final top-1 | best top-1", groups
    )
