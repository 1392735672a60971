"""The claims report (experiments/claims.py): rows computed from real runs, the verdict rules,
and the rows of an artifact that was not made at this scale."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from suite_helpers import compose_config, summary

from amm.trainer import train
from experiments import Run, load_runs
from experiments._stats import Estimate, estimate, verdict
from experiments.claims import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Row,
    claim_overhead,
    clock_drift,
    clock_resolves,
    combine_verdicts,
    compare,
    main,
    outcome,
    sign_test,
)

SEEDS = (0, 1)
VISION = ["dataset=cifar10", "dataset.stand_in=true", "model=resnet_small", "trainer.max_steps=5"]
VISION_BLOCKS = {"am_mgd": ["optimizer=am_sgd"], "mgd": ["optimizer=sgd"]}
CONVEX = ["dataset.name=breast_cancer", "trainer.max_steps=31"]
CONVEX_BLOCKS = {
    "am_mgd": ["optimizer=am_sgd", "optimizer.plane_bias=exact", "optimizer.nonfinite=off"],
    "mgd": ["optimizer=sgd"],
}


def make_runs(root: Path, artifact: str, jobs: list[list[str]]) -> None:
    """Train each job in ``root/runs/<artifact>/smoke/<i>`` and write the artifact's
    provenance.json listing them, as ``amm.reproduce`` does (run_dirs relative to root)."""
    run_dirs = []
    for i, job in enumerate(jobs):
        rel = f"runs/{artifact}/smoke/{i}"
        overrides = [f"experiment={artifact}", "scale=smoke", "logger=none", *job]
        train(compose_config([*overrides, "trainer.progress=false"]), root / rel, artifact)
        run_dirs.append(rel)
    out = root / "results" / artifact / "smoke"
    out.mkdir(parents=True)
    (out / "provenance.json").write_text(json.dumps({"run_dirs": run_dirs}))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Real 2-seed smoke runs of figure4 (stand-in CIFAR-10) and full-batch runs of figure3
    (breast_cancer, c = 1 and 4), then the report at smoke scale."""
    root = tmp_path_factory.mktemp("claims")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AMM_OFFLINE", "1")
        patch.setenv("AMM_CACHE_DIR", str(root / "amm-cache"))
        make_runs(
            root,
            "figure4",
            [
                [f"method={m}", *opt, *VISION, f"trainer.seed={s}"]
                for m, opt in VISION_BLOCKS.items()
                for s in SEEDS
            ],
        )
        make_runs(
            root,
            "figure3",
            [
                [f"method={m}", *opt, *CONVEX, f"optimizer.lr_scale={c}", *momentum]
                for m, opt in CONVEX_BLOCKS.items()
                for c in (1, 4)
                for momentum in (
                    [["optimizer.momentum=0.9"], ["optimizer.momentum=0.5"]] if m == "mgd" else [[]]
                )
            ],
        )
    out = main(["--scale", "smoke", "--results-dir", str(root / "results")])
    assert out == root / "results" / "claims" / "smoke" / "CLAIMS.md"
    return root, out.read_text()


