"""ImageNet (paper app. F.4): ResNet-18, AM-MGD vs MGD with the step schedule.

Train loss (epoch mean, log scale), top-1 validation accuracy and AM-MGD's beta_t vs epoch, the
mean over the seeds with a min–max band. Writes figure_imagenet.png|pdf and table.md (mean ± std
over the seeds, and the paired AM-MGD − MGD differences).
"""

from __future__ import annotations

from pathlib import Path

from experiments._vision import make_training_artifact

NOTES = [
    "Top-1 validation accuracy (%) at the end and the best over the per-epoch evaluations;",
    "train loss: mean of the last epoch's logged batch losses.",
]


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    make_training_artifact(
        run_dirs,
        out_dir,
        "figure_imagenet",
        f"ImageNet, app. F.4 ({scale} scale): AM-MGD vs MGD",
        NOTES,
        columns=("final top-1", "best top-1"),
        accuracy_label="top-1 validation accuracy (%)",
    )
