"""``python -m experiments.reproduce``: the smoke sweeps of Figures 1 and 3 end to end."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from suite_helpers import subprocess_env

from amm.config import CONFIG_DIR
from amm.provenance import git_state
from experiments import Run, load_runs
from experiments._stepsize import budgets, cell, diverged, gap_at, score
from experiments.reproduce import (
    Mode,
    composed_run_dir,
    expand_jobs,
    hydra_jobs,
    job_run_dirs,
    main,
    override_value,
    sweep_blocks,
)
from experiments.reproduce import reproduce as reproduce_artifact


def reproduce(artifact: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "experiments.reproduce", artifact, "--scale", "smoke", *extra]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def check_outputs(out_dir: Path, artifact: str, printed: str) -> list[Path]:
    """The figure, table, commands and provenance exist; returns the recorded run dirs."""
    png = out_dir / f"{artifact}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (out_dir / f"{artifact}.pdf").stat().st_size > 1_000
    commands = (out_dir / "commands.txt").read_text().splitlines()
    assert commands and all(
        c.startswith(f"python -m amm.run -m experiment={artifact}") for c in commands
    )
    assert all(c in printed for c in commands)  # what ran was printed
    prov = json.loads((out_dir / "provenance.json").read_text())
    assert prov["commands"] == commands
    assert {"git", "date", "hostname", "cpu", "gpus", "torch"} <= set(prov)
    assert set(prov["git"]) == {"sha", "dirty"}
    assert set(prov["run_git"]) == set(prov["run_dirs"])  # the code each run trained with
    assert all(set(g) == {"sha", "dirty"} for g in prov["run_git"].values())
    return [out_dir.parents[2] / d for d in prov["run_dirs"]]


@pytest.mark.slow  # about 25 s: two reproduce subprocesses, each launching three multiruns
def test_figure1_smoke(tmp_path: Path) -> None:
    proc = reproduce("figure1", tmp_path)
    out_dir = tmp_path / "results" / "figure1" / "smoke"
    run_dirs = check_outputs(out_dir, "figure1", proc.stdout)
    # (2 AM-MGD (exact, linear) + oracle + 3 fixed betas) x 2 step sizes (c = 1, 4), each in its
    # own directory
    assert len(run_dirs) == 12 and all((d / "summary.json").exists() for d in run_dirs)
    assert set(run_dirs) == {
        d.parent for d in (tmp_path / "runs" / "figure1" / "smoke").glob("*/summary.json")
    }
    table = (out_dir / "table.md").read_text()
    for method in (
        "AM-MGD (exact bias)",
        "AM-MGD (linear bias)",
        "oracle",
        "MGD β=0.9",
        "best fixed",
    ):
        assert method in table
    # the step-size axis: one row per c, every method's final gap (or why there is none)
    stepsize = (out_dir / "stepsize.md").read_text()
    rows = [line for line in stepsize.splitlines() if line.startswith(("| 1 |", "| 4 |"))]
    assert len(rows) == 2 and all(len(r.strip("|").split("|")) == 7 for r in rows)
    assert (out_dir / "figure1_stepsize.png").stat().st_size > 10_000

    # Running the same command again trains nothing: every run is finished.
    before = {d: (d / "metrics.jsonl").stat().st_mtime_ns for d in run_dirs}
    again = reproduce("figure1", tmp_path)
    assert again.stdout.count("runs finished already") == 3  # no block launched
    assert {d: (d / "metrics.jsonl").stat().st_mtime_ns for d in run_dirs} == before


@pytest.mark.slow  # about 20 s: the smoke sweep in subprocesses
def test_figure3_smoke(tmp_path: Path) -> None:
    proc = reproduce("figure3", tmp_path)
    out_dir = tmp_path / "results" / "figure3" / "smoke"
    check_outputs(out_dir, "figure3", proc.stdout)
    rows = [
        line
        for line in (out_dir / "table.md").read_text().splitlines()
        if line.startswith("| breast_cancer")
    ]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # data set, AM-MGD, MGD 0.9, MGD beta*, Adam, beta*: all numbers, beta* from the grid
    assert all(float(c) >= 0 for c in cells[1:5]) and cells[5] in {"0.5", "0.9", "0.99"}
    # across step sizes: per budget (30, 100) one row per c (1, 4); each method at its best c
    stepsize = (out_dir / "stepsize.md").read_text()
    rows = [r.split("|")[1:-1] for r in stepsize.splitlines() if r.startswith("| breast_cancer |")]
    assert [r[1].strip() for r in rows[:4]] == ["1", "4", "1", "4"] and len(rows) == 5
    assert re.fullmatch(r"\S+ \(c=(1|4)\)", rows[4][1].strip())  # AM-MGD at its best step
    for name in ("figure3_stepsize.png", "figure3_best.png"):
        assert (out_dir / name).stat().st_size > 10_000


def test_dry_run_prints_the_commands_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    main(["figure3", "--scale", "reduced", "--dry-run", "trainer.seed=1"])
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("python -m amm.run")]
    assert len(commands) == 3  # AM-MGD, Adam, the MGD momentum grid
    assert all(
        "experiment=figure3 scale=reduced" in c and c.endswith("trainer.seed=1") for c in commands
    )
    assert "runs/figure3/reduced/dataset.name=dna.scale,optimizer=adam,trainer.seed=1" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_unknown_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="unknown artifact 'figure99'; available: figure1"):
        main(["figure99"])


def test_override_value() -> None:
    assert override_value(None) == "null"
    assert override_value(True) == "true"
    assert override_value([0.9, 0.99]) == "[0.9,0.99]"
    assert override_value("0.5,0.9") == "0.5,0.9"


def test_provenance_dirty_means_the_code_differs_from_the_commit(tmp_path: Path) -> None:
    """An artifact rewrites its own results/ files: that is not a change of the code."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "table.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "results" / "table.md").write_text("new\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_a_run_without_a_method_label_says_what_to_do(tmp_path: Path) -> None:
    """Artifacts read the label a sweep block declared; they never guess it."""
    OmegaConf.save(OmegaConf.create({"optimizer": {"name": "sgd"}}), tmp_path / "config.yaml")
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "summary.json").write_text("{}")
    (run,) = load_runs([tmp_path])
    with pytest.raises(ValueError, match="no `method` label.*configs/experiment"):
        _ = run.method
    OmegaConf.save(OmegaConf.create({"method": "mgd"}), tmp_path / "config.yaml")
    assert load_runs([tmp_path])[0].method == "mgd"


