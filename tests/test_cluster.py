"""Scale-out: FSDP2 under torchrun, and SLURM on a real single-node cluster started here.

FSDP2 (no SLURM needed): 2 CPU processes under torchrun equal one process, and their sharded
checkpoint resumes in one process. SLURM: a module fixture starts slurmctld + slurmd + munged on
localhost (scripts/slurm_local.sh, which installs Debian's slurm-wlm and munge when missing; root
only), and the tests send jobs the ways a researcher does: a Hydra multirun through the submitit
launcher (``hydra/launcher=local_slurm``: one job array), a multi-task submitit job (one DDP run
over its SLURM tasks) and the sbatch torchrun template. Jobs are interrupted the ways a cluster
interrupts them (the time-limit signals, ``scontrol requeue``) and must resume to the metrics of
an uninterrupted run. DDP under torchrun alone is tested in tests/test_trainer.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from suite_helpers import REPO_ROOT, compose_config, metrics, subprocess_env

from amm.trainer import CHECKPOINT, train
from experiments.reproduce import main as reproduce_main
from experiments.reproduce import uses_cluster

SCRIPT = REPO_ROOT / "scripts" / "slurm_local.sh"
TEMPLATE = REPO_ROOT / "slurm" / "torchrun.sbatch"
# On the default problem (breast cancer, full-batch logistic regression) a beta that changes
# every step (exact plane bias: the closure path, with the loss all-reduced); rows are sharded
# over ranks.
AM_SGD_EXACT = ["optimizer=am_sgd", "optimizer.plane_bias=exact"]
# For FSDP: 3 classes (LIBSVM dna.scale, 2000 x 180, from the shared data folder), so both ranks
# hold rows of the weight (3, 180) and beta needs the all-reduce of their partial sums (breast
# cancer's weight (1, 30) would sit whole on rank 0, with nothing to complete).
DNA = ["dataset=libsvm", "dataset.name=dna.scale"]
# AM-SGD there at lr 1 (about 4 / L): beta takes 7 values in 15 steps (at 1 / L, from the
# third step on it stays at 0.9).
DNA_AM_SGD = [*AM_SGD_EXACT, *DNA, "optimizer.lr=1.0"]
# A quadratic run of a second or two with frequent checkpoints, to be interrupted twice.
QUADRATIC = [
    "experiment=figure1",
    "optimizer=am_sgd",
    "trainer.max_steps=2000",
    "trainer.log_every=7",
    "trainer.checkpoint_every=25",
]


def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``cmd`` in the background; its output goes to a file (a pipe could fill up)."""
    log = cwd / "output.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> Any:
    """Poll ``condition()`` until it is truthy (returned); fail after ``timeout`` seconds or when
    ``proc`` ends first (showing ``log``)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc is not None and proc.poll() is not None:
            output = log.read_text() if log is not None else ""
            raise AssertionError(f"ended ({proc.returncode}) before {what}:\n{output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def checkpoint_step(run_dir: Path) -> int:
    """Step of the run's last checkpoint (0: none yet)."""
    try:
        return int(torch.load(run_dir / CHECKPOINT, weights_only=True)["step"])
    except (FileNotFoundError, EOFError, RuntimeError):  # none yet, or being replaced
        return 0


def meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "meta.json").read_text())


def last_logged_step(run_dir: Path) -> int:
    """Step of the last record in metrics.jsonl (0: none, or a line being written)."""
    try:
        return int(json.loads(metrics_lines(run_dir)[-1])["step"])
    except (IndexError, json.JSONDecodeError):
        return 0


def metrics_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def resumed_from(run_dir: Path) -> int:
    """``resumed_from_step`` of the latest start of a run (0 while meta.json is being written)."""
    try:
        return int(meta(run_dir)["resumed_from_step"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def assert_close_to(single: list[dict[str, Any]], other: list[dict[str, Any]]) -> None:
    """Records of a multi-process run equal the single-process ones (same global batch).

    Losses and betas to 1e-9 (the ranks' partial sums are added in another order); accuracy is
    the mean of the ranks' shard accuracies, whose shards differ by one row (569 = 285 + 284).
    """
    assert [r["step"] for r in other] == [r["step"] for r in single]
    for a, b in zip(single, other, strict=True):
        for key in ("loss", "objective_gap", "beta"):
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), (a["step"], key)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=2e-3)
    assert len({round(r["beta"], 6) for r in single if "beta" in r}) > 5  # beta really varies


