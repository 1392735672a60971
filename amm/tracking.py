"""Where metrics go: the run's local ``metrics.jsonl`` (always) and Weights & Biases (optional).

W&B is best effort: any failure is a warning and the run goes on with its local files.

What a W&B run holds (README "Weights & Biases"): the config of ``config.yaml`` with
``optimizer.lr`` the number used, plus ``resolved`` (what the run computed: lr, parameter
count, batch and tokens per step, the optimizer's settings, the data's facts) and ``compare``
(flat keys to group and filter by); group ``<experiment>/<scale>/<setting>`` (the seeds of one
setting), job type = the method label; tags ``key:value``; the history of ``metrics.jsonl``;
best and final eval values as summaries (``define_metric``) and ``summary.json`` as
``summary.final``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import netrc
import os
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from amm.atomic import atomic_write
from amm.rundir import config_fingerprint

log = logging.getLogger(__name__)


class MetricsFile:
    """Append-only JSON lines, one object per logged step (NaN/inf kept as JSON's NaN/Infinity)."""

    def __init__(self, path: Path, keep_until_step: int) -> None:
        """Open ``path`` for appending after dropping records past ``keep_until_step``.

        A resumed run restarts from its checkpoint's step; what was logged after that step is
        logged again, so it is removed here instead of appearing twice. A torn last line (a
        hard kill or a full disk while it was written) is dropped with a warning: it is past
        the checkpoint anyway. A bad line elsewhere is an error naming the file and line.
        """
        self.path = path
        if path.exists():
            records = read_jsonl(path, torn_tail="drop")
            kept = [r for r in records if r["step"] <= keep_until_step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            if text != path.read_text():
                atomic_write(path, text)
        self._file = path.open("a", buffering=1)  # line-buffered: readable while running

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RunOutputs:
    """Rank 0's outputs of a run: ``metrics.jsonl`` and, with ``logger.name=wandb``, the W&B run.

    ``close`` (or ``exit``, as an ``ExitStack`` callback, on every exit path of the trainer)
    closes the file and finishes the W&B run with the run's exit code; calling it twice is fine.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        keep_until_step: int,
        logger: DictConfig,
        wandb_id: str,
        wandb_run: WandbRun,
    ) -> None:
        self.metrics = MetricsFile(run_dir / "metrics.jsonl", keep_until_step=keep_until_step)
        self.wandb: WandbLogger | None = None
        if logger.name == "wandb":
            self.wandb = WandbLogger(logger, run_dir=run_dir, run_id=wandb_id, run=wandb_run)
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def records(self) -> list[dict[str, Any]]:
        """Every record in ``metrics.jsonl`` so far."""
        self.metrics.flush()
        return read_jsonl(self.metrics.path)

    def summarize(self, summary: dict[str, Any]) -> None:
        """The run's ``summary.json`` values, as the W&B summary's ``final`` (before ``close``)."""
        if self.wandb is not None:
            self.wandb.summarize(summary)

    def close(self, exit_code: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)

    def exit(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        """``ExitStack.push`` callback: close with the exit code the exception implies."""
        if exc is None:
            code = 0
        elif isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 1
        self.close(exit_code=code)


def read_jsonl(path: Path, torn_tail: str = "raise") -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl``. A line that is not JSON is an error naming the file
    and line, except a torn last line with ``torn_tail="drop"`` (dropped with a warning)."""
    lines = path.read_text().splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not line.endswith("\n"):
                raise ValueError("incomplete line")
        except ValueError as err:
            if number == len(lines) and torn_tail == "drop":
                log.warning(
                    "%s: dropped its torn last line %d (%s): %r", path, number, err, line[:80]
                )
                break
            raise ValueError(
                f"{path}, line {number}: not a JSON record ({err}): {line[:80]!r}. "
                "Delete the line (a resumed run logs the steps after its checkpoint again)."
            ) from err
        records.append(record)
    return records


def wandb_mode(requested: str) -> str:
    """Resolve ``auto``: ``WANDB_MODE`` if set, else online with an API key, else offline."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        if netrc.netrc().authenticators(host.rstrip("/")):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


# ---- what identifies a run in W&B: config, group, job type, tags ---------------------------

# W&B summaries of the logged keys (``define_metric``): best and final eval values side by side
# (``eval_loss.min``, ``eval_loss.last``); throughput as the mean over the run's records. Keys
# not listed keep W&B's default, the last value.
METRIC_SUMMARIES = {
    "eval_loss": "min,last",
    "eval_accuracy": "max,last",
    "objective_gap": "min,last",
    "grad_norm": "max,last",
    "steps_per_s": "mean",
    "tokens_per_s": "mean",
}
# Keys of a param group that are not the optimizer's settings (the schedule's current lr, the
# parameters and their names, AM's run-time values).
_GROUP_STATE = {"params", "param_names", "lr", "initial_lr", "prev_lr", "prev_loss"}
_SEED = re.compile(r"(?:^|,)trainer\.seed=-?\d+(?=,|$)")
_HASHED = re.compile(r"-[0-9a-f]{12}$")  # amm.config.run_dirname's suffix of a long name
_MAX_GROUP, _MAX_TAG = 128, 64  # W&B's limits on a group name and a tag


@dataclass(frozen=True)
class WandbRun:
    """How a run appears in W&B (``wandb_run`` builds it)."""

    config: dict[str, Any]
    group: str
    job_type: str
    name: str
    tags: list[str]


def setting_name(cfg: DictConfig, run_dir: Path) -> str:
    """The run's setting: its directory name without the ``trainer.seed=N`` override, so that
    the seeds of one setting share it (``default`` when nothing else is left).

    A long directory name is cut and hashed with the seed inside (``amm.config.run_dirname``);
    such a setting is named ``config-`` plus a hash of the result-relevant config less the seed.
    """
    name = run_dir.name
    if len(name) == 120 and _HASHED.search(name):
        fingerprint = config_fingerprint(cfg)
        fingerprint.pop("trainer.seed", None)
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        return "config-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return _SEED.sub("", name).lstrip(",") or "default"


def _choice(group: str) -> str | None:
    """The config group option Hydra composed (``model=llama_9m``), when run under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get(group)
    return str(choice) if choice else None


def _label(node: Any, group: str) -> str:
    """A short name of a model or data set: Hydra's choice, its ``name`` key, or its class."""
    if group == "dataset" and node.get("path"):  # a LIBSVM file given by path: the file names it
        return Path(str(node.path)).name
    if group == "model":
        named = _choice(group) or node.get("name")
    else:
        named = node.get("name") or _choice(group)
    return str(named or str(node.get("_target_", "?")).rsplit(".", 1)[-1])


def _plain(value: Any) -> Any:
    """A JSON-able copy of an optimizer setting (tuples as lists, tensors as numbers)."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The settings the optimizer holds (e.g. AMAdamW's formulation options and betas):
    one value where every param group agrees, else the list of the groups' values."""
    groups = optimizer.param_groups
    out: dict[str, Any] = {}
    for key in groups[0]:
        if key in _GROUP_STATE:
            continue
        values = [_plain(g.get(key)) for g in groups]
        out[key] = values[0] if all(v == values[0] for v in values) else values
    return out


def resolved_values(
    cfg: DictConfig,
    *,
    lr: float,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    info: dict[str, Any],
    world_size: int,
) -> dict[str, Any]:
    """What the config left to the run, as the run computed it (W&B config ``resolved``).

    ``lr`` is the optimizer's initial lr (``lr: auto`` is ``info["lr"]`` x ``lr_scale``);
    ``batch_size`` counts the examples of one update over all ranks and micro-batches, and
    ``tokens_per_step`` (language data, whose batches are ``seq_len`` tokens long) its tokens.
    """
    batch = OmegaConf.select(cfg, "dataset.batch_size")
    accumulate = int(cfg.trainer.accumulate_grad_batches)
    seq_len = OmegaConf.select(cfg, "dataset.seq_len")
    out: dict[str, Any] = {
        "lr": lr,
        "lr_scale": float(OmegaConf.select(cfg, "optimizer.lr_scale", default=1.0)),
        "optimizer": optimizer_settings(optimizer),
        "n_params": sum(p.numel() for p in model.parameters()),  # DTensor: the global count
        "world_size": world_size,
        "batch_size": int(batch) * accumulate if batch else None,  # null: full batch
    }
    if batch and seq_len:
        out["tokens_per_step"] = int(batch) * int(seq_len) * accumulate
    # the data's facts: sizes, the suggested step, f*; not the minimiser (tensors)
    out["data"] = {k: v for k, v in info.items() if isinstance(v, (bool, int, float, str))}
    return out


def compare_keys(cfg: DictConfig, run_dir: Path, experiment: str) -> dict[str, Any]:
    """Flat keys a W&B dashboard groups and filters by (W&B config ``compare``)."""
    return {
        "experiment": experiment,
        "scale": OmegaConf.select(cfg, "scale.name", default=None),
        "method": OmegaConf.select(cfg, "method", default=None),
        "optimizer": str(cfg.optimizer.name),
        "model": _label(cfg.model, "model"),
        "dataset": _label(cfg.dataset, "dataset"),
        "warmup": int(cfg.trainer.scheduler.warmup_steps),
        "seed": int(cfg.trainer.seed),
        "setting": setting_name(cfg, run_dir),
    }


def _cut(text: str, limit: int) -> str:
    """``text`` if short enough, else a prefix and a hash of the whole (still unique)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 13]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def wandb_run(
    cfg: DictConfig, run_dir: Path, experiment: str, resolved: dict[str, Any]
) -> WandbRun:
    """The run's W&B identity: config, group, job type, name and tags.

    - config: ``config.yaml``'s values, but ``optimizer.lr`` is the number used (the configured
      value, e.g. ``auto``, is ``optimizer.lr_config``), plus ``resolved`` and ``compare``;
    - group ``<experiment>/<scale>/<setting>`` (``logger.group`` replaces it): the seeds of one
      setting, which W&B's grouped plots draw as their mean with a band;
    - job type: the method label (``method``), else the optimizer's name;
    - tags ``experiment:``, ``scale:``, ``method:``, ``optimizer:``, ``model:``, ``dataset:``,
      ``warmup:``, ``seed:``, plus ``logger.tags``.
    """
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    config["optimizer"]["lr_config"] = config["optimizer"].get("lr")
    config["optimizer"]["lr"] = resolved["lr"]
    config["optimizer"]["resolved_lr"] = resolved["lr"]  # as in config.yaml
    compare = compare_keys(cfg, run_dir, experiment)
    config["resolved"], config["compare"] = resolved, compare
    logger = cfg.logger
    group = logger.get("group") or f"{experiment}/{compare['scale']}/{compare['setting']}"
    tags = [
        _cut(f"{key}:{value}", _MAX_TAG)
        for key, value in compare.items()
        if key != "setting" and value is not None
    ]
    default_name = f"{cfg.optimizer.name} {run_dir.name} seed={cfg.trainer.seed}"
    return WandbRun(
        config=config,
        group=_cut(str(group), _MAX_GROUP),
        job_type=_cut(str(compare["method"] or compare["optimizer"]), _MAX_TAG),
        name=str(logger.get("run_name") or default_name),
        tags=[*tags, *(str(t) for t in logger.get("tags") or [])],
    )


# ---- throughput and gradient norm ------------------------------------------------------------


def batch_tokens(batch: Any) -> int:
    """Tokens in a language-model batch (``input_ids``); 0 for any other batch (no host sync)."""
    if isinstance(batch, dict) and isinstance(batch.get("input_ids"), Tensor):
        return int(batch["input_ids"].numel())
    return 0


class Throughput:
    """Steps (and tokens) per second of wall clock since the previous record.

    The trainer reads ``rates`` after the record's host transfer (so the device work of the
    interval is done), then ``restart``s after evaluating and writing: evaluation time is left
    out of the rates.
    """

    def __init__(self, step: int, world_size: int) -> None:
        self.world_size = world_size
        self.restart(step)

    def restart(self, step: int) -> None:
        self.step, self.tokens, self.start = step, 0, time.perf_counter()

    def add(self, batch: Any) -> None:
        """Count a (micro-)batch of this rank; all ranks see batches of one size."""
        self.tokens += batch_tokens(batch)

    def rates(self, step: int) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        out = {"steps_per_s": (step - self.step) / seconds}
        if self.tokens:
            out["tokens_per_s"] = self.tokens * self.world_size / seconds
        return out


def grad_norm(parameters: Iterable[nn.Parameter]) -> Tensor:
    """The global L2 norm of the gradients (a device tensor: no host sync); under FSDP the
    norm of the full gradient, not of this rank's shard."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return full_tensor(torch.nn.utils.get_total_norm(grads))