def test_stepsize_gaps_mark_divergence_and_missing_records() -> None:
    """The step-size axis reads f(x_t) - f* from the records; a run that blows up or makes no
    progress is 'diverged' (never the best), a budget past the run's end is said so."""

    def run(gaps: list[float]) -> Run:
        records = [{"step": i + 1, "objective_gap": g} for i, g in enumerate(gaps)]
        return Run(Path("run"), OmegaConf.create({"method": "mgd"}), records, {})

    ok = run([1.0, 0.5, 0.1])  # the record of update t holds f(x_{t-1})
    assert gap_at(ok, 2) == 0.1 and cell(ok, 2) == "1.00e-01" and score(ok, 2) == 0.1
    assert not diverged(ok, 2) and cell(ok, 5) == "no record" and score(ok, 5) == math.inf
    blown = run([1.0, 3.0, math.inf, math.nan])
    assert diverged(blown, 1) and cell(blown, 1) == "diverged"  # above the start
    assert gap_at(blown, 3) == math.inf and cell(blown, 3) == "diverged"
    assert score(blown, 1) == math.inf
    overshoot = run([1.0, 3.0, 0.5])  # above the start once, then below: not diverged
    assert not diverged(overshoot, 1) and cell(overshoot, 1) == "3.00e+00"
    assert score(run([1.0, 1e-16]), 1, resolution=1e-13) == 1e-13  # below what f* resolves


def test_stepsize_budgets_end_at_the_runs_last_iterate() -> None:
    """The config's budgets, cut at the last iterate, which is always one (make demo runs the
    smoke sweep for 500 steps)."""

    def runs(max_steps: int) -> list[Run]:
        cfg = {"method": "mgd", "budgets": [30, 100], "trainer": {"max_steps": max_steps}}
        return [Run(Path("run"), OmegaConf.create(cfg), [], {})]

    assert budgets(runs(101)) == [30, 100]
    assert budgets(runs(500)) == [30, 100, 499]
    assert budgets(runs(60)) == [30, 59]


def test_run_dirs_are_those_hydra_composes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """job_run_dirs composes one job per block and names the others as Hydra does: the same
    directories as composing every job (also with extra and hydra.* overrides)."""
    monkeypatch.chdir(tmp_path)
    extra = [[], ["trainer.seed=1", "hydra.sweep.dir=runs/elsewhere", "logger.mode=offline"]]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for artifact, more in [("figure3", extra[0]), ("figure1", extra[1])]:
            for block in sweep_blocks(artifact, "smoke"):
                job = [f"experiment={artifact}", "scale=smoke", *block, *more]
                expected = [composed_run_dir(j) for j in expand_jobs(job)]
                assert job_run_dirs(job) == expected and len(set(expected)) == len(expected)