def reference_run(tmp_path: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Metrics of an uninterrupted single-process run, in this process."""
    run_dir = tmp_path / "reference"
    train(compose_config([*overrides, "trainer.progress=false"]), run_dir)
    return metrics(run_dir)


# ---- FSDP2 under torchrun (no SLURM) ---------------------------------------------------------


@pytest.mark.slow
def test_fsdp_two_ranks_equal_one_and_the_checkpoint_resumes_on_one(
    tmp_path: Path, shared_data: Path
) -> None:
    """FSDP2 on 2 CPU processes (gloo) with AM-SGD: its beta is the single-process beta (the
    optimizer all-reduces the sums of its shards); stopped by SIGTERM after a checkpoint, the
    run resumes in ONE process from the world-size-2 DCP checkpoint to the same metrics."""
    args = [*DNA_AM_SGD, "trainer.max_steps=100", "trainer.checkpoint_every=5"]
    single = reference_run(tmp_path, args)
    run_dir = tmp_path / "fsdp"
    fsdp = [*args, "trainer.distributed=fsdp", "trainer.progress=false"]
    env = subprocess_env(tmp_path, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "amm.run", *fsdp, f"hydra.run.dir={run_dir}"]
    proc, log = start(cmd, tmp_path, env)
    wait_for(lambda: checkpoint_step(run_dir) >= 10, 180, "a checkpoint", proc, log)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to the workers, which checkpoint
    assert proc.wait(timeout=120) != 0, log.read_text()
    ckpt = torch.load(run_dir / CHECKPOINT, weights_only=True)
    assert 10 <= ckpt["step"] < 100 and not (run_dir / "summary.json").exists()
    assert (
        "model" not in ckpt and (run_dir / "checkpoints" / ckpt["sharded"] / ".metadata").exists()
    )
    assert meta(run_dir)["world_size"] == 2

    train(compose_config(fsdp), run_dir)  # here: world size 1, loads the sharded checkpoint
    assert meta(run_dir)["world_size"] == 1
    assert meta(run_dir)["resumed_from_step"] == ckpt["step"]
    assert_close_to(single, metrics(run_dir))


def run_fsdp(tmp_path: Path, args: list[str], **env: str) -> list[dict[str, Any]]:
    """Metrics of a 2-rank FSDP2 run under torchrun."""
    run_dir = tmp_path / "fsdp"
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "amm.run", *args, "trainer.distributed=fsdp", "trainer.progress=false"),
        f"hydra.run.dir={run_dir}",
    ]
    proc_env = subprocess_env(tmp_path, OMP_NUM_THREADS="1", **env)
    proc = subprocess.run(cmd, cwd=tmp_path, env=proc_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return metrics(run_dir)


@pytest.mark.slow
def test_fsdp_accumulating_two_full_batches_equals_one_process(
    tmp_path: Path, shared_data: Path
) -> None:
    """FSDP2 with trainer.accumulate_grad_batches=2 (reduce-scatter on the second micro-batch
    only): each micro-batch is the rank's full shard, so the updates are the single-process ones."""
    args = [*DNA_AM_SGD, "trainer.max_steps=15"]
    single = reference_run(tmp_path, args)
    assert_close_to(single, run_fsdp(tmp_path, [*args, "trainer.accumulate_grad_batches=2"]))


@pytest.mark.slow
def test_fsdp_with_the_fused_step_equals_one_process(tmp_path: Path, shared_data: Path) -> None:
    """AM-AdamW's fused passes on FSDP2's DTensor shards (fp32; on a CPU in Triton's
    interpreter): per-shard partial sums, one all-reduce, then the same beta as one process
    (to 1e-4: fp32 sums in another order, and beta is a ratio of differences of them)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("CPU shards need Triton's interpreter, which is set only without a GPU")
    args = [
        *(*DNA, "trainer.progress=false", "optimizer=am_adamw", "optimizer.lr=0.05"),
        *("trainer.max_steps=15", "trainer.dtype=float32"),
    ]
    single = reference_run(tmp_path, args)  # the foreach step
    fused = run_fsdp(tmp_path, [*args, "optimizer.fused=true"], TRITON_INTERPRET="1")
    assert [r["step"] for r in fused] == [r["step"] for r in single]
    for a, b in zip(single, fused, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
        assert ("beta" in a) == ("beta" in b)
        if "beta" in a:
            assert b["beta"] == pytest.approx(a["beta"], abs=1e-4), a["step"]
    assert len({round(r["beta"], 3) for r in fused if "beta" in r}) > 3  # beta varies


# ---- SLURM -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running single-node cluster (slurmctld, slurmd, munged); its SLURM_CONF path."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root; run the tests as root")
    install = subprocess.run([SCRIPT, "install"], capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"cannot install slurm-wlm and munge (apt-get):\n{install.stderr[-2000:]}")
    cluster = tmp_path_factory.mktemp("slurm")
    start = subprocess.run([SCRIPT, "start", cluster], capture_output=True, text=True)
    assert start.returncode == 0, f"the SLURM cluster did not start:\n{start.stdout}{start.stderr}"
    yield str(cluster / "slurm.conf")
    subprocess.run([SCRIPT, "stop", cluster], check=True)


def slurm_env(tmp_path: Path, conf: str, **extra: str) -> dict[str, str]:
    return subprocess_env(tmp_path, SLURM_CONF=conf, OMP_NUM_THREADS="1", **extra)


def slurm(env: dict[str, str], *args: str) -> str:
    """Run a SLURM command (squeue, scancel, scontrol) on the test cluster; its output."""
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout


def slurm_job(run_dir: Path) -> str:
    """The SLURM job that ran a run (an array task has a job id of its own)."""
    return meta(run_dir)["slurm"]["SLURM_JOB_ID"]


@pytest.mark.slow
def test_multirun_job_array_with_a_requeued_job(slurm_conf: str, tmp_path: Path) -> None:
    """A multirun of 2 jobs through the submitit launcher runs as one job array. One job is
    interrupted twice: by SIGUSR2, which SLURM sends `signal_delay_s` before the time limit (the
    trainer checkpoints, submitit requeues the job), then by `scontrol requeue` (SIGTERM, as for a
    pre-emption). It resumes each time in its run directory. Both jobs' metrics equal those of
    uninterrupted local runs, nothing logged twice."""
    env = slurm_env(tmp_path, slurm_conf)
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "amm.run", "-m", *QUADRATIC, "optimizer.plane_bias=exact,linear"]
    cmd += ["trainer.progress=false", "hydra/launcher=local_slurm", f"hydra.sweep.dir={sweep}"]
    proc, log = start(cmd, tmp_path, env)
    ckpt = wait_for(
        lambda: next(sweep.glob("*exact*/checkpoints/last.pt"), None), 180, "", proc, log
    )
    run_dir = ckpt.parents[1]
    wait_for(lambda: checkpoint_step(run_dir), 180, "a checkpoint", proc, log)
    job = slurm_job(run_dir)
    slurm(env, "scancel", "--signal=USR2", job)
    first = wait_for(lambda: resumed_from(run_dir), 180, "the first restart", proc, log)
    wait_for(lambda: last_logged_step(run_dir) > first, 180, "training after it", proc, log)
    slurm(env, "scontrol", "requeue", job)
    assert proc.wait(timeout=300) == 0, log.read_text()

    assert 0 < first < meta(run_dir)["resumed_from_step"] < 2000
    assert meta(run_dir)["slurm"]["SLURM_RESTART_COUNT"] == "2"  # requeued twice by SLURM
    run_dirs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(run_dirs) == 2 and run_dir in run_dirs
    assert len({meta(d)["slurm"]["SLURM_ARRAY_JOB_ID"] for d in run_dirs}) == 1  # one array
    for bias, done in zip(("exact", "linear"), run_dirs, strict=True):
        assert f"optimizer.plane_bias={bias}" in done.name
        reference = reference_run(tmp_path / bias, [*QUADRATIC, f"optimizer.plane_bias={bias}"])
        assert metrics(done) == reference  # every record once, as without the interruptions


def test_reproduce_passes_the_launcher_to_every_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`experiments.reproduce ... hydra/launcher=slurm` sends every sweep block with the launcher (all at
    once); `--collect` launches nothing and names the runs that have not finished."""
    monkeypatch.chdir(tmp_path)
    assert uses_cluster(["hydra/launcher=slurm"]) and not uses_cluster(["hydra/launcher=basic"])
    reproduce_main(["figure1", "--scale", "smoke", "--dry-run", "hydra/launcher=slurm"])
    commands = [c for c in capsys.readouterr().out.splitlines() if c.startswith("python -m")]
    assert len(commands) == 3 and all(c.endswith(" hydra/launcher=slurm") for c in commands)
    with pytest.raises(SystemExit, match=r"(\d+) of \1 runs have no summary.json"):
        reproduce_main(["figure1", "--scale", "smoke", "--collect", "hydra/launcher=slurm"])
    assert not (tmp_path / "runs").exists()  # nothing was launched


def fake_slurm_bin(tmp_path: Path, ping: str, code: int) -> Path:
    """sbatch and scontrol stand-ins: `scontrol ping` prints ``ping`` and exits ``code``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "scontrol"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho '{ping}' >&2\nexit {code}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_slurm_sweep_without_a_controller_is_one_line_and_submits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    down = "scontrol: error: fetch_config: DNS SRV lookup failed"
    monkeypatch.setenv("PATH", f"{fake_slurm_bin(tmp_path, down, 1)}:{os.environ['PATH']}")
    with pytest.raises(SystemExit) as err:
        reproduce_main(["figure1", "--scale", "smoke", "hydra/launcher=slurm"])
    message = str(err.value)
    assert "no SLURM controller answered" in message and down in message
    assert "SLURM_CONF" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing was submitted, no run directory made
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no SLURM commands at all
    with pytest.raises(SystemExit, match="sbatch/scontrol are not on PATH"):
        reproduce_main(["figure1", "--scale", "smoke", "hydra/launcher=slurm"])


@pytest.mark.parametrize("preset", ["slurm", "local_slurm"])
def test_launcher_presets_requeue_timed_out_jobs(preset: str) -> None:
    """The presets are submitit's SLURM launcher with requeueing on: a job that reaches its time
    limit is signalled early enough to checkpoint, then requeued."""
    cfg = compose_config(["experiment=figure1", f"hydra/launcher={preset}"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.max_num_timeout > 0 and 0 < launcher.signal_delay_s < 60 * launcher.timeout_min
    assert launcher.name == "amm-figure1"


@pytest.mark.slow
def test_multi_task_job_is_one_ddp_run(slurm_conf: str, tmp_path: Path) -> None:
    """`hydra.launcher.tasks_per_node=2`: the job's two SLURM tasks are the two ranks of one DDP
    run (submitit gives the ranks), equal to the single-process run."""
    args = [*AM_SGD_EXACT, "trainer.max_steps=15"]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "amm.run", "-m", *args, "trainer.progress=false"]
    cmd += ["hydra/launcher=local_slurm", "hydra.launcher.tasks_per_node=2"]
    cmd += [f"hydra.sweep.dir={sweep}"]
    env = slurm_env(tmp_path, slurm_conf)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run_dir,) = [p.parent for p in sweep.glob("*/summary.json")]
    assert meta(run_dir)["world_size"] == 2
    assert_close_to(reference_run(tmp_path, args), metrics(run_dir))


@pytest.mark.slow
def test_torchrun_template_requeues_itself_at_the_time_limit(
    slurm_conf: str, tmp_path: Path
) -> None:
    """slurm/torchrun.sbatch on 1 node x 2 processes: at the time-limit signal (USR1 to the
    batch script) the workers checkpoint, the script requeues the job, and the restarted job
    resumes; its records equal the single-process run's.

    Deterministic: the run is far longer than the test (a million steps), so it cannot finish
    before the signal on any machine (a 60-step run used to, under load: the restart then found
    its summary). Once the restarted job has trained 10 steps past its resume step it is
    cancelled (SIGTERM: the workers checkpoint and stop), and its records are compared with a
    single-process run of as many steps."""
    args = [*AM_SGD_EXACT, "trainer.checkpoint_every=5"]
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    env = slurm_env(tmp_path, slurm_conf, PYTHON=sys.executable, NPROC_PER_NODE="2")
    sbatch = ["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2"]
    sbatch += [f"--output={log}", f"--chdir={tmp_path}", str(TEMPLATE)]
    overrides = [*args, "trainer.max_steps=1000000", f"hydra.run.dir={run_dir}"]
    job = slurm(env, *sbatch, *overrides).strip()

    def in_queue() -> bool:
        return bool(slurm(env, "squeue", "-h", "-j", job).strip())

    wait_for(lambda: checkpoint_step(run_dir) >= 10 or not in_queue(), 180, "a checkpoint")
    assert in_queue(), log.read_text()
    slurm(env, "scancel", "--batch", "--signal=USR1", job)  # what --signal=B:USR1@300 sends
    resumed = wait_for(lambda: resumed_from(run_dir), 300, "the restart")
    wait_for(lambda: last_logged_step(run_dir) >= resumed + 10, 300, "training after it")
    slurm(env, "scancel", job)  # stop the restarted job (its workers checkpoint on SIGTERM)
    wait_for(lambda: not in_queue(), 300, "the job to end")

    output = log.read_text()
    assert f"requeueing job {job}" in output and "restart 1:" in output, output
    assert not (run_dir / "summary.json").exists(), output  # stopped long before its end
    assert meta(run_dir)["world_size"] == 2 and meta(run_dir)["resumed_from_step"] >= 10
    done = metrics(run_dir)
    steps = [r["step"] for r in done]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] >= resumed + 10
    assert_close_to(reference_run(tmp_path, [*args, f"trainer.max_steps={steps[-1]}"]), done)
