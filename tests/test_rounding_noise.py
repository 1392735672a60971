"""Convex figures do not draw rounding noise (issue 14, item 6).

A real run: AM-MGD on heart_scale at lr = 8/L, which reaches f* to rounding within 300
iterations (its β_t then jumps on noise: the "solid red block" of the old figure). Its curve
stops, and its β_t turns grey, at the first iteration whose f − f* is at most
ROUNDING_K x eps x |f*|; the tables say "≤ rounding" from there on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from suite_helpers import run_amm, subprocess_env

from experiments import Run, figure3, load_runs
from experiments._stepsize import (
    ROUNDED,
    ROUNDING_K,
    cell,
    gap_curve,
    rounded_from,
    rounding_level,
    score,
)

STEPS = 301  # iterations 0..300


@pytest.fixture(scope="module")
def heart_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("heart")
    run_dir = tmp / "run"
    run_amm(
        "experiment=figure3",
        "scale=smoke",
        "method=am_mgd",
        "dataset.name=heart_scale",
        "optimizer.plane_bias=exact",
        "optimizer.lr_scale=8",
        f"trainer.max_steps={STEPS}",
        "logger.mode=disabled",
        f"hydra.run.dir={run_dir}",
        cwd=tmp,
        env=subprocess_env(tmp, AMM_DATA_DIR=str(shared_data)),
    )
    (run,) = load_runs([run_dir])
    return run


def expected_cut(run_dir: Path) -> tuple[int, float]:
    """(first iteration with f − f* <= 8 eps |f*|, that level), read from the run's files."""
    fstar = json.loads((run_dir / "summary.json").read_text())["fstar"]
    level = 8 * np.finfo(np.float64).eps * abs(fstar)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r["step"] - 1 for r in records if r["objective_gap"] <= level)
    return first, level


def test_curve_and_tables_stop_at_the_rounding_level(heart_run: Run) -> None:
    cut, level = expected_cut(heart_run.dir)
    assert ROUNDING_K == 8 and rounding_level(heart_run) == pytest.approx(level, rel=1e-12)
    assert 0 < cut < STEPS - 1  # the run reaches it, with noise iterations after it
    assert rounded_from(heart_run) == cut
    it, gap = gap_curve(heart_run)
    assert it[-1] == cut and np.all(gap[:-1] > level) and gap[-1] <= level
    # past the cut the gap is rounding noise: it stays at the level's scale
    all_it, all_gap = heart_run.series("objective_gap")
    assert np.abs(all_gap[all_it > cut]).max() <= 2 * level
    # tables: a number before the cut, "≤ rounding" from it on; comparisons tie at the level
    assert cell(heart_run, cut - 1) == f"{gap_at_iteration(heart_run, cut - 1):.2e}"
    assert cell(heart_run, cut) == ROUNDED and cell(heart_run, STEPS - 1) == ROUNDED
    assert score(heart_run, STEPS - 1) == rounding_level(heart_run)


def gap_at_iteration(run: Run, t: int) -> float:
    it, gap = run.series("objective_gap")
    return float(gap[it == t][0])


def test_figure3_stops_the_curve_and_greys_beta(heart_run: Run, tmp_path: Path) -> None:
    cut, _ = expected_cut(heart_run.dir)
    fig = Figure()
    ax, ax_beta = fig.subplots(2)
    figure3.draw_gap(ax, heart_run, color="tab:red")
    figure3.draw_betas(ax_beta, heart_run)
    curve, marker = ax.get_lines()
    assert curve.get_xdata()[-1] == cut and list(marker.get_xdata()) == [cut]
    assert marker.get_marker() == "v"
    red, grey = ax_beta.get_lines()
    assert red.get_color() == "tab:red" and red.get_xdata()[-1] == cut
    assert grey.get_color() == "0.6" and grey.get_xdata()[0] == cut + 1
    assert np.min(grey.get_ydata()) < 0.9  # β_t jumping on noise: greyed, not drawn in red

    # the artifact end to end: stepsize.md says "≤ rounding" and that the runs are deterministic
    figure3.make([heart_run.dir], tmp_path, "smoke")
    stepsize = (tmp_path / "stepsize.md").read_text()
    assert f"| heart_scale | 8 | {ROUNDED} |" in stepsize
    for name in ("stepsize.md", "table.md"):
        assert figure3.DETERMINISTIC in (tmp_path / name).read_text()


def synthetic(gaps: list[float], fstar: float, dtype: str = "float64") -> Run:
    cfg = OmegaConf.create({"method": "mgd", "dataset": {"dtype": dtype}})
    records = [{"step": i + 1, "loss": fstar + g, "objective_gap": g} for i, g in enumerate(gaps)]
    return Run(Path("run"), cfg, records, {})


def test_f_star_zero_has_no_rounding_level() -> None:
    """figure1's quadratic: f* = 0 exactly and the gap is f itself, computed without
    cancellation, so tiny gaps are real values and no curve is cut."""
    run = synthetic([1.0, 1e-20, 1e-30], fstar=0.0)
    assert rounding_level(run) == 0.0 and rounded_from(run) is None
    assert cell(run, 2) == "1.00e-30"
    no_loss = Run(Path("run"), OmegaConf.create({}), [{"step": 1, "objective_gap": 1e-20}], {})
    assert rounding_level(no_loss) == 0.0  # f* unknown: nothing is called rounding


def test_level_follows_the_float_type() -> None:
    run = synthetic([0.5, 1e-7, 1e-9], fstar=0.25, dtype="float32")
    assert rounding_level(run) == pytest.approx(8 * np.finfo(np.float32).eps * 0.25)
    assert rounded_from(run) == 1 and not math.isnan(score(run, 2))
