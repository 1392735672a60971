"""Where metrics go: the run's local ``metrics.jsonl`` (always) and Weights & Biases (optional).

W&B is best effort: any failure is a warning and the run goes on with its local files.
"""

from __future__ import annotations

import json
import netrc
import os
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


class MetricsFile:
    """Append-only JSON lines, one object per logged step (NaN/inf kept as JSON's NaN/Infinity)."""

    def __init__(self, path: Path, keep_until_step: int) -> None:
        """Open ``path`` for appending after dropping records past ``keep_until_step``.

        A resumed run restarts from its checkpoint's step; what was logged after that step is
        logged again, so it is removed here instead of appearing twice.
        """
        self.path = path
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if json.loads(line)["step"] <= keep_until_step]
            if len(kept) != len(lines):
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(kept))
                os.replace(tmp, path)
        self._file = path.open("a", buffering=1)  # line-buffered: readable while running

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

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
        group: str,
        name: str,
        config: dict[str, Any],
    ) -> None:
        self.metrics = MetricsFile(run_dir / "metrics.jsonl", keep_until_step=keep_until_step)
        self.wandb: WandbLogger | None = None
        if logger.name == "wandb":
            self.wandb = WandbLogger(
                logger, run_dir=run_dir, run_id=wandb_id, group=group, name=name, config=config
            )
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def last_record(self) -> dict[str, Any]:
        """The last record in ``metrics.jsonl`` ({} when there is none)."""
        records = read_jsonl(self.metrics.path)
        return records[-1] if records else {}

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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl``."""
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


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


class WandbLogger:
    """A W&B run whose files live in ``<run_dir>/wandb``; never raises after construction."""

    def __init__(
        self,
        cfg: DictConfig,
        *,
        run_dir: Path,
        run_id: str,
        group: str,
        name: str,
        config: dict[str, Any],
    ) -> None:
        self.mode = wandb_mode(cfg.mode)
        self.run = None
        if self.mode == "disabled":
            return
        try:
            import wandb  # imported here: runs without W&B do not pay for the import

            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or group,
                name=cfg.run_name or name,
                tags=list(cfg.tags),
                config=config,
                dir=str(run_dir),
                id=run_id,
                resume="allow",  # a resumed run continues the same W&B run
                mode=self.mode,  # type: ignore[arg-type]  # checked by wandb itself
            )
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

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as err:
            warnings.warn(f"W&B finish failed ({err!r})", stacklevel=2)
        self.run = None
