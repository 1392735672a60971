"""What a run logs to W&B, read back from an offline run's ``.wandb`` file (issue 14, item 7).

The file is W&B's record log (the LevelDB log format: 32 KiB blocks of CRC-framed chunks, after
a 7-byte ``:W&B`` header), each record a ``wandb.proto.wandb_internal_pb2.Record``; the installed
wandb (0.31) ships no Python reader, so ``read_offline_run`` below decodes it with wandb's own
protobuf classes. No network: offline mode, W&B's directories in ``tmp_path``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from sklearn.datasets import dump_svmlight_file
from suite_helpers import compose_config, metrics, summary

from amm.tracking import Throughput, batch_tokens, compare_keys, setting_name
from amm.trainer import train

_BLOCK, _HEADER = 32768, 7  # LevelDB log: block size, chunk header (crc u32, length u16, type u8)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """The parts of an offline W&B run a dashboard shows."""

    config: dict[str, Any]
    group: str
    job_type: str
    tags: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metric_summaries: dict[str, set[str]] = field(default_factory=dict)


def wandb_records(path: Path) -> list[bytes]:
    """The serialized records of a ``.wandb`` file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B record log"
    records, pending, pos = [], b"", _HEADER
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            records.append(pending + chunk)
    return records


def _set(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def read_offline_run(run_dir: Path) -> OfflineRun:
    """The single offline W&B run in ``<run_dir>/wandb``: config, group, tags, history,
    summary (its updates applied in order) and the summaries ``define_metric`` asked for."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    run: OfflineRun | None = None
    for raw in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            config = {u.key: json.loads(u.value_json) for u in r.config.update}
            run = OfflineRun(config, r.run_group, r.job_type, list(r.tags))
        elif run is None:
            continue
        elif kind == "history":
            row = {
                ".".join(i.nested_key) or i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            run.history.append(row)
        elif kind == "summary":
            for u in record.summary.update:
                _set(run.summary, list(u.nested_key) or [u.key], json.loads(u.value_json))
        elif kind == "metric":
            flags = record.metric.summary
            names = ("min", "max", "mean", "last", "best")
            run.metric_summaries[record.metric.name] = {n for n in names if getattr(flags, n)}
    assert run is not None, f"{path}: no run record"
    return run


@contextmanager
def as_amm_run(overrides: list[str]) -> Iterator[Any]:
    """The composed config, with Hydra's runtime set as under ``python -m amm.run`` (which
    names the model and data set by the config options chosen, e.g. ``model=llama_4m``)."""
    HydraConfig.instance().set_config(compose_config(overrides, hydra=True))
    try:
        yield compose_config(overrides)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline: None) -> None:
    """W&B offline, its settings and caches in ``tmp_path``."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def svmlight_problem(tmp_path: Path) -> list[str]:
    """A small binary svmlight problem with a test file: overrides that train on it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5))
    y = np.where(X @ rng.normal(size=5) + 0.5 * rng.normal(size=120) > 0, 1, -1)
    dump_svmlight_file(X[:80], y[:80], str(tmp_path / "toy"))
    dump_svmlight_file(X[80:], y[80:], str(tmp_path / "toy.t"))
    return [
        "dataset=libsvm",
        f"dataset.path={tmp_path / 'toy'}",
        f"dataset.test_path={tmp_path / 'toy.t'}",
        "trainer.progress=false",
    ]


def test_offline_run_logs_resolved_config_throughput_grad_norm_and_summaries(
    tmp_path: Path, wandb_offline: None
) -> None:
    problem = svmlight_problem(tmp_path)
    overrides = [
        *problem,
        "optimizer=am_sgd",
        "optimizer.lr_scale=2",  # lr: auto x 2 = 2/L
        "method=am_mgd",
        "trainer.seed=3",
        "trainer.max_steps=8",
        "trainer.log_every=2",
        "trainer.eval_every=4",
        "logger.mode=auto",  # + WANDB_MODE=offline
        "logger.tags=[mine]",
    ]
    # a directory named as experiments.reproduce names a seed's run: the seed is not the setting's
    run_dir = tmp_path / "optimizer.lr_scale=2,trainer.seed=3"
    with as_amm_run(overrides) as cfg:
        out = train(cfg, run_dir, experiment="unit")
    run = read_offline_run(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    records = metrics(run_dir)

    # 1. resolved values: the lr used is a number (2/L), the configured "auto" kept beside it
    lr = run.config["optimizer"]["lr"]
    assert isinstance(lr, float) and lr == meta["lr"] == run.config["resolved"]["lr"]
    assert run.config["optimizer"]["lr_config"] == "auto"
    resolved = run.config["resolved"]
    assert lr == pytest.approx(2 * resolved["data"]["lr"])  # info["lr"] = 1/L
    assert resolved["lr_scale"] == 2.0 and resolved["n_params"] == 5
    assert resolved["data"]["n_train"] == 80 and resolved["data"]["num_features"] == 5
    settings = resolved["optimizer"]
    assert (settings["lam"], settings["beta_max"], settings["beta_scope"]) == (0.1, 0.9, "global")
    assert "params" not in settings and "prev_lr" not in settings

    # 2. throughput in every record, locally and in W&B; no tokens for a non-language problem
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in local] == [2, 4, 6, 8]
    assert all(r["steps_per_s"] > 0 and "tokens_per_s" not in r for r in local)
    assert [row["steps_per_s"] for row in run.history] == [r["steps_per_s"] for r in local]

    # 3. the gradient norm in every record, and in W&B's history
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)
    assert [row["grad_norm"] for row in run.history] == [r["grad_norm"] for r in records]

    # 4. best and final eval as summaries; summary.json as summary.final
    assert run.metric_summaries["eval_loss"] == {"min", "last"}
    assert run.metric_summaries["eval_accuracy"] == {"max", "last"}
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert run.summary["eval_loss"] == {
        "min": min(r["eval_loss"] for r in evals),
        "last": evals[-1]["eval_loss"],
    }
    assert run.summary["eval_accuracy"]["max"] == max(r["eval_accuracy"] for r in evals)
    assert run.summary["final"] == summary(run_dir) == out
    assert "steps_per_s" not in out  # an interval's rate, not the run's

    # 5. group = the setting (the seed left out), job type = method, tags and compare keys
    assert run.group == "unit/smoke/optimizer.lr_scale=2" and run.job_type == "am_mgd"
    assert {"optimizer:am_sgd", "seed:3", "scale:smoke", "warmup:0", "method:am_mgd"} <= set(
        run.tags
    )
    assert {"experiment:unit", "model:logreg", "dataset:toy", "mine"} <= set(run.tags)
    assert run.config["compare"] == {
        "experiment": "unit",
        "scale": "smoke",
        "method": "am_mgd",
        "optimizer": "am_sgd",
        "model": "logreg",
        "dataset": "toy",
        "warmup": 0,
        "seed": 3,
        "setting": "optimizer.lr_scale=2",
    }


def test_grad_norm_is_the_norm_before_clipping_and_the_same_without_clipping(
    tmp_path: Path, offline: None
) -> None:
    base = [*svmlight_problem(tmp_path), "logger=none", "trainer.max_steps=6"]
    train(compose_config(base), tmp_path / "free")
    # a clip above every norm changes no update: both ways of computing the norm must agree
    train(compose_config([*base, "trainer.grad_clip=100"]), tmp_path / "clip")
    free, clipped = metrics(tmp_path / "free"), metrics(tmp_path / "clip")
    assert [r["grad_norm"] for r in clipped] == pytest.approx([r["grad_norm"] for r in free])

    # step 1's norm is ||grad f(x_0)|| of the full-batch problem, computed here independently
    cfg = compose_config(base)
    data = instantiate(cfg.dataset)
    model = instantiate(cfg.model, info=data.info)
    (batch,) = data.train_batches(0)
    model(batch)[0].backward()
    expected = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert free[0]["grad_norm"] == pytest.approx(expected, rel=1e-12)

    # a binding clip: the logged norm is the one before clipping (above the clip)
    train(compose_config([*base, "trainer.grad_clip=1e-3"]), tmp_path / "tight")
    assert metrics(tmp_path / "tight")[0]["grad_norm"] == pytest.approx(expected, rel=1e-12)


def test_setting_name_leaves_out_only_the_seed(tmp_path: Path) -> None:
    cfg = compose_config(["trainer.seed=2"])
    name = "model=llama_9m,optimizer=adamw,trainer.scheduler.warmup_steps=30,trainer.seed=2"
    assert setting_name(cfg, Path(name)) == name.rsplit(",", 1)[0]
    assert setting_name(cfg, Path("trainer.seed=2,x=1")) == "x=1"
    assert setting_name(cfg, Path("a=[1,2],trainer.seed=12,trainer.seedling=3")) == (
        "a=[1,2],trainer.seedling=3"
    )
    assert setting_name(cfg, Path("trainer.seed=2")) == "default"
    # a long name is hashed with its seed inside: the setting is a hash of the config less seed
    hashed = Path("x" * 107 + "-0123456789ab")
    seeds = [setting_name(compose_config([f"trainer.seed={s}"]), hashed) for s in (0, 1)]
    other = setting_name(compose_config(["trainer.seed=0", "trainer.max_steps=7"]), hashed)
    assert seeds[0] == seeds[1] != other and seeds[0].startswith("config-")


def test_compare_keys_without_hydra_name_the_model_by_its_config(tmp_path: Path) -> None:
    """``train()`` called from Python: no Hydra choices, so the model's ``name`` or class."""
    llm = compare_keys(compose_config(["model=llama_4m"]), tmp_path, "x")
    convex = compare_keys(compose_config([]), tmp_path, "x")
    assert (llm["model"], convex["model"], convex["dataset"]) == (
        "4M",
        "LinearClassifier",
        "breast_cancer",
    )


