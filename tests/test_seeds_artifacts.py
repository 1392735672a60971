"""The stochastic artifacts over seeds (issue 14): the numbers per cell (mean ± std over the
seeds), the paired differences (same seed) with their 95 % t-intervals, curves with a band, and
diverged runs marked. The artifacts are built from real 2-seed smoke runs and their cells are
recomputed here from the runs' own summary.json / metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from suite_helpers import compose_config

from amm.trainer import train
from experiments import Run, load_runs
from experiments._llm import time_per_iteration
from experiments._stats import SeedValues, band, cell, difference_cell, draw_band, per_seed

T_975_DF1 = 12.706204736174698  # the 97.5 % quantile of Student's t with 1 degree of freedom


def summary(run_dir: Path) -> dict[str, object]:
    return json.loads((run_dir / "summary.json").read_text())


def accuracy(run_dir: Path) -> float:
    """Final eval accuracy (%) of a run, from its summary."""
    return 100 * float(summary(run_dir)["eval_accuracy"])  # type: ignore[arg-type]


def table_row(text: str, start: str) -> list[str]:
    """The cells of the first markdown row that starts with ``start`` (its first cells)."""
    row = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in row.strip().strip("|").split("|")]


def mean_std(a: float, b: float, digits: int = 3) -> str:
    """What a cell of two seeds must say, computed here without the artifact's code."""
    mean, std = (a + b) / 2, abs(a - b) / math.sqrt(2)
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n=2)"


def paired(diffs: tuple[float, float], digits: int = 3) -> str:
    """The paired-difference cell of two seeds: mean [mean ∓ t * sd / sqrt(2)] (n=2)."""
    mean, sd = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / math.sqrt(2)
    half = T_975_DF1 * sd / math.sqrt(2)
    return f"{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}] (n=2)"


# ---- the helpers, on numbers ------------------------------------------------------------------