def row(text: str, claim_start: str) -> list[str]:
    """The cells of the report's row whose claim starts with ``claim_start``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if len(cells) == 6 and cells[1].startswith(claim_start):
            return cells
    raise AssertionError(f"no row for {claim_start!r} in:\n{text}")


def test_vision_row_is_the_paired_difference_of_the_runs(report: tuple[Path, str]) -> None:
    root, text = report
    runs = load_runs(sorted((root / "runs" / "figure4" / "smoke").iterdir()))
    acc = {
        (r.method, r.seed): 100 * summary(r.dir)["eval_accuracy"] for r in runs
    }  # from summary.json, as written by the trainer
    expected = estimate(acc["am_mgd", s] - acc["mgd", s] for s in SEEDS)
    cells = row(text, "AM-MGD beats MGD in image classification")
    # generated stand-in data are a plumbing check: never evidence, whatever the interval
    assert (
        f"WRN-10-1 / CIFAR-10 (stand-in): {expected.format_interval()} → inconclusive" in cells[3]
    )
    assert cells[4] == "2 seeds × 1 setting(s)"
    assert cells[5] == f"**{INCONCLUSIVE}**"
    assert "[figure4](../../figure4/smoke)" in cells[2]  # a link to the artifact's folder


def test_convex_rows_compare_per_data_set_and_step_size(report: tuple[Path, str]) -> None:
    root, text = report
    runs = load_runs(sorted((root / "runs" / "figure3" / "smoke").iterdir()))
    gap = {
        (r.method, float(r.cfg.optimizer.get("momentum", 0)), float(r.cfg.optimizer.lr_scale)): max(
            summary(r.dir)["objective_gap"], 1e-12
        )
        for r in runs
    }  # f - f* at the last iterate
    cells = row(text, "AM-MGD beats MGD β=0.9 on logistic regression")
    assert cells[4] == "1 data sets"
    for c in (1.0, 4.0):
        won = outcome(gap["am_mgd", 0.0, c], gap["mgd", 0.9, c])
        test = sign_test([won])
        assert f"c={c:g}: {test.text()} → {test.verdict}" in cells[3]
    assert cells[5] == f"**{INCONCLUSIVE}**"  # one data set can decide nothing at 95 %
    # soft restarts: the rates are counted on the same runs (one problem)
    assert row(text, "β_t drops")[4] == "1 problems"


def test_a_missing_artifact_says_what_to_run(report: tuple[Path, str]) -> None:
    _, text = report
    for claim, artifact in [
        ("AM-AdamW beats AdamW", "figure5"),
        ("Per-layer β", "table5"),
        ("Restarts explain", "table6"),
        ("AM-MGD widens", "figure7"),
    ]:
        cells = row(text, claim)
        assert f"{artifact} not run at this scale: make {artifact} SCALE=smoke" in cells[3]
        assert cells[5] == f"**{INCONCLUSIVE}**"
    # the rule is stated once, at the top, before the rows
    assert text.count("## How a verdict is reached") == 1
    assert text.index("## How a verdict is reached") < text.index("## Claims")


def est(lo: float, hi: float, n: int = 3) -> Estimate:
    return Estimate((lo + hi) / 2, 1.0, n, lo, hi)


@pytest.mark.parametrize(
    ("diff", "better", "margin", "expected"),
    [
        (est(-0.3, -0.1), "lower", 0.0, SUPPORTED),  # AM's loss lower on the whole interval
        (est(0.1, 0.3), "lower", 0.0, NOT_SUPPORTED),
        (est(-0.1, 0.1), "lower", 0.0, INCONCLUSIVE),
        (est(0.5, 1.5), "higher", 0.0, SUPPORTED),  # accuracy up
        (est(0.0, 0.015), "lower", 0.02, SUPPORTED),  # "about as good" within 0.02 nats
        (est(0.03, 0.05), "lower", 0.02, NOT_SUPPORTED),
        (est(0.01, 0.03), "lower", 0.02, INCONCLUSIVE),
        (Estimate(-0.5, math.nan, 1, math.nan, math.nan), "lower", 0.0, INCONCLUSIVE),  # n = 1
        (Estimate(math.nan, math.nan, 3, math.nan, math.nan), "lower", 0.0, NOT_SUPPORTED),
    ],
)
def test_verdict_rule(diff: Estimate, better: str, margin: float, expected: str) -> None:
    assert verdict(diff, better=better, margin=margin) == expected


def test_a_comparison_is_paired_by_seed_and_stand_in_data_decide_nothing() -> None:
    am, base = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.9, 2: 1.9}
    found = compare("mnist", am, base, better="higher")
    assert found.diff == estimate([1.0, 1.1, 1.1]) and found.verdict == SUPPORTED
    assert compare("cifar10", am, base, better="higher", stand_in=True).verdict == INCONCLUSIVE
    # divergence (NaN): AM's counts against the claim; the baseline's alone, in every seed, for it
    nan = math.nan
    assert compare("x", {0: nan, 1: 1.0}, {0: 1.0, 1: 1.0}, better="lower").verdict == NOT_SUPPORTED
    assert compare("x", {0: 1.0, 1: 1.0}, {0: nan, 1: nan}, better="lower").verdict == SUPPORTED
    some = compare("x", {0: 1.0, 1: 1.0}, {0: nan, 1: 2.0}, better="lower")
    assert some.verdict == INCONCLUSIVE and "baseline diverged: seeds [0]" in some.text()
    with pytest.raises(ValueError, match="same seeds"):
        compare("mnist", am, {0: 0.0, 1: 0.5}, better="higher")


def test_sign_test_and_combination_rules() -> None:
    assert sign_test([1] * 7).verdict == SUPPORTED  # 7 of 7: [0.59, 1]
    assert sign_test([1] * 6 + [-1]).verdict == INCONCLUSIVE  # 6 of 7: [0.42, 1]
    assert sign_test([-1] * 7).verdict == NOT_SUPPORTED
    assert sign_test([0, 0]).verdict == INCONCLUSIVE  # only ties: nothing decided
    t = sign_test([1, 1, -1, 0])
    assert (t.ahead, t.behind, t.ties) == (2, 1, 1)
    assert re.search(r"2 of 3 \(ties: 1\)", t.text())
    # convex outcomes: 1 % tie band, factor for "competitive", divergence
    assert outcome(1.0, 1.005) == 0 and outcome(0.5, 1.0) == 1 and outcome(2.0, 1.0) == -1
    assert outcome(1.9, 1.0, factor=2.0) == 1 and outcome(2.1, 1.0, factor=2.0) == -1
    assert outcome(math.inf, 1.0) == -1 and outcome(1.0, math.inf) == 1
    assert outcome(math.inf, math.inf) == 0
    assert combine_verdicts([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine_verdicts([SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_verdicts([SUPPORTED, NOT_SUPPORTED]) == NOT_SUPPORTED
    assert combine_verdicts([]) == INCONCLUSIVE


def timed_run(method: str, warmup: int, seed: int, ms_per_step: float) -> Run:
    """An LLM run whose clock advances ``ms_per_step`` per update (steps 0..40)."""
    cfg = OmegaConf.create(
        {
            "method": method,
            "model": {"name": "1.8M", "hidden_size": 64, "num_hidden_layers": 2},
            "trainer": {"seed": seed, "scheduler": {"warmup_steps": warmup}},
        }
    )
    metrics = [{"step": t, "loss": 1.0, "time_s": t * ms_per_step / 1000} for t in range(41)]
    return Run(
        Path(f"/runs/{method}-{warmup}-{seed}"), cfg, metrics, {"loss": 1.0, "diverged": False}
    )


class TimedRuns:
    """The claims report's source of runs (``Sources.runs``), from runs made in memory."""

    def __init__(self, runs: list[Run]) -> None:
        self._runs = runs

    def runs(self, artifact: str) -> list[Run]:
        assert artifact == "table2"
        return self._runs


