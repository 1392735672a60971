"""The paper's artifacts: one module per ``configs/experiment/<name>.yaml``.

Each module defines ``make(run_dirs, out_dir, scale)``, which reads the runs' outputs (written by
``amm.trainer``) and writes ``out_dir/<name>.png|pdf`` and tables (``table.md``);
``python -m experiments.reproduce <name>`` runs the sweep and then calls it. Shared helpers: this
module (reading runs), ``_llm`` (LLaMA runs), ``_vision`` (image classification runs) and ``_stats`` (mean and spread
over seeds, paired differences).

Which method a run belongs to is declared in its sweep block (``method: <label>`` in the
experiment config), recorded in the run's ``config.yaml`` and read back as ``Run.method``;
artifacts never infer it from hyper-parameters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from amm.tracking import read_jsonl


@dataclass
class Run:
    """One finished run: its resolved config, metric records and summary."""

    dir: Path
    cfg: DictConfig
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def method(self) -> str:
        """The method label its sweep block declared (``method:`` in configs/experiment/)."""
        label = self.cfg.get("method")
        if label is None:
            raise ValueError(
                f"run {self.dir}: its config.yaml has no `method` label. Every sweep block of "
                "configs/experiment/<name>.yaml declares one (e.g. `method: am_mgd`); runs made "
                "before the labels existed are re-run (delete the run directory)."
            )
        return str(label)

    @property
    def seed(self) -> int:
        """The run's ``trainer.seed`` (experiments.reproduce runs seeds 0..n-1 of every job)."""
        return int(self.cfg.trainer.seed)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(iteration, value) over the records that have ``key``.

        The record of update ``step`` holds the loss at the iterate before it, so the
        iteration of a loss value is ``step - 1`` (0 = the starting point).
        """
        rows = [(r["step"] - 1, r[key]) for r in self.metrics if r.get(key) is not None]
        it, val = zip(*rows, strict=True) if rows else ((), ())
        return np.asarray(it, dtype=np.int64), np.asarray(val, dtype=np.float64)

    def betas(self) -> tuple[np.ndarray, np.ndarray]:
        """(step, beta) for every step, also those between records (``betas`` lists)."""
        steps: list[int] = []
        values: list[float] = []
        for r in self.metrics:
            interval = r.get("betas") or ([r["beta"]] if "beta" in r else [])
            first = r["step"] - len(interval) + 1
            for i, b in enumerate(interval):
                if b is not None:
                    steps.append(first + i)
                    values.append(b)
        return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)

    def final(self, key: str) -> float:
        """The summary's ``key`` (NaN when a run diverged or does not report it)."""
        value = self.summary.get(key)
        return float("nan") if value is None else float(value)


def load_runs(run_dirs: Iterable[Path]) -> list[Run]:
    """Read finished runs; a clear error names any run that has not finished."""
    runs = []
    for d in map(Path, run_dirs):
        if not (d / "summary.json").exists():
            raise FileNotFoundError(f"run {d} has not finished (no summary.json); re-run it")
        runs.append(
            Run(
                dir=d,
                cfg=OmegaConf.load(d / "config.yaml"),  # type: ignore[arg-type]
                metrics=read_jsonl(d / "metrics.jsonl"),
                summary=json.loads((d / "summary.json").read_text()),
            )
        )
    return runs


def nan_to_inf(x: float) -> float:
    """For "best by final loss": a diverged run (NaN) is never the best."""
    return math.inf if math.isnan(x) else x


def fmt(x: float) -> str:
    """A number for a markdown table."""
    return "diverged" if not math.isfinite(x) else f"{x:.3e}"
