"""Every experiment config composes at every scale, every sweep job is a valid command, and
every experiment runs at smoke scale; bad input gives Hydra's own errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
)
from hydra.utils import instantiate
from omegaconf import OmegaConf
from suite_helpers import EXPERIMENTS, compose_config, run_amm, subprocess_env

from amm.config import (
    CONFIG_DIR,
    PRECISIONS,
    SCALES,
    TrainerSchema,
    require_config_dir,
    run_dirname,
    settings,
    validate,
)
from amm.data.libsvm import DataNotFoundError
from amm.optim import build_optimizer
from amm.schedule import SCHEDULES
from amm.tracking import read_jsonl
from amm.trainer import train
from experiments.reproduce import available, expand_jobs, job_run_dirs, sweep_blocks


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AMM_OFFLINE", "1")
    monkeypatch.setenv("AMM_CACHE_DIR", str(tmp_path / "amm-cache"))
    monkeypatch.chdir(tmp_path)  # relative run dirs land in tmp


def test_experiments_are_discovered_and_each_has_an_artifact() -> None:
    assert {"figure1", "figure3"} <= set(EXPERIMENTS)
    assert available() == EXPERIMENTS  # one module in experiments/ per experiment config


# Experiments whose runs live in another one's run folder (the same job is the same run).
SHARES_RUNS_OF = {
    name: "figure5" for name in ("table2", "table5", "table6", "table_llm", "formulation")
}
# Artifacts computed without training runs (`sweep.<scale>: []`, experiments.reproduce.sweep_blocks).
RUNLESS = {"figure2"}


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_at_every_scale(experiment: str, scale: str) -> None:
    cfg = compose_config([f"experiment={experiment}", f"scale={scale}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["scale"]["name"] == scale
    if experiment in RUNLESS:  # drawn without training: an explicitly empty sweep
        assert resolved["sweep"][scale] == []
        return
    assert resolved["sweep"][scale], f"{experiment} has no sweep for scale {scale}"

    # The first job of every block composes (a wrong key or option in a block fails here; the
    # other jobs differ only in values) and gets a run directory under runs/<experiment>/<scale>
    # (the LLM tables under runs/figure5/<scale>: they share Figure 5's runs).
    from hydra import initialize_config_dir

    base = [f"experiment={experiment}", f"scale={scale}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        blocks = sweep_blocks(experiment, scale)
        for block in blocks:
            first = expand_jobs([*base, *block])[0]
            (run_dir,) = job_run_dirs(first)
            assert (
                run_dir.parent == Path("runs") / SHARES_RUNS_OF.get(experiment, experiment) / scale
            )
    # `method` is a label left out of the run directory: the other overrides must differ
    jobs = [
        frozenset(o for o in job if not o.startswith("method="))
        for b in blocks
        for job in expand_jobs([*base, *b])
    ]
    assert len(set(jobs)) == len(jobs), "two sweep jobs with the same overrides"
    # every block declares the method label its runs are drawn as (sweep_blocks checks it too)
    assert all(any(o.startswith("method=") for o in b) for b in blocks)


def test_sweep_block_without_a_method_label_is_an_error(tmp_path: Path) -> None:
    from hydra import initialize_config_dir

    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "experiment" / "nolabel.yaml").write_text(
        "# @package _global_\nseeds: 1\nsweep:\n  smoke:\n    - {method: mgd, optimizer: sgd}\n"
        "    - {optimizer: adam}\n  reduced: []\n  paper: []\n"
    )
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        with pytest.raises(
            ValueError, match=r"nolabel.yaml: block 1 of sweep.smoke has no `method`"
        ):
            sweep_blocks("nolabel", "smoke")


# Each experiment's smoke sweep takes 5-40 s (the convex ones now sweep step sizes too):
# `make test-fast` leaves them out, `make test` runs them.
@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_at_smoke_scale(experiment: str, tmp_path: Path) -> None:
    """Each job of the smoke sweep trains to the end with a finite loss."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        blocks = sweep_blocks(experiment, "smoke")
    jobs = [
        job for b in blocks for job in expand_jobs([f"experiment={experiment}", "scale=smoke", *b])
    ]
    for i, job in enumerate(jobs):
        cfg = compose_config([*job, "trainer.progress=false"])
        try:
            summary = train(cfg, tmp_path / f"run{i}", experiment=experiment)
        except InstantiationException as err:  # data this machine lacks (set AMM_DATA_DIR)
            if isinstance(err.__cause__, DataNotFoundError):
                pytest.skip(f"{experiment} needs data not found here: {err.__cause__}")
            raise
        assert summary["step"] == cfg.trainer.max_steps
        assert math.isfinite(summary["loss"])