def overhead_row(adamw_ms: dict[int, list[float]], am_ms: dict[int, list[float]]) -> Row:
    """Claim 12 from runs timed at the given ms per step (warmup -> one value per seed)."""
    runs = [
        timed_run(method, w, seed, ms)
        for method, times in (("adamw", adamw_ms), ("am_adamw", am_ms))
        for w, per_seed_ms in times.items()
        for seed, ms in enumerate(per_seed_ms)
    ]
    return claim_overhead(TimedRuns(runs), Row("overhead", ["table2"]))  # type: ignore[arg-type]


def test_overhead_needs_a_clock_steadier_than_the_claim() -> None:
    # AdamW takes the same time in both warmup regimes (the control is within ±0.5 %), and
    # AM-AdamW 0.1 % longer: the clock resolves the claim, which is supported
    steady = {60: [100.0, 101.0, 99.0], 0: [100.0, 101.0, 99.0]}
    row = overhead_row(steady, {w: [t * 1.001 for t in ts] for w, ts in steady.items()})
    assert row.verdict == SUPPORTED, row.effect
    assert "within ±0.5 %" in row.effect
    # AM-AdamW 5 % longer on a steady clock: not supported
    row = overhead_row(steady, {w: [t * 1.05 for t in ts] for w, ts in steady.items()})
    assert row.verdict == NOT_SUPPORTED, row.effect
    # the same 5 %, but AdamW's two regimes (identical arithmetic) differ by 15-20 %: the
    # clock drifted between runs, so the wall clock decides nothing
    drifting = {60: [100.0, 101.0, 99.0], 0: [120.0, 116.0, 118.0]}
    row = overhead_row(drifting, {w: [t * 1.05 for t in ts] for w, ts in drifting.items()})
    assert row.verdict == INCONCLUSIVE, row.effect
    assert "AdamW warmup 0 over warmup 60: +" in row.effect and "beyond ±0.5 %" in row.effect


def test_clock_drift_is_the_paired_ratio_of_adamws_regimes() -> None:
    runs = {
        w: [timed_run("adamw", w, s, ms) for s, ms in enumerate(t)]
        for w, t in {0: [110.0, 120.0], 60: [100.0, 100.0]}.items()
    }
    drift = clock_drift(runs)
    assert drift is not None and drift.n == 2
    assert drift.mean == pytest.approx(15.0)  # (+10 % + 20 %) / 2, seed by seed
    assert clock_drift({60: runs[60]}) is None  # one regime: no control
    assert clock_resolves(None)
    assert clock_resolves(Estimate(0.1, 0.1, 3, -0.2, 0.4))
    assert not clock_resolves(Estimate(0.1, 0.1, 3, -0.2, 0.6))
    assert not clock_resolves(Estimate(0.1, math.nan, 1, math.nan, math.nan))  # one seed
