"""Run integrity (issue 13): a run directory never holds a silently wrong result.

One process per run directory (a lock that a dead holder or a requeued SLURM job gives up), a
torn last metrics line, a changed config or data file, corrupt checkpoints, a read-only run
directory, invalid trainer values, diverged runs, and the lines a run prints. Kill -9 at many
points of a run: tests/test_run_integrity_kill.py.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from suite_helpers import amm_run_cmd, compose_config, metrics, run_amm, subprocess_env, summary

from amm.checkpoint import LAST, PREVIOUS, CheckpointError, load_sharded, save_sharded
from amm.config import NON_RESULT_KEYS, ConfigError, validate
from amm.optim import AMAdamW
from amm.rundir import LOCK, RunDirError, RunLock
from amm.trainer import train

# breast cancer, full batch: fast, and beta changes every step
SMALL = ["trainer.progress=false", "logger=none", "optimizer=am_sgd"]
# a quadratic run that takes a few seconds in a subprocess, so another process can meet it
LONG = [
    "experiment=figure1",
    "optimizer=am_sgd",
    "logger=none",
    "trainer.max_steps=200000",
    "trainer.log_every=50",
    "trainer.checkpoint_every=1000",
]


@pytest.fixture(autouse=True)
def _offline(offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest.offline, and no SLURM job of the test runner's own (the lock records it)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def run(tmp: Path, *overrides: str, steps: int = 8) -> dict[str, object]:
    return train(compose_config([*SMALL, f"trainer.max_steps={steps}", *overrides]), tmp)


# ---- the lock -----------------------------------------------------------------------------


@pytest.mark.slow
def test_second_process_in_a_running_run_dir_is_refused(tmp_path: Path) -> None:
    """Two `amm.run` processes in one run directory: the second is refused with a message
    naming the first (its pid); the first is not disturbed and finishes its checkpoint."""
    run_dir = tmp_path / "run"
    env = subprocess_env(tmp_path)
    first = subprocess.Popen(
        amm_run_cmd(*LONG, f"hydra.run.dir={run_dir}"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists():
            assert first.poll() is None and time.monotonic() < deadline, "first run did not start"
            time.sleep(0.05)
        second = run_amm(*LONG, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env, check=False)
        assert second.returncode != 0
        output = second.stdout + second.stderr
        assert f"is in use by pid {first.pid} on {socket.gethostname()}" in output, output
        assert "Traceback" not in output
        assert first.poll() is None  # still running, its files untouched
    finally:
        first.send_signal(signal.SIGTERM)
        out = first.communicate(timeout=120)[0]
    assert first.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM at step" in out  # the signal line
    steps = [r["step"] for r in metrics(run_dir)]
    assert steps == sorted(set(steps))  # one writer: every record once, in order
    assert not (run_dir / LOCK).exists()  # released on the way out


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / LOCK).write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x"})
    )
    assert run(tmp_path)["step"] == 8
    log = (tmp_path / "run.log").read_text()
    assert f"took over the stale lock of pid {int(dead.stdout)}" in log and "is gone" in log
    assert not (tmp_path / LOCK).exists()


def test_requeued_slurm_job_takes_over_its_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh lock of another host is respected, unless it is this SLURM job's (a requeue,
    possibly on another node, after the old node died without releasing it)."""
    holder = {"host": "node-that-died", "pid": 4242, "slurm_job_id": "777", "token": "y"}
    (tmp_path / LOCK).write_text(json.dumps(holder))
    with pytest.raises(RunDirError, match="in use by pid 4242 on node-that-died"):
        run(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    assert run(tmp_path)["step"] == 8
    assert "this SLURM job 777, requeued" in (tmp_path / "run.log").read_text()


def test_lock_without_heartbeat_is_stale(tmp_path: Path) -> None:
    holder = {"host": "other-node", "pid": 4242, "token": "z"}
    (tmp_path / LOCK).write_text(json.dumps(holder))
    old = time.time() - 3600
    os.utime(tmp_path / LOCK, (old, old))
    assert run(tmp_path)["step"] == 8
    assert "no heartbeat for" in (tmp_path / "run.log").read_text()


def test_lock_is_released_on_errors(tmp_path: Path) -> None:
    cfg = compose_config([*SMALL, "dataset=libsvm", "dataset.name=a9a", "dataset.data_dir=/none"])
    with pytest.raises(Exception, match="file 'a9a' not found"):
        train(cfg, tmp_path)
    assert not (tmp_path / LOCK).exists()
    with RunLock(tmp_path):  # and can be taken again
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


# ---- metrics.jsonl -------------------------------------------------------------------------


def interrupted(tmp: Path, steps: int = 6, ckpt: int = 3) -> Path:
    """A run stopped after ``steps`` with its last checkpoint at step ``ckpt`` (as after a
    hard kill): its summary removed and ``last.pt`` replaced by the checkpoint of ``ckpt``."""
    at_ckpt = tmp / "at-ckpt"
    run(at_ckpt, steps=ckpt)
    run_dir = tmp / "run"
    run(run_dir, steps=steps)
    (run_dir / "summary.json").unlink()
    shutil.copy(at_ckpt / LAST, run_dir / LAST)
    (run_dir / PREVIOUS).unlink(missing_ok=True)
    return run_dir


def test_torn_tail_line_is_dropped_with_a_warning(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run(reference)
    run_dir = interrupted(tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 7, "epoch": 6, "lr": 0.3, "lo')  # cut by a kill or a full disk
    run(run_dir)
    assert metrics(run_dir) == metrics(reference)
    assert "dropped its torn last line 7" in (run_dir / "run.log").read_text()


def test_bad_line_inside_metrics_names_file_and_line(tmp_path: Path) -> None:
    run_dir = interrupted(tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
        run(run_dir)


# ---- fingerprint: config and data ----------------------------------------------------------


def test_changed_config_is_refused_with_the_differing_keys(tmp_path: Path) -> None:
    run_dir = interrupted(tmp_path)
    with pytest.raises(RunDirError) as err:
        run(run_dir, "optimizer.lam=0.5")
    message = str(err.value)
    assert "optimizer.lam: 0.1 (run) -> 0.5 (now)" in message
    assert "trainer.on_mismatch=restart" in message and "hydra.run.dir" in message
    # a finished run too: its summary is not returned for another config
    run(run_dir)
    with pytest.raises(RunDirError, match="optimizer.lam"):
        run(run_dir, "optimizer.lam=0.5")


def test_restart_on_mismatch_starts_over(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run(reference, "optimizer.lam=0.5")
    run_dir = interrupted(tmp_path)
    out = run(run_dir, "optimizer.lam=0.5", "trainer.on_mismatch=restart")
    assert metrics(run_dir) == metrics(reference)
    assert out["loss"] == summary(reference)["loss"]
    assert "starting the run over" in (run_dir / "run.log").read_text()


def test_settings_that_do_not_change_results_are_not_a_mismatch(tmp_path: Path) -> None:
    """The keys left out of the run directory's name (logger, progress, threads, paths) may
    change; so may max_steps without a cosine schedule (a run extended)."""
    run_dir = interrupted(tmp_path)
    other = ["trainer.num_threads=1", "logger=wandb", "logger.mode=disabled", "paths.offline=true"]
    run(run_dir, *other, steps=9)
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 10))
    hydra_exclude = compose_config([], hydra=True).hydra.job.config.override_dirname.exclude_keys
    covered = {k for k in hydra_exclude if k not in ("experiment", "scale")}
    assert {k for k in covered if not any(k.startswith(p) for p in NON_RESULT_KEYS)} == set()
    assert set(NON_RESULT_KEYS) <= covered | {"paths"}


def test_changed_data_file_is_refused(tmp_path: Path, shared_data: Path) -> None:
    data = tmp_path / "data" / "libsvm" / "heart_scale"
    data.mkdir(parents=True)
    shutil.copy(shared_data / "libsvm" / "heart_scale" / "heart_scale", data)
    args = ["dataset=libsvm", "dataset.name=heart_scale", f"paths.data_dir={tmp_path / 'data'}"]
    run_dir = tmp_path / "run"
    run(run_dir, *args)
    lines = (data / "heart_scale").read_text().splitlines(keepends=True)
    (data / "heart_scale").write_text("".join([lines[1], lines[0], *lines[2:]]))  # same size
    with pytest.raises(RunDirError, match=r"data file .*heart_scale: changed since the run read"):
        run(run_dir, *args)  # finished: refused, not its stale summary
    (run_dir / "summary.json").unlink()
    with pytest.raises(RunDirError, match=r"heart_scale: changed since the run read it"):
        run(run_dir, *args)  # interrupted: refused before resuming


# ---- checkpoints ---------------------------------------------------------------------------


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run(reference, "trainer.checkpoint_every=2")
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.checkpoint_every=2", steps=6)  # last.pt: step 6, previous.pt: step 4
    (run_dir / "summary.json").unlink()
    assert torch.load(run_dir / PREVIOUS, weights_only=True)["step"] == 4
    data = (run_dir / LAST).read_bytes()
    (run_dir / LAST).write_bytes(data[: len(data) // 2])  # truncated
    run(run_dir, "trainer.checkpoint_every=2")
    assert metrics(run_dir) == metrics(reference)
    log = (run_dir / "run.log").read_text()
    assert f"checkpoint {run_dir / LAST}:" in log and "resumed from the previous checkpoint" in log


def test_no_readable_checkpoint_names_the_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.checkpoint_every=2", steps=6)
    (run_dir / "summary.json").unlink()
    (run_dir / LAST).write_bytes(b"not a checkpoint")
    (run_dir / PREVIOUS).write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        run(run_dir, "trainer.checkpoint_every=2")
    message = str(err.value)
    assert str(run_dir / LAST) in message and str(run_dir / PREVIOUS) in message
    assert "never" not in message and "trainer.on_mismatch=restart" in message
    (run_dir / PREVIOUS).unlink()  # without a previous checkpoint: the same clear error
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        run(run_dir, "trainer.checkpoint_every=2")


class _Payload:
    """What a planted checkpoint would carry: unpickling it runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_planted_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    run(reference, "trainer.checkpoint_every=2")
    run_dir, marker = tmp_path / "run", tmp_path / "payload-ran"
    run(run_dir, "trainer.checkpoint_every=2", steps=6)
    (run_dir / "summary.json").unlink()
    good = torch.load(run_dir / LAST, weights_only=True)
    torch.save({**good, "pending": _Payload(marker)}, run_dir / LAST)
    # last.pt planted: refused unread, named, and the run resumes from previous.pt exactly
    run(run_dir, "trainer.checkpoint_every=2")
    assert not marker.exists() and metrics(run_dir) == metrics(reference)
    log = (run_dir / "run.log").read_text()
    assert f"{run_dir / LAST} holds a reference to" in log and "refused unread" in log
    # both planted: no resume, an error that names the files; the payload never runs
    (run_dir / "summary.json").unlink()
    for path in (run_dir / LAST, run_dir / PREVIOUS):
        torch.save({**good, "pending": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="no readable checkpoint") as err:
        run(run_dir, "trainer.checkpoint_every=2")
    assert str(run_dir / PREVIOUS) in str(err.value) and not marker.exists()


def test_planted_dcp_metadata_is_refused_without_running_it(tmp_path: Path) -> None:
    """DCP reads .metadata with plain pickle: a sharded resume vets it first."""
    model = torch.nn.Linear(3, 2)
    optimizer = AMAdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    name = save_sharded(model, optimizer, tmp_path, step=1)
    load_sharded(model, optimizer, tmp_path / name)  # DCP's own metadata passes
    marker = tmp_path / "payload-ran"
    metadata = tmp_path / name / ".metadata"
    metadata.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match="refused unread") as err:
        load_sharded(model, optimizer, tmp_path / name)
    assert str(metadata) in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def test_checkpoint_with_the_older_numpy_rng_state_still_resumes(tmp_path: Path) -> None:
    """Checkpoints from before the weights_only format kept numpy's state as (str, array, ...)."""
    reference = tmp_path / "reference"
    run(reference, "trainer.checkpoint_every=2")
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.checkpoint_every=2", steps=6)
    (run_dir / "summary.json").unlink()
    ckpt = torch.load(run_dir / LAST, weights_only=True)
    state = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (
        state["bit_generator"],
        state["key"].numpy().astype(np.uint32),
        state["pos"],
        state["has_gauss"],
        state["cached_gaussian"],
    )
    torch.save(ckpt, run_dir / LAST)
    run(run_dir, "trainer.checkpoint_every=2")
    assert metrics(run_dir) == metrics(reference)
    assert "resumed from the previous" not in (run_dir / "run.log").read_text()


@pytest.fixture
def read_only() -> Iterator[list[Path]]:
    """Make folders read-only (for root, whom permissions do not stop: chattr +i)."""
    made: list[Path] = []
    yield made
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        path.chmod(0o755)


def _make_read_only(path: Path, made: list[Path]) -> None:
    made.append(path)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i")
    else:
        path.chmod(0o555)


def test_read_only_run_dir(tmp_path: Path, read_only: list[Path]) -> None:
    """Finished: its summary is read without writing anything. Interrupted: a clear error
    naming the directory, before any work."""
    done, stopped = tmp_path / "done", interrupted(tmp_path)
    first = run(done)
    for path in (done, stopped):
        _make_read_only(path, read_only)
    assert run(done) == first
    with pytest.raises(RunDirError, match=f"cannot write to the run directory {stopped}"):
        run(stopped)


def test_unwritable_checkpoint_names_the_file(tmp_path: Path, read_only: list[Path]) -> None:
    """A checkpoint that cannot be written (full disk, read-only folder) is an error naming the
    file and what to do; the checkpoint before it is left intact."""
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.checkpoint_every=4", steps=4)
    (run_dir / "summary.json").unlink()
    _make_read_only(run_dir / "checkpoints", read_only)
    with pytest.raises(CheckpointError) as err:
        run(run_dir, "trainer.checkpoint_every=4")
    assert f"cannot write the checkpoint {run_dir / LAST}" in str(err.value)
    assert "re-run the same command" in str(err.value)
    assert torch.load(run_dir / LAST, weights_only=True)["step"] == 4


# ---- config validation ---------------------------------------------------------------------

INVALID = [
    ("trainer.max_steps=0", "trainer.max_steps=0: must be an integer >= 1"),
    ("trainer.max_steps=abc", "trainer.max_steps='abc': must be an integer >= 1"),
    ("trainer.max_steps=2.5", "trainer.max_steps=2.5: must be an integer >= 1"),
    ("trainer.log_every=0", "trainer.log_every=0: must be an integer >= 1"),
    ("trainer.eval_every=-1", "trainer.eval_every=-1: must be an integer >= 0"),
    ("trainer.checkpoint_every=-5", "trainer.checkpoint_every=-5: must be an integer >= 0"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0.0: must be null or a number > 0"),
    ("trainer.grad_clip=abc", "trainer.grad_clip='abc': must be null or a number > 0"),
    ("trainer.accumulate_grad_batches=0", "accumulate_grad_batches=0: must be an integer >= 1"),
    ("trainer.scheduler.name=linear", "scheduler.name='linear': must be constant, cosine or step"),
    ("trainer.scheduler.warmup_steps=-1", "warmup_steps=-1: must be an integer >= 0"),
    ("trainer.scheduler.milestones=[a]", "trainer.scheduler.milestones"),
    ("trainer.scheduler.gamma=0", "trainer.scheduler.gamma=0.0: must be a number > 0"),
    ("trainer.scheduler.min_lr_ratio=2", "min_lr_ratio=2.0: must be a number in [0, 1]"),
    ("trainer.dtype=float8", "trainer.dtype='float8': must be null, float32, float64"),
    ("trainer.precision=fp16", "trainer.precision='fp16': must be null or bf16"),
    ("trainer.device=tpu", "trainer.device='tpu': must be auto, cpu, cuda or cuda:<index>"),
    ("trainer.distributed=horovod", "trainer.distributed='horovod': must be ddp or fsdp"),
    ("trainer.seed=1.5", "trainer.seed=1.5: must be an integer >= 0"),
    ("trainer.seed=-1", "trainer.seed=-1: must be an integer >= 0"),
    ("trainer.num_threads=0", "trainer.num_threads=0: must be null or an integer >= 1"),
    ("trainer.compile=maybe", "trainer.compile='maybe': must be true or false"),
    ("trainer.progress=2", "trainer.progress=2: must be true or false"),
    ("trainer.on_mismatch=ignore", "trainer.on_mismatch='ignore': must be refuse or restart"),
    ("trainer.max_nonfinite_in_row=0", "max_nonfinite_in_row=0: must be an integer >= 1"),
    ("optimizer.lam=abc", "optimizer.lam='abc': must be a number"),
    ("optimizer.lr=fast", "optimizer.lr='fast': must be a number or auto"),
    ("optimizer.fused=1", "optimizer.fused=1: must be true or false"),
    ("+optimizer.lr_scal=2", "optimizer.lr_scal: not a setting of optimizer am_sgd"),
    ("optimizer.lr_scale=2 optimizer.lr=0.1", "optimizer.lr_scale=2: multiplies the problem's"),
]


@pytest.mark.parametrize(("override", "message"), INVALID, ids=[o for o, _ in INVALID])
def test_invalid_values_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_config(override.split()))
    assert message in str(err.value)


def test_every_trainer_key_is_validated() -> None:
    """The table above covers every trainer key (a new key needs a rule and a row)."""
    cfg = compose_config([])
    keys = {k for k in cfg.trainer if k != "scheduler"} | {
        f"scheduler.{k}" for k in cfg.trainer.scheduler
    }
    tested = {o.split("=")[0].removeprefix("trainer.") for o, _ in INVALID}
    assert keys - tested == set()
    validate(cfg)  # the defaults are valid
    for experiment in ("figure1", "figure3", "figure5"):
        validate(compose_config([f"experiment={experiment}"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override", ["trainer.max_steps=0", "+optimizer.lr_scal=2", "optimizer.lr_scale=2"]
)
def test_invalid_value_fails_before_any_work_with_a_short_message(
    tmp_path: Path, override: str
) -> None:
    proc = run_amm(
        override,
        "optimizer.lr=0.1",
        "hydra.run.dir=runs/r",
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        check=False,
    )
    output = proc.stdout + proc.stderr
    key = override.removeprefix("+").split("=")[0]
    assert proc.returncode == 1 and f"{key}" in output and "ERROR" in output
    assert "Traceback" not in output and len(output.splitlines()) <= 3
    assert not (tmp_path / "runs").exists()  # a refused config leaves no run directory


# ---- divergence, skipped steps, what a run says ---------------------------------------------


def test_diverged_run_is_marked_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="amm"):
        out = run(tmp_path, "optimizer=sgd", "optimizer.lr=1e300")
    assert out["diverged"] is True and "at step" in str(out["diverged_reason"])
    assert summary(tmp_path)["diverged"] is True
    assert "DIVERGED" in caplog.text
    fine = run(tmp_path / "fine")
    assert fine["diverged"] is False and "diverged_reason" not in fine


def test_nonfinite_skip_counts_logs_and_stops(tmp_path: Path) -> None:
    out = run(
        tmp_path,
        "optimizer.lr=1e300",
        "optimizer.nonfinite=skip",
        "trainer.max_nonfinite_in_row=3",
        steps=50,
    )
    records = metrics(tmp_path)
    assert out["diverged"] is True and "3 updates in a row skipped" in str(out["diverged_reason"])
    assert out["skipped_steps"] == 3 and out["step"] == records[-1]["step"] < 50
    assert sum(r["skipped_steps"] for r in records) == 3
    log = (tmp_path / "run.log").read_text()
    assert log.count("non-finite gradient, update skipped") == 3


@pytest.mark.slow
def test_start_and_end_lines(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path)
    args = [*SMALL, "trainer.max_steps=4", "hydra.run.dir=r"]
    first = run_amm(*args, cwd=tmp_path, env=env)
    again = run_amm(*args, cwd=tmp_path, env=env)
    run_dir = tmp_path / "r"
    assert f"{run_dir}: new run (4 steps" in first.stdout
    assert f"finished at step 4; summary: {run_dir / 'summary.json'}" in first.stdout
    assert f"{run_dir}: finished already; summary: {run_dir / 'summary.json'}" in again.stdout
    log = (run_dir / "run.log").read_text()  # run.log holds the log of both starts
    assert "new run" in log and "finished already" in log


# ---- experiments.reproduce: failed jobs, typos --------------------------------------------------------


@pytest.mark.slow
def test_reproduce_finishes_the_other_runs_and_names_the_failed_one(tmp_path: Path) -> None:
    """One job of a sweep fails (its run directory is held by another process): the others
    still run, the failed one is listed with its log, the exit code is non-zero and no artifact
    is drawn."""
    env = subprocess_env(tmp_path)
    cmd = [sys.executable, "-m", "experiments.reproduce", "figure1", "--scale", "smoke"]
    cmd += ["--out-dir", "out", "trainer.max_steps=3"]
    dry = subprocess.run([*cmd, "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    run_dirs = [Path(line.strip()) for line in dry.stdout.splitlines() if line.startswith("  runs")]
    assert len(run_dirs) > 2, dry.stdout + dry.stderr
    blocked = tmp_path / run_dirs[1]
    with RunLock(blocked):  # held by this (live) process
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"1 of {len(run_dirs)} runs have no summary.json" in output
    assert f"{run_dirs[1]}  (log: {run_dirs[1] / 'run.log'})" in output
    assert "CalledProcessError" not in output
    done = [d for d in run_dirs if (tmp_path / d / "summary.json").exists()]
    assert len(done) == len(run_dirs) - 1  # every other run finished
    assert not (tmp_path / "out").exists()  # no half artifact


@pytest.mark.slow
def test_reproduce_override_typo_is_a_short_message(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "experiments.reproduce",
        "figure1",
        "--scale",
        "smoke",
        "--dry-run",
    ]
    proc = subprocess.run(
        [*cmd, "trainer.max_stepz=3"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "Could not override 'trainer.max_stepz'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 6, proc.stderr
