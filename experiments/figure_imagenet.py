"""ImageNet (paper app. F.4): ResNet-18, AM-MGD vs MGD with the step schedule.

Train loss (epoch mean, log scale), top-1 validation accuracy and AM-MGD's beta_t vs epoch.
Writes figure_imagenet.png|pdf and table.md.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from experiments import load_runs
from experiments._vision import (
    STAND_IN_BANNER,
    accuracy_table_rows,
    any_stand_in,
    draw_training,
    group_by_setting,
)


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    groups = group_by_setting(runs)
    banner = f"\n{STAND_IN_BANNER}" if any_stand_in(runs) else ""
    out_dir.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(13, 3.2 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), 3, squeeze=False)
    for row, (name, group) in zip(axes, groups.items()):
        draw_training(row, group, name)
        row[1].set_ylabel("top-1 validation accuracy (%)")
    fig.suptitle(f"ImageNet, app. F.4 ({scale} scale): AM-MGD vs MGD{banner}", fontsize=10)
    fig.savefig(out_dir / "figure_imagenet.png", dpi=130)
    fig.savefig(out_dir / "figure_imagenet.pdf")

    table = [
        f"# ImageNet, app. F.4 ({scale} scale): AM-MGD vs MGD",
        "",
        *([f"**{STAND_IN_BANNER}**", ""] if banner else []),
        "Top-1 validation accuracy (%) at the end and the best over the per-epoch evaluations;",
        "train loss: mean of the last epoch's logged batch losses.",
        "",
        "| setting | method | final top-1 | best top-1 | final train loss |",
        "|---|---|---|---|---|",
    ]
    for name, group in groups.items():
        table += accuracy_table_rows(name, group)
    (out_dir / "table.md").write_text("\n".join(table) + "\n")
