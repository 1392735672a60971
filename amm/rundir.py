"""The run directory as one object: ``RunDir``, the trainer's one entry to it (rank 0).

    with RunDir(run_dir, cfg) as run:  # run.log, the lock, the config's fingerprint
        if run.finished is not None:   # summary.json exists: the run is done
            return run.finished
        run.check_data(data.source_files())  # the data files' fingerprint
        run.write_config(resolved); run.write_meta(fields)  # config.yaml, meta.json
        ...                                   # (the trainer writes checkpoints/, metrics.jsonl)
        run.finish(summary)                   # summary.json, last: "finished"

A re-run whose config or data differ from the fingerprint is refused (``RunDirError`` listing
the differences) or, with ``trainer.on_mismatch=restart``, started over in place: its
checkpoints, metrics, summary and fingerprint are deleted. The integrity it keeps: one process
at a time (``RunLock``) and a fingerprint of what made the run (``fingerprint.json``), so a
changed config or data file is never resumed silently.

**The lock** is a file ``<run dir>/.lock`` created with ``O_CREAT | O_EXCL``, which is atomic on
local file systems and on NFS (v3 and later) and Lustre, unlike ``fcntl``/``flock`` locks, which
some NFS and Lustre mounts do not support or do not share between nodes. It holds the holder's
host, pid, SLURM job id and start time; a thread touches it every ``HEARTBEAT_S`` seconds. A
second process is refused with a message naming the holder. A lock is stale, and taken over
with a warning, when

- its holder ran on this host and its process is gone (a crash, ``kill -9``),
- it belongs to this process's SLURM job: a requeued job never waits for its former self,
- its heartbeat is older than ``STALE_AFTER_S`` (the holder's node died; clocks of the nodes
  must agree to within a minute or so, as they do under NTP).

Taking over renames the stale file away first (atomic), and checks that what it renamed is the
lock it judged stale, so two processes cannot both take over one lock.

**The fingerprint** (``fingerprint.json``) holds the resolved config, less the keys that do not
change results (``NON_RESULT_KEYS``, the keys the run directory's name leaves out), with paths
taken from ``cfg.paths`` kept as written (``${paths.data_dir}/...``: a run moved to another
machine is the same run), and the size and SHA-256 of every file the data module read. A re-run
whose config or data differ is refused with the differing keys, unless
``trainer.on_mismatch=restart`` (start the run over in its directory).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amm.atomic import atomic_write_json
from amm.checkpoint import CHECKPOINT_DIR, remove_checkpoints
from amm.config import NON_RESULT_KEYS
from amm.schedule import max_steps_may_change

log = logging.getLogger(__name__)

LOCK = ".lock"
FINGERPRINT = "fingerprint.json"
SUMMARY = "summary.json"  # written last: its presence means "finished"
METRICS = "metrics.jsonl"
RUN_LOG = "run.log"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
# Files larger than this are fingerprinted by size and modification time, not hashed.
HASH_LIMIT_BYTES = 1 << 30


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (locked, not writable, changed config)."""


class RunDirNotWritable(RunDirError):
    """The run directory cannot be written (read-only file system, permissions)."""


# ---- the run directory ---------------------------------------------------------------------