def full_tensor(value: Tensor) -> Tensor:
    """A plain tensor from a DTensor (FSDP2's norms are DTensors), else the tensor itself."""
    full = getattr(value, "full_tensor", None)
    return full() if callable(full) else value


class WandbLogger:
    """A W&B run whose files live in ``<run_dir>/wandb``; never raises after construction."""

    def __init__(self, cfg: DictConfig, *, run_dir: Path, run_id: str, run: WandbRun) -> None:
        self.mode = wandb_mode(cfg.mode)
        self.run = None
        if self.mode == "disabled":
            return
        try:
            import wandb  # imported here: runs without W&B do not pay for the import

            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=run.group,
                job_type=run.job_type,
                name=run.name,
                tags=run.tags,
                config=run.config,
                dir=str(run_dir),
                id=run_id,
                resume="allow",  # a resumed run continues the same W&B run
                mode=self.mode,  # type: ignore[arg-type]  # checked by wandb itself
            )
            for key, summary in METRIC_SUMMARIES.items():
                self.run.define_metric(key, summary=summary)
        except Exception as err:  # W&B must never stop training
            warnings.warn(f"W&B init failed ({err!r}); logging to local files only", stacklevel=2)

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(record, step=step)
        except Exception as err:
            warnings.warn(f"W&B log failed ({err!r}); disabling W&B for this run", stacklevel=2)
            self.run = None

    def summarize(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary["final"] = summary
        except Exception as err:
            warnings.warn(f"W&B summary failed ({err!r})", stacklevel=2)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as err:
            warnings.warn(f"W&B finish failed ({err!r})", stacklevel=2)
        self.run = None