@pytest.mark.parametrize(
    "option", sorted(p.stem for p in (CONFIG_DIR / "optimizer").glob("*.yaml"))
)
def test_optimizer_configs_build(option: str) -> None:
    """Each optimizer option's keys are accepted by build_optimizer (config <-> registry)."""
    cfg = compose_config([f"optimizer={option}"])
    model = torch.nn.Linear(3, 1, bias=False)
    info = {"lr": 0.1, "minimizer": [torch.zeros(1, 3)]}
    opt = build_optimizer(model, **OmegaConf.to_container(cfg.optimizer, resolve=True), info=info)
    assert opt.param_groups[0]["lr"] == (0.1 if cfg.optimizer.lr == "auto" else cfg.optimizer.lr)


def test_sgd_is_mgd_dampening_follows_momentum() -> None:
    cfg = compose_config(["optimizer=sgd", "optimizer.momentum=0.7"])
    assert cfg.optimizer.dampening == 0.7


def test_by_scale_picks_the_selected_scale() -> None:
    steps = {s: compose_config([f"scale={s}"]).trainer.max_steps for s in SCALES}
    assert steps["smoke"] < steps["reduced"] < steps["paper"]
    assert compose_config(["scale=smoke"]).logger.mode == "disabled"


def test_run_dirname() -> None:
    assert run_dirname("") == "default"
    assert run_dirname(None) == "default"
    assert (
        run_dirname("dataset.data_dir=/tmp/x,optimizer=sgd")
        == "dataset.data_dir=_tmp_x,optimizer=sgd"
    )
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    assert len(run_dirname(long)) <= 120
    assert run_dirname(long) == run_dirname(long)
    assert run_dirname(long) != run_dirname(long + "x")


def test_run_dir_is_a_pure_function_of_the_command() -> None:
    overrides = ["experiment=figure3", "scale=reduced", "optimizer=sgd", "optimizer.momentum=0.5"]
    run = compose_config(overrides, hydra=True).hydra
    # single run and multirun job of the same command share the directory
    assert run.run.dir == f"{run.sweep.dir}/{run.sweep.subdir}"
    assert run.run.dir == "runs/figure3/reduced/optimizer.momentum=0.5,optimizer=sgd"
    assert compose_config(overrides, hydra=True).hydra.run.dir == run.run.dir
    assert compose_config([], hydra=True).hydra.run.dir == "runs/default/smoke/default"
    # settings that do not change the results do not change the directory either
    quiet = [*overrides, "trainer.progress=false", "logger.mode=offline", "trainer.num_threads=1"]
    assert compose_config(quiet, hydra=True).hydra.run.dir == run.run.dir


def test_wrong_option_or_key_gives_hydra_errors() -> None:
    with pytest.raises(MissingConfigException, match="dataset/nope"):
        compose_config(["dataset=nope"])
    with pytest.raises(ConfigCompositionException, match="optimizer.lamda"):
        compose_config(["optimizer.lamda=0.2"])  # struct mode: no new keys by typo


def test_cli_reports_unknown_dataset(tmp_path: Path) -> None:
    proc = run_amm("dataset=nope", cwd=tmp_path, env=subprocess_env(tmp_path), check=False)
    assert proc.returncode != 0
    assert "Could not find 'dataset/nope'" in proc.stderr
    assert "breast_cancer" in proc.stderr  # Hydra lists the available options
    assert not (tmp_path / "runs").exists()