class RunDir:
    """Rank 0's run directory: ``with RunDir(path, cfg) as run:`` (see the module docstring).

    Entering logs to ``run.log``, takes the lock (a finished run on a read-only file system is
    only read) and checks the config against the fingerprint; ``finished`` is then the summary
    of a finished run, else None. Leaving releases the lock and the log.
    """

    def __init__(self, path: Path, cfg: DictConfig) -> None:
        self.path, self.cfg = Path(path), cfg
        self.finished: dict[str, Any] | None = None
        self._stack = ExitStack()

    def __enter__(self) -> RunDir:
        with ExitStack() as stack:  # an error here releases what was taken
            stack.enter_context(run_log(self.path / RUN_LOG))
            read_only = self._lock(stack)
            self.finished = self._check_config(read_only)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def _lock(self, stack: ExitStack) -> bool:
        """Take the lock (a second process here is refused); True: read-only, and finished."""
        try:
            stack.enter_context(RunLock(self.path))
        except RunDirNotWritable:
            if not self.summary_path.exists():
                raise
            return True
        return False

    def _check_config(self, read_only: bool) -> dict[str, Any] | None:
        """The config against the fingerprint (``trainer.on_mismatch``); the summary if finished."""
        started = self.summary_path.exists() or (self.path / CHECKPOINT_DIR).exists()
        recorded = read_fingerprint(self.path)
        config = config_fingerprint(self.cfg)
        if started and recorded is not None:
            differences = config_differences(recorded.get("config", {}), config)
            if self.summary_path.exists():  # its data is not built: check the files in place
                differences += data_differences(recorded.get("data", {}), files=None)
            if differences:
                self._restart_or_refuse(differences)
        if self.summary_path.exists():
            note = " (read-only)" if read_only else ""
            log.info("%s: finished already%s; summary: %s", self.path, note, self.summary_path)
            return dict(json.loads(self.summary_path.read_text()))
        if recorded is None or not started:
            write_fingerprint(self.path, config, {})  # the data part once the data is built
        return None

    def check_data(self, files: list[Path]) -> None:
        """The data files of a resumed run must be those it started with; record them."""
        recorded = read_fingerprint(self.path) or {}
        if recorded.get("data"):
            differences = data_differences(recorded["data"], files)
            if differences:
                self._restart_or_refuse(differences)
        write_fingerprint(self.path, config_fingerprint(self.cfg), data_fingerprint(files))

    def _restart_or_refuse(self, differences: list[str]) -> None:
        """``trainer.on_mismatch``: ``refuse`` (raise, listing the differences) or ``restart``
        (delete the run's checkpoints, metrics, summary and fingerprint: start it over)."""
        if self.cfg.trainer.on_mismatch != "restart":
            raise mismatch_error(self.path, differences)
        log.warning(
            "%s: config or data changed (%s); trainer.on_mismatch=restart: starting the run over",
            self.path,
            "; ".join(differences),
        )
        remove_checkpoints(self.path)
        for name in (SUMMARY, METRICS, FINGERPRINT):
            (self.path / name).unlink(missing_ok=True)

    def write_config(self, resolved: Any) -> None:
        """Write ``config.yaml`` (the resolved config, a DictConfig)."""
        OmegaConf.save(resolved, self.path / "config.yaml")

    def write_meta(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write ``meta.json``: ``fields`` and a W&B run id, kept across restarts (W&B then
        resumes the same run). Returns what it wrote."""
        path = self.path / "meta.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        meta = {**fields, "wandb_id": old.get("wandb_id") or secrets.token_hex(4)}
        atomic_write_json(path, meta, indent=2)
        return meta

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json``, the run's last file."""
        atomic_write_json(self.summary_path, summary, indent=2)


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


# ---- the lock ------------------------------------------------------------------------------


class RunLock:
    """``with RunLock(run_dir):`` holds the run directory's lock (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create the run directory {self.path.parent}: {err}") from err
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as err:
                raise RunDirNotWritable(
                    f"cannot write to the run directory {self.path.parent} ({err}); "
                    "make it writable or run elsewhere (hydra.run.dir=...)"
                ) from err
            with os.fdopen(fd, "w") as fh:
                json.dump(self._holder(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
            return
        raise RunDirError(f"could not take the lock {self.path} (it keeps changing hands)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if read_holder(self.path).get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": self.token,
        }

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # taken away from us: nothing to refresh
                return

    def _take_over_if_stale(self) -> None:
        holder = read_holder(self.path)
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        why = stale_reason(holder, age)
        if why is None:
            raise RunDirError(
                f"run directory {self.path.parent} is in use by {describe(holder)} "
                f"(lock {self.path}, refreshed {age:.0f} s ago). Wait for that run to end, or stop "
                "it; if it is dead, the lock is taken over automatically once it is stale "
                f"({STALE_AFTER_S:.0f} s without heartbeat), or delete {self.path} yourself."
            )
        aside = self.path.with_name(f"{LOCK}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else took it over first
        if read_holder(aside).get("token") != holder.get("token"):
            # a fresh lock replaced the stale one between our read and the rename: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning(
            "took over the stale lock of %s on %s (%s)", describe(holder), self.path.parent, why
        )


def read_holder(path: Path) -> dict[str, Any]:
    """The lock file's contents ({} if missing or being written)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (lock file unreadable)"
    text = f"pid {holder.get('pid')} on {holder.get('host')}"
    if holder.get("slurm_job_id"):
        text += f" (SLURM job {holder['slurm_job_id']})"
    return text + (f", started {holder['started']}" if holder.get("started") else "")


def stale_reason(holder: dict[str, Any], age_s: float) -> str | None:
    """Why a lock with this holder, refreshed ``age_s`` seconds ago, is stale (None: it is not)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and holder.get("slurm_job_id") == job and holder.get("pid") != os.getpid():
        return f"it belongs to this SLURM job {job}, requeued"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not pid_alive(holder["pid"]):
            return f"its process {holder['pid']} is gone"
    if age_s > STALE_AFTER_S:
        return f"no heartbeat for {age_s:.0f} s"
    if not holder and age_s > 2 * HEARTBEAT_S:  # unreadable, and not one being written now
        return "the lock file is unreadable"
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


# ---- the fingerprint -----------------------------------------------------------------------


def config_fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """Flat ``key -> value`` of the resolved config, less ``NON_RESULT_KEYS``; values that come
    from ``cfg.paths`` keep their ``${paths....}`` form (where data lives is not what it is)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(r: Any, v: Any, prefix: str) -> None:
        if prefix and excluded(prefix):
            return
        if isinstance(v, dict):
            for key in v:
                walk(r.get(key) if isinstance(r, dict) else None, v[key], f"{prefix}{key}.")
            return
        key = prefix[:-1]
        flat[key] = r if isinstance(r, str) and "${paths." in r else v

    walk(raw, resolved, "")
    return flat


def excluded(prefix: str) -> bool:
    key = prefix.rstrip(".")
    return any(key == k or key.startswith(k + ".") for k in NON_RESULT_KEYS) or key == "hydra"


def data_fingerprint(files: list[Path]) -> dict[str, dict[str, Any]]:
    """``path -> {size, sha256}`` of each file (files over 1 GiB: size and mtime, not hashed)."""
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        out[str(Path(path).resolve())] = file_fingerprint(Path(path))
    return out


def file_fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    if stat.st_size > HASH_LIMIT_BYTES:
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return {"size": stat.st_size, "sha256": digest.hexdigest()}


def read_fingerprint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / FINGERPRINT
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except ValueError as err:
        raise RunDirError(
            f"{path} is not valid JSON ({err}); delete it to accept the run as it is, "
            "or start over with trainer.on_mismatch=restart"
        ) from err


def write_fingerprint(run_dir: Path, config: dict[str, Any], data: dict[str, Any]) -> None:
    fingerprint = {"config": config, "data": data}
    atomic_write_json(run_dir / FINGERPRINT, fingerprint, indent=2, sort_keys=True)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (or is only in one of them).

    ``trainer.max_steps`` may change (a run extended, or stopped earlier) unless the lr schedule
    depends on it (``amm.schedule.max_steps_may_change``): the steps both runs take are the same.
    """
    missing = object()
    lines = []
    lenient_max_steps = max_steps_may_change(old, new)
    for key in sorted(set(old) | set(new)):
        if excluded(key):  # recorded before NON_RESULT_KEYS listed it
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if key == "trainer.max_steps" and lenient_max_steps:
            continue
        if a != b:
            shown_a = "(absent)" if a is missing else json.dumps(a)
            shown_b = "(absent)" if b is missing else json.dumps(b)
            lines.append(f"{key}: {shown_a} (run) -> {shown_b} (now)")
    return lines


def data_differences(old: dict[str, Any], files: list[Path] | None) -> list[str]:
    """Changed data files: against ``files`` (the data module's, by file name), or, without them
    (a finished run, whose data is not built), the recorded paths that still exist."""
    lines = []
    if files is None:
        for name, recorded in sorted(old.items()):
            path = Path(name)
            if path.exists() and file_fingerprint(path) != recorded:
                lines.append(f"data file {path}: changed since the run read it")
        return lines
    now = {Path(p).name: (str(p), fp) for p, fp in data_fingerprint(files).items()}
    before = {Path(p).name: fp for p, fp in old.items()}
    for name in sorted(set(before) | set(now)):
        if name not in now:
            lines.append(f"data file {name}: read by the run, not read now")
        elif name not in before:
            lines.append(f"data file {now[name][0]}: read now, not by the run")
        elif now[name][1] != before[name]:
            lines.append(f"data file {now[name][0]}: changed since the run read it")
    return lines


def mismatch_error(run_dir: Path, differences: list[str]) -> RunDirError:
    shown = "\n  ".join(differences[:20])
    more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
    return RunDirError(
        f"run directory {run_dir} was made with a different config or data:\n  {shown}{more}\n"
        "Its checkpoint and metrics belong to the config it was made with. To proceed: run the "
        "new config in another directory (hydra.run.dir=...), or start this run over in place "
        "with trainer.on_mismatch=restart (deletes its checkpoints, metrics and summary)."
    )
