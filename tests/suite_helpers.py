"""Helpers for the suite's tests (configs, trainer, reproduce): composing configs, running
``python -m amm.run`` in a subprocess, reading run outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from amm.config import CONFIG_DIR
from amm.tracking import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
# Keys whose values depend on the machine or the clock, not on the computation.
TIMING_KEYS = {"time_s", "steps_per_s", "tokens_per_s"}


def compose_config(overrides: list[str], hydra: bool = False) -> DictConfig:
    """The config ``python -m amm.run <overrides>`` would get (``hydra``: with ``cfg.hydra``)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def subprocess_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for child processes: offline, caches in ``tmp``, W&B off unless asked."""
    env = dict(os.environ)
    env.update(
        AMM_OFFLINE="1",
        AMM_CACHE_DIR=str(tmp / "amm-cache"),
        WANDB_MODE="disabled",
        WANDB_DIR=str(tmp / "wandb"),
        WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp / "wandb-data"),
        PYTHONUNBUFFERED="1",
        # the paper (`experiments`, not in the wheel) from the clone, whatever the cwd
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    )
    env.update(extra)
    return env


def amm_run_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "amm.run", "trainer.progress=false", *overrides]


def run_amm(
    *overrides: str, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python -m amm.run <overrides>`` in ``cwd``; on failure the error shows its output."""
    proc = subprocess.run(amm_run_cmd(*overrides), cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"amm.run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` without the timing fields (they differ between identical runs)."""
    return [
        {k: v for k, v in r.items() if k not in TIMING_KEYS}
        for r in read_jsonl(run_dir / "metrics.jsonl")
    ]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