def test_seeds_run_every_job_once_per_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The experiment's `seeds` at the scale (figure4 reduced: 12) or --seeds N adds trainer.seed=0..N-1
    to every block; deterministic experiments run once; asking them for seeds is an error."""
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        twelve = "trainer.seed=" + ",".join(map(str, range(12)))
        assert all(b[-1] == twelve for b in sweep_blocks("figure4", "reduced"))
        assert all(b[-1] == "trainer.seed=0" for b in sweep_blocks("figure4", "smoke"))
        assert all(b[-1] == "trainer.seed=0,1" for b in sweep_blocks("figure4", "smoke", 2))
        assert all(
            not any(o.startswith("trainer.seed") for o in b)
            for b in sweep_blocks("figure3", "reduced")
        )
    main(["figure5", "--scale", "smoke", "--seeds", "2", "--dry-run"])
    out = capsys.readouterr().out
    dirs = [line.strip() for line in out.splitlines() if line.startswith("  runs/")]
    assert len(dirs) == 8  # (AdamW, AM-AdamW) x (warmup, none) x 2 seeds
    assert sum(d.endswith("trainer.seed=1") for d in dirs) == 4
    with pytest.raises(SystemExit, match=r"seeds: deterministic.*--seeds 3"):
        main(["figure3", "--scale", "smoke", "--seeds", "3", "--dry-run"])
    with pytest.raises(SystemExit, match="remove the trainer.seed override"):
        main(["figure4", "--scale", "smoke", "--dry-run", "trainer.seed=5"])


def test_an_experiment_without_seeds_says_what_to_declare(tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, config_dir)
    exp = config_dir / "experiment" / "figure4.yaml"
    text = exp.read_text()
    assert "seeds: ${by_scale:1,12,1}" in text
    exp.write_text(text.replace("seeds: ${by_scale:1,12,1}", "seeds: null"))
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        with pytest.raises(ValueError, match=r"figure4.yaml: `seeds` is None; declare how many"):
            sweep_blocks("figure4", "reduced")


def test_llm_tables_share_figure5_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that Figure 5 also runs (same overrides) has Figure 5's run directory, so it is run
    once for all three artifacts; the ablation-only jobs are new directories beside them."""
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):

        def dirs(artifact: str) -> set[Path]:
            return {
                d
                for b in sweep_blocks(artifact, "reduced")
                for d in job_run_dirs([f"experiment={artifact}", "scale=reduced", *b])
            }

        figure5, table5, table6 = dirs("figure5"), dirs("table5"), dirs("table6")
        assert dirs("table_llm") == dirs("table2") == figure5  # the same runs, drawn otherwise
    seeds = 10  # figure5's reduced seeds, which the tables inherit
    assert len(figure5) == 2 * 2 * seeds  # 2 optimizers x 2 schedules
    assert {d.parent for d in table5 | table6} == {Path("runs/figure5/reduced")}
    # table5: per-layer is figure5's AM-AdamW; the global-beta runs are new
    assert len(table5 & figure5) == 2 * seeds and len(table5 - figure5) == 2 * seeds
    # table6 (warmup only): AdamW and AM-AdamW are figure5's; Clip and Restart are new
    assert len(table6 & figure5) == 2 * seeds and len(table6 - figure5) == 2 * seeds


def test_hydra_jobs_split_and_name_as_hydra_does() -> None:
    """The one wrapper of Hydra's private APIs: the jobs of a multirun, each with the
    override_dirname Hydra itself composes for that job."""
    overrides = ["experiment=figure1", "scale=smoke", "optimizer.lam=0.5,1", "trainer.seed=0,1"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        naming = compose("config", overrides=overrides[:2], return_hydra_config=True)
        jobs = hydra_jobs(overrides, naming.hydra.job.config.override_dirname)
        assert [job for job, _ in jobs] == expand_jobs(overrides)
        assert len(jobs) == 4 and jobs[0][0][2:] == ["optimizer.lam=0.5", "trainer.seed=0"]
        for job, name in jobs:
            hydra_cfg = compose("config", overrides=job, return_hydra_config=True).hydra
            assert name == hydra_cfg.job.override_dirname, job
    assert all(name == "" for _, name in hydra_jobs(overrides))


def test_mode_replaces_the_dry_run_and_collect_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert reproduce_artifact("figure1", "smoke", [], mode=Mode.DRY_RUN) is None
    printed = capsys.readouterr().out
    assert "python -m amm.run -m experiment=figure1" in printed and "runs/" in printed
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was drawn
