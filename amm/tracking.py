"""Where metrics go: the run's local ``metrics.jsonl`` (always) and Weights & Biases (optional).

W&B is best effort: any failure is a warning and the run goes on with its local files.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Log ``amm``'s messages (INFO and up) and any WARNING to ``path`` (the run's ``run.log``).

    Under ``python -m amm.run`` Hydra's job logging already writes ``run.log`` and the console;
    elsewhere (``train()`` called from Python) a file handler, and a console one on stderr, are
    added for the duration of the run.
    """
    root, amm_log = logging.getLogger(), logging.getLogger("amm")
    target = str(path.resolve())
    added: list[logging.Handler] = []
    if not any(getattr(h, "baseFilename", None) == target for h in root.handlers):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            added.append(logging.FileHandler(path, mode="a"))
        except OSError:  # a read-only run directory: the console still gets the log
            pass
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        added.append(logging.StreamHandler(sys.stderr))
    for handler in added:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    level = amm_log.level
    amm_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        amm_log.setLevel(level)
        for handler in added:
            root.removeHandler(handler)
            handler.close()


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
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)
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

    def records(self) -> list[dict[str, Any]]:
        """Every record in ``metrics.jsonl`` so far."""
        self.metrics.flush()
        return read_jsonl(self.metrics.path)

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