def test_tokens_per_second_counts_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 12.0])
    monkeypatch.setattr("amm.tracking.time.perf_counter", lambda: next(clock))
    meter = Throughput(step=4, world_size=2)
    for _ in range(3):  # three steps of 2 x 8 tokens on this rank
        meter.add({"input_ids": torch.zeros(2, 8, dtype=torch.long)})
    assert meter.rates(step=7) == {"steps_per_s": 1.5, "tokens_per_s": 3 * 16 * 2 / 2.0}
    assert batch_tokens({"image": torch.zeros(2, 3)}) == batch_tokens(torch.zeros(3)) == 0


@pytest.mark.slow
def test_offline_llm_run_logs_tokens_per_second(tmp_path: Path, wandb_offline: None) -> None:
    overrides = [
        "experiment=figure5",
        "model=llama_4m",
        "method=am_adamw",
        "trainer.scheduler.warmup_steps=2",
        "trainer.max_steps=4",
        "trainer.eval_every=2",
        "trainer.progress=false",
        "logger.mode=offline",
    ]
    run_dir = tmp_path / "run"
    with as_amm_run(overrides) as cfg:
        train(cfg, run_dir, experiment="figure5")
    run = read_offline_run(run_dir)
    records = metrics(run_dir)
    resolved = run.config["resolved"]
    assert resolved["tokens_per_step"] == 2 * 32  # smoke: 2 blocks of 32 tokens
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in local:  # every record's rates describe the same steps: tokens = 64 x steps
        assert r["tokens_per_s"] == pytest.approx(64 * r["steps_per_s"])
    assert all(r["grad_norm"] > 0 for r in records)  # grad_clip=1.0: the clip's own norm
    assert run.summary["eval_loss"]["last"] == records[-1]["eval_loss"]
    assert run.summary["tokens_per_s"]["mean"] == pytest.approx(
        float(np.mean([r["tokens_per_s"] for r in local]))
    )
    assert {"warmup:2", "model:llama_4m", "optimizer:am_adamw", "experiment:figure5"} <= set(
        run.tags
    )
    assert run.group == "figure5/smoke/run" and run.job_type == "am_adamw"
    # the formulation is in the W&B config twice: as configured and as the optimizer holds it
    assert run.config["optimizer"]["bias_correction"] == "bounded"
    assert resolved["optimizer"]["bias_correction"] == "bounded"
    assert resolved["optimizer"]["lam_metric"] == "preconditioned"