def test_commands_without_the_configs_say_to_use_a_clone(tmp_path: Path) -> None:
    require_config_dir()  # the repository's configs/
    with pytest.raises(SystemExit, match="clone of the amm repository"):
        require_config_dir(tmp_path)  # e.g. a wheel installed without the repository


def test_lr_scale_multiplies_the_problems_step(tmp_path: Path) -> None:
    """lr: auto with lr_scale: 2 is 2 x the problem's step (2/L), recorded in config and meta."""
    base = ["trainer.max_steps=2", "trainer.progress=false", "logger=none"]
    step = instantiate(compose_config(base).dataset).info["lr"]  # 1/L of breast_cancer
    train(compose_config([*base, "optimizer.lr_scale=2"]), tmp_path / "run")
    saved = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert saved.optimizer.lr == "auto" and saved.optimizer.lr_scale == 2
    assert saved.optimizer.resolved_lr == pytest.approx(2 * step)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["lr"] == pytest.approx(2 * step)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 2 and all(r["lr"] == pytest.approx(2 * step) for r in records)


def test_lr_scale_is_validated() -> None:
    model = torch.nn.Linear(3, 1)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="lr_scale=.*must be > 0"):
            build_optimizer(model, "sgd", lr="auto", lr_scale=bad, info={"lr": 0.1})
    with pytest.raises(ValueError, match="multiplies the problem's suggested step"):
        build_optimizer(model, "adam", lr=1e-3, lr_scale=2.0)  # a number: set the lr itself


def test_editing_an_experiments_sweep_keeps_its_runs(tmp_path: Path) -> None:
    """The sweep lists an experiment's runs; it is no part of one run's config: a run made
    before the sweep was edited (a data set added, ...) resumes under the edited one."""
    base = ["experiment=figure3", "scale=smoke", "method=am_mgd", "trainer.progress=false"]
    train(compose_config([*base, "trainer.max_steps=3"]), tmp_path / "run")
    (tmp_path / "run" / "summary.json").unlink()  # as if stopped after step 3
    edited = compose_config([*base, "trainer.max_steps=5", "sweep.reduced=[]"])
    assert train(edited, tmp_path / "run")["step"] == 5


# ---- TrainerSchema: the one definition of the trainer's keys -------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_trainer_yaml_agrees_with_the_schema(scale: str) -> None:
    """Every key of configs/trainer/default.yaml is a schema key and vice versa, and every
    default (``${by_scale:...}`` resolved at each scale) is the schema's."""
    yaml = OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml")
    root = OmegaConf.create({"trainer": yaml, "scale": {"name": scale}})
    values = flat_keys(OmegaConf.to_container(root.trainer, resolve=True))
    schema = settings()
    assert set(values) == set(schema)
    for key, value in values.items():
        default = schema[key].default_at(scale)
        assert value == default and type(value) is type(default), (key, value, default)


def test_schema_rules_say_what_is_allowed() -> None:
    schema = settings()
    assert schema["checkpoint_every"].allowed() == "an integer >= 0 (0: checkpoint at the end only)"
    assert schema["scheduler.name"].allowed() == "constant, cosine or step"
    assert schema["precision"].allowed() == "null or bf16"
    assert schema["device"].ok("cuda:1") and not schema["device"].ok("cuda:x")
    assert not schema["scheduler.min_lr_ratio"].ok(1.5) and schema["grad_clip"].ok(None)
    # the names are defined where they are used: the schedules, the autocast dtypes
    assert schema["scheduler.name"].rule.names == SCHEDULES  # type: ignore[union-attr]
    assert all(isinstance(getattr(torch, d), torch.dtype) for d in PRECISIONS.values())


def test_validate_returns_the_typed_settings() -> None:
    cfg = compose_config(["trainer.max_steps=7", "trainer.grad_clip=1"])
    tcfg = validate(cfg)
    assert isinstance(tcfg, TrainerSchema) and tcfg.max_steps == 7
    assert tcfg.grad_clip == 1.0 and isinstance(tcfg.grad_clip, float)


def flat_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat_keys(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