def test_band_is_the_mean_and_range_over_the_common_steps() -> None:
    a = (np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
    b = (np.array([1, 2, 3, 4]), np.array([3.0, 4.0, 5.0, 6.0]))  # step 4: only b has it
    got = band([a, b])
    assert got.n == 2 and got.x.tolist() == [1, 2, 3]
    assert got.mean.tolist() == [2.0, 3.0, 4.0]
    assert got.lo.tolist() == [1.0, 2.0, 3.0] and got.hi.tolist() == [3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="no curves"):
        band([])


def test_draw_band_leaves_out_diverged_seeds_and_says_so() -> None:
    ax = Figure().subplots()
    curve = (np.array([1, 2]), np.array([1.0, 2.0]))
    draw_band(ax, [curve, curve], diverged=1, label="AM-MGD")
    (line,) = ax.lines
    assert line.get_label() == "AM-MGD (1 of 3 seeds diverged, not drawn)"
    assert len(ax.collections) == 1  # the band
    ax = Figure().subplots()
    draw_band(ax, [curve], label="MGD")  # one seed: its curve, no band
    assert ax.lines[0].get_label() == "MGD" and not ax.collections


def test_cells_say_diverged_and_need_the_same_seeds() -> None:
    assert cell({0: 1.0, 1: 3.0}) == mean_std(1.0, 3.0)
    one_diverged = SeedValues({0: 1.0, 1: math.nan, 2: 2.0}, diverged=[1])
    assert cell(one_diverged) == "diverged (1 of 3 seeds)"
    # a NaN of a run that did not diverge is a value it did not measure, not a divergence
    assert cell({0: 1.0, 1: math.nan}) == "not measured (1 of 2 seeds)"
    assert difference_cell({0: 3.0, 1: 5.0}, {0: 1.0, 1: 2.0}) == paired((2.0, 3.0))
    baseline = SeedValues({0: 1.0, 1: 1.0, 2: 1.0})
    assert difference_cell(one_diverged, baseline) == "diverged (1 of 3 seeds)"
    assert difference_cell(baseline, one_diverged) == "diverged (1 of 3 seeds)"
    with pytest.raises(ValueError, match="same seeds"):
        difference_cell({0: 1.0, 1: 2.0}, {0: 1.0})


def test_two_runs_of_one_seed_in_a_cell_are_an_error(tmp_path: Path) -> None:
    cfg = compose_config(["trainer.seed=3"])
    runs = [Run(tmp_path / name, cfg, [], {"loss": 1.0}) for name in ("a", "b")]
    with pytest.raises(ValueError, match=r"two runs of seed 3 in one table cell: .*a and .*b"):
        per_seed(runs, lambda r: 1.0)
    diverged = Run(tmp_path / "c", cfg, [], {"loss": 1.0, "diverged": True})
    values = per_seed([diverged], lambda r: 1.0)
    assert math.isnan(values[3]) and values.diverged == {3}


# ---- artifacts from real 2-seed smoke runs --------------------------------------------------

LLM = [
    "experiment=figure5",
    "scale=smoke",
    "model=llama_4m",  # 8 steps: table2's time per step leaves out the first 5
    "trainer.progress=false",
    "logger=none",
]


@pytest.fixture(scope="module")
def llm_runs(tmp_path_factory: pytest.TempPathFactory, c4_files: dict[str, str]) -> list[Path]:
    """AdamW and AM-AdamW, warmup 2 and none, seeds 0 and 1: 8 runs of 8 steps."""
    root = tmp_path_factory.mktemp("llm")
    run_dirs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AMM_OFFLINE", "1")
        patch.setenv("AMM_CACHE_DIR", str(root / "amm-cache"))
        for opt in ("adamw", "am_adamw"):
            for warmup in (2, 0):
                for seed in (0, 1):
                    run_dir = root / f"{opt}-w{warmup}-s{seed}"
                    overrides = [
                        *LLM,
                        f"method={opt}",
                        f"optimizer={opt}",
                        f"trainer.scheduler.warmup_steps={warmup}",
                        f"trainer.seed={seed}",
                    ]
                    train(compose_config(overrides), run_dir)
                    run_dirs.append(run_dir)
    return run_dirs


@pytest.mark.slow
def test_llm_artifacts_report_seed_means_and_paired_differences(
    llm_runs: list[Path], tmp_path: Path
) -> None:
    from experiments import figure5, table2, table_llm

    def runs(opt: str, warmup: int) -> list[Path]:
        return [d for d in llm_runs if d.name.startswith(f"{opt}-w{warmup}-")]

    def evals(opt: str, warmup: int) -> tuple[float, float]:
        a, b = (float(summary(d)["eval_loss"]) for d in runs(opt, warmup))  # type: ignore[arg-type]
        return a, b

    # the seeds differ (init and data order), so the spread is real
    assert evals("adamw", 2)[0] != evals("adamw", 2)[1]

    figure5.make(llm_runs, tmp_path, "smoke")
    text = (tmp_path / "table.md").read_text()
    assert "mean ± standard deviation over the n seeds" in text and "Seeds: 0, 1 (n = 2" in text
    row = table_row(text, "| 4M | AdamW | 2 |")
    assert row[5] == mean_std(*evals("adamw", 2))
    assert row[6] == f"{math.exp(sum(evals('adamw', 2)) / 2):.1f}"  # exp of the mean loss
    am, adamw = evals("am_adamw", 0), evals("adamw", 0)
    row = table_row(text, "| 4M | no warmup |")
    assert row[2] == paired((am[0] - adamw[0], am[1] - adamw[1]))
    entropy = {summary(d)["eval_unigram_entropy"] for d in llm_runs}
    assert len(entropy) == 1  # one eval set
    line = f"Unigram entropy of the eval tokens: {entropy.pop():.2f} nats"
    assert line in text
    assert (tmp_path / "figure5.png").stat().st_size > 10_000

    table_llm.make(llm_runs, tmp_path, "smoke")
    text = (tmp_path / "table_llm.md").read_text()
    assert line in text
    header = table_row(text, "| model |")
    cells = dict(zip(header, table_row(text, "| 4M |")))
    loss = evals("am_adamw", 2)
    assert cells["AM-AdamW, warmup 2"] == f"{math.exp(sum(loss) / 2):.1f} / {mean_std(*loss)}"
    header = table_row(text.split("Paired differences")[1], "| model |")
    cells = dict(zip(header, table_row(text.split("Paired differences")[1], "| 4M |")))
    am, adamw = evals("am_adamw", 0), evals("adamw", 2)  # AM without warmup vs AdamW with
    assert cells["AM-AdamW no warmup − AdamW warmup 2"] == paired(
        (am[0] - adamw[0], am[1] - adamw[1])
    )

    table2.make(llm_runs, tmp_path, "smoke")
    text = (tmp_path / "table2.md").read_text()
    assert "how the machine's speed changed" in text  # the note about the machine stays
    # the negative control: AdamW with warmup 0 over warmup 2, the same arithmetic per step
    no_warmup, warmup_2 = (
        [time_per_iteration(r) for r in load_runs(runs("adamw", w))] for w in (0, 2)
    )
    drift = tuple(100 * (no_warmup[s] / warmup_2[s] - 1) for s in (0, 1))
    assert f"4M: AdamW warmup 0 / warmup 2 − 1 (%): {paired(drift, digits=1)}" in text  # type: ignore[arg-type]
    row = table_row(text, "| 4M | no warmup |")
    t = {
        opt: [1e3 * time_per_iteration(r) for r in load_runs(runs(opt, 0))]
        for opt in ("adamw", "am_adamw")
    }
    assert row[2] == mean_std(*t["adamw"], digits=2)
    overhead = tuple(100 * (t["am_adamw"][s] / t["adamw"][s] - 1) for s in (0, 1))
    assert row[4] == paired(overhead, digits=1)  # type: ignore[arg-type]


VISION = [
    "experiment=figure7",
    "scale=smoke",
    "dataset=cifar10",
    "dataset.stand_in=true",
    "model=resnet_small",
    "trainer.max_steps=5",
    "trainer.eval_every=5",
    "trainer.progress=false",
    "logger=none",
]
METHODS = {"am_mgd": ["optimizer=am_sgd", "optimizer.nonfinite=off"], "mgd": ["optimizer=sgd"]}


@pytest.mark.slow
def test_figure7_marks_diverged_seeds_and_counts_the_working_range(
    tmp_path: Path, offline: None
) -> None:
    """lr 0.1 trains; lr 1e30 diverges (NaN loss) in both methods: its cells say so, it is not
    drawn as a point, and it does not count in the working range."""
    from experiments import figure7

    run_dirs = []
    for label, options in METHODS.items():
        for lr in ("0.1", "1e30"):
            for seed in (0, 1):
                run_dir = tmp_path / "runs" / f"{label}-lr{lr}-s{seed}"
                overrides = [*VISION, f"method={label}", *options, f"optimizer.lr={lr}"]
                train(compose_config([*overrides, f"trainer.seed={seed}"]), run_dir)
                run_dirs.append(run_dir)
    diverged = [d for d in run_dirs if summary(d)["diverged"]]
    assert sorted(d.name for d in diverged) == sorted(d.name for d in run_dirs if "1e30" in d.name)

    figure7.make(run_dirs, tmp_path / "out", "smoke")
    text = (tmp_path / "out" / "table.md").read_text()
    section = text.split("## 7c")[1]
    row = table_row(section, "| 1e+30 |")
    assert row[1:4] == ["diverged (2 of 2 seeds)"] * 3
    row = table_row(section, "| 0.1 |")
    acc = {
        label: [accuracy(tmp_path / "runs" / f"{label}-lr0.1-s{s}") for s in (0, 1)]
        for label in METHODS
    }
    assert row[1] == mean_std(*acc["am_mgd"], digits=2)
    assert row[3] == paired(
        (acc["am_mgd"][0] - acc["mgd"][0], acc["am_mgd"][1] - acc["mgd"][1]), digits=2
    )
    # working range: lr 0.1 works when its accuracy reaches 90 % of the grid's best run (the
    # diverged lr 1e30 has none), lr 1e30 never
    threshold = 0.9 * max(acc["am_mgd"] + acc["mgd"])
    works = [float(a >= threshold) for a in acc["am_mgd"]]
    working = table_row(section.split("Working range")[1], "| AM-MGD |")
    assert f"at least 90% of the grid's best run (≥ {threshold:.2f} %)" in section
    assert working[1] == mean_std(*works, digits=2)
    for name in ("figure7", "figure7c_curves"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 10_000
