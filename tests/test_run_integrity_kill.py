"""Kill -9 at many points of a run (issue 13): the resumed run equals an uninterrupted one.

A run that writes a metrics record every step and a checkpoint every other step spends most of
its time writing them; killing its process with SIGKILL after a random number of records lands
at random points of those writes (mid-record, mid-checkpoint, between the renames). Each killed
run is then re-run with the same command, to the end, and must equal the uninterrupted run bit
for bit: every metrics record (less the timing) and the final parameters.

``AMM_KILL_POINTS`` sets how many points are tried (default 8). Each point costs two process
starts, so the loop is marked slow.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest
import torch
from suite_helpers import amm_run_cmd, compose_config, metrics, run_amm, subprocess_env

from amm.checkpoint import LAST
from amm.trainer import train

RUN = [
    "experiment=figure1",
    "optimizer=am_sgd",
    "logger=none",
    "trainer.max_steps=400",
    "trainer.log_every=1",
    "trainer.checkpoint_every=2",
]
POINTS = int(os.environ.get("AMM_KILL_POINTS", "8"))


def kill_after(run_dir: Path, records: int, tmp: Path) -> int:
    """Start the run, SIGKILL it once ``metrics.jsonl`` has ``records`` lines; the number of
    lines it had (0 when the run ended first)."""
    proc = subprocess.Popen(
        amm_run_cmd(*RUN, f"hydra.run.dir={run_dir}"),
        cwd=tmp,
        env=subprocess_env(tmp),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    path = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                lines = path.read_bytes().count(b"\n")
            except FileNotFoundError:
                lines = 0
            if lines >= records:
                proc.kill()
                proc.wait()
                return lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return 0


def killed_during(run_dir: Path) -> str:
    """What the kill interrupted, as far as the files show: a record cut in the middle, a
    checkpoint being written (its temporary file), or neither."""
    notes = []
    path = run_dir / "metrics.jsonl"
    if path.exists() and path.read_bytes()[-1:] not in (b"", b"\n"):
        notes.append("mid-record")
    if list((run_dir / "checkpoints").glob("*.tmp")):
        notes.append("mid-checkpoint")
    return f" ({', '.join(notes)})" if notes else ""


@pytest.mark.slow
def test_kill_9_at_many_points_resumes_bit_for_bit(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    train(compose_config([*RUN, "trainer.progress=false"]), reference)
    expected = metrics(reference)
    final = torch.load(reference / LAST, weights_only=True)["model"]["x"]

    rng = random.Random(0)
    tried, exact, report = 0, 0, []
    for point in range(POINTS):
        run_dir = tmp_path / f"run{point}"
        at = kill_after(run_dir, rng.randrange(1, 400), tmp_path)
        where = killed_during(run_dir)
        run_amm(*RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=subprocess_env(tmp_path))
        tried += 1
        same = metrics(run_dir) == expected and torch.equal(
            torch.load(run_dir / LAST, weights_only=True)["model"]["x"], final
        )
        exact += same
        report.append(f"killed after {at} records{where}: {'exact' if same else 'DIFFERENT'}")
    print(f"kill -9 points tried: {tried}, resumed exactly: {exact}\n" + "\n".join(report))
    assert exact == tried, report
