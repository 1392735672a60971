"""Reproduce one paper artifact: run its sweep, then draw it.

    python -m experiments.reproduce figure3 --scale smoke|reduced|paper [--seeds N] [--dry-run|--collect]
        [overrides...]

1. Composes ``experiment=<artifact> scale=<scale>`` and reads its ``sweep.<scale>`` blocks.
2. Runs each block as one Hydra multirun, in a subprocess:
   ``python -m amm.run -m experiment=<artifact> scale=<scale> <block overrides> <overrides>``
   (printed and recorded), once per seed: the experiment's ``seeds`` (per scale; ``--seeds N``
   overrides it) adds ``trainer.seed=0,...,N-1`` to every block, unless it is ``deterministic``
   (full-batch problems: one run each, no seed changes them). Blocks whose runs have all finished are not launched again, and
   pre-empted runs resume from their checkpoints, so the same command can simply be re-run. Extra overrides go to every block, e.g.
   ``hydra/launcher=slurm`` (configs/hydra/launcher/) to run the jobs on a cluster: then every
   block is started at once (each sends one job array and waits for it), so all arrays queue
   together. ``--collect`` launches nothing: it makes the artifact from the runs on disk, e.g.
   when the jobs were sent from a login session that has ended (re-sending them while they are
   still queued or running would start a second job in the same run directories).
3. Calls ``experiments.<artifact>.make(run_dirs, out_dir, scale)`` with the run directories of
   exactly these jobs, and writes ``commands.txt`` and ``provenance.json`` next to the outputs
   in ``results/<artifact>/<scale>/`` (or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, read_write

from amm.atomic import atomic_write
from amm.config import CONFIG_DIR, SCALES, require_config_dir
from amm.provenance import provenance

# The paper's artifacts: this package (experiments/ of the clone, next to configs/). The
# library (amm/) knows nothing of them: the driver lives here, with the paper.
EXPERIMENTS_DIR = Path(__file__).resolve().parent


class Mode(enum.Enum):
    """What ``reproduce`` does: run the sweep and draw (``RUN``), only print the commands and
    run directories (``DRY_RUN``, ``--dry-run``), or draw from the runs on disk (``COLLECT``,
    ``--collect``)."""

    RUN = "run"
    DRY_RUN = "dry_run"
    COLLECT = "collect"


def hydra_jobs(overrides: list[str], naming: Any = None) -> list[tuple[list[str], str]]:
    """The jobs of a multirun as Hydra's basic sweeper makes them, each with the
    ``override_dirname`` Hydra gives it under ``naming`` (``hydra.job.config.override_dirname``;
    "" without). The one place that uses Hydra's private APIs (``hydra._internal``, pinned by
    hydra-core<1.4; tests/test_reproduce.py checks them against a composed config)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parser = OverridesParser.create()
    jobs = BasicSweeper.split_arguments(parser.parse_overrides(overrides), max_batch_size=None)[0]
    out = []
    for job in jobs:
        name = ""
        if naming is not None:
            app = [o for o in parser.parse_overrides(job) if not o.is_hydra_override()]
            exclude = list(naming.exclude_keys)
            name = get_overrides_dirname(app, exclude, naming.item_sep, naming.kv_sep)
        out.append((list(job), name))
    return out


def available() -> list[str]:
    """Artifacts: experiment configs that have a module ``experiments/<name>.py``."""
    return sorted(
        p.stem
        for p in (CONFIG_DIR / "experiment").glob("*.yaml")
        if (EXPERIMENTS_DIR / f"{p.stem}.py").exists()
    )


def override_value(value: Any) -> str:
    """A YAML value of a sweep block as Hydra override syntax (``true``, ``null``, lists)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def sweep_blocks(artifact: str, scale: str, n_seeds: int | None = None) -> list[list[str]]:
    """The experiment's sweep blocks at ``scale``, each as a list of Hydra overrides.

    Every block names the method its runs are drawn as (``method: <label>``), or the experiment
    sets one ``method`` for all: the artifacts read the label back from each run's config.
    No ``sweep.<scale>``: one run of the experiment as it stands; ``sweep.<scale>: []``: no
    runs at all (an artifact computed without training, e.g. figure2).
    """
    cfg = compose("config", overrides=[f"experiment={artifact}", f"scale={scale}"])
    sweep = OmegaConf.to_container(cfg.sweep, resolve=True) if cfg.sweep is not None else {}
    assert isinstance(sweep, dict)
    blocks = sweep.get(scale)
    if blocks is None:
        blocks = [{}]  # no sweep: one run of the experiment as it stands
    if not blocks:  # run-less artifact (e.g. figure2)
        return []
    seeds = seed_override(artifact, scale, cfg.seeds, n_seeds)
    for i, block in enumerate(blocks):
        if seeds and "trainer.seed" in block:
            raise ValueError(
                f"configs/experiment/{artifact}.yaml: block {i} of sweep.{scale} sets "
                "trainer.seed, which `seeds` sets for every block; remove it from the block"
            )
        if block.get("method", cfg.method) is None:
            raise ValueError(
                f"configs/experiment/{artifact}.yaml: block {i} of sweep.{scale} has no `method` "
                f"label; add `method: <label>` to it (the label its runs are drawn as), e.g. "
                f"method: am_mgd"
            )
    return [[f"{k}={override_value(v)}" for k, v in block.items()] + seeds for block in blocks]


def seed_override(artifact: str, scale: str, seeds: Any, n_seeds: int | None) -> list[str]:
    """``trainer.seed=0,...,n-1`` for the experiment's ``seeds`` at ``scale`` (or ``n_seeds``).

    ``seeds: deterministic`` (full-batch runs: every seed gives the same numbers) adds nothing,
    and asking for several seeds of it is an error rather than n identical runs.
    """
    where = f"configs/experiment/{artifact}.yaml"
    if seeds == "deterministic":
        if n_seeds not in (None, 1):
            raise ValueError(
                f"{where} says `seeds: deterministic` (full-batch runs: every seed gives the same "
                f"numbers), so --seeds {n_seeds} would repeat identical runs; leave --seeds out"
            )
        return []
    if n_seeds is None:
        if seeds is None or isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(
                f"{where}: `seeds` is {seeds!r}; declare how many seeds its runs take at each "
                "scale, e.g. `seeds: ${by_scale:1,3,1}`, or `seeds: deterministic` for full-batch "
                "runs that no seed changes"
            )
        n_seeds = seeds
    if n_seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {n_seeds}")
    return ["trainer.seed=" + ",".join(str(s) for s in range(n_seeds))]


def path_replaces_names(blocks: list[list[str]], overrides: list[str]) -> list[list[str]]:
    """The blocks without their ``dataset.name`` when the user's overrides give
    ``dataset.path=FILE``: that file is the data set, so a block's sweep over built-in set
    names would only run the same file once per name (figure3 reduced: 7 identical copies)."""
    paths = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("dataset.path=")]
    if not paths or paths[-1] in ("", "null"):
        return blocks
    return [[o for o in b if o.split("=", 1)[0].lstrip("+~") != "dataset.name"] for b in blocks]


def is_seed(override: str) -> bool:
    """Whether an override sets ``trainer.seed``."""
    return override.split("=", 1)[0].lstrip("+~") == "trainer.seed"


def uses_cluster(overrides: list[str]) -> bool:
    """Whether the overrides pick a launcher other than Hydra's basic one (jobs run elsewhere)."""
    return any(o.startswith("hydra/launcher=") and o != "hydra/launcher=basic" for o in overrides)


def uses_slurm(overrides: list[str]) -> bool:
    return any(o.startswith("hydra/launcher=") and "slurm" in o for o in overrides)


def check_slurm_controller(timeout_s: float = 20.0) -> None:
    """One line, before any job is submitted, when no SLURM controller answers here (instead of
    a submitit traceback per sweep block)."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise SystemExit(
            "CLUSTER=slurm (hydra/launcher=slurm): sbatch/scontrol are not on PATH here. Run "
            "the command on the cluster's login node, or leave CLUSTER out to run locally."
        )
    try:
        ping = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        answer = (ping.stdout + ping.stderr).strip()
        ok = ping.returncode == 0 and "UP" in answer
    except subprocess.TimeoutExpired:
        answer, ok = f"no answer in {timeout_s:g} s", False
    if not ok:
        first = answer.splitlines()[0] if answer else f"exit {ping.returncode}"
        raise SystemExit(
            f"CLUSTER=slurm: no SLURM controller answered (`scontrol ping`: {first}). Start "
            "slurmctld, or point at the cluster's with SLURM_CONF=/path/to/slurm.conf; nothing "
            "was submitted."
        )


def expand_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun, each a list of plain overrides, as Hydra's basic sweeper makes them."""
    return [job for job, _ in hydra_jobs(overrides)]


def run_git(run_dir: Path) -> Any:
    """The git state a run recorded when it started (meta.json), or None."""
    try:
        return json.loads((run_dir / "meta.json").read_text()).get("git")
    except (OSError, json.JSONDecodeError):
        return None


def run_machines(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """The (hostname, cpu, torch) each run recorded in its meta.json, with how many runs."""
    seen: dict[tuple[str, str, str], int] = {}
    for d in run_dirs:
        try:
            meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        key = (
            str(meta.get("hostname", "?")),
            str(meta.get("cpu", "?")),
            str(meta.get("torch", "?")),
        )
        seen[key] = seen.get(key, 0) + 1
    return [
        {"hostname": h, "cpu": c, "torch": t, "count": n} for (h, c, t), n in sorted(seen.items())
    ]


def job_run_dirs(overrides: list[str]) -> list[Path]:
    """Run directories of the jobs of one multirun, in launch order.

    The first job's Hydra config is composed; the others differ from it only in the values of
    the overrides, so each one's ``hydra.sweep.dir/subdir`` is that config with its own
    ``override_dirname``, computed as Hydra computes it (one composition per block instead of
    one per job: a sweep of hundreds of jobs starts in a second). A block that sweeps a
    ``hydra.*`` value composes every job.
    """
    jobs = expand_jobs(overrides)
    parser = OverridesParser.create()
    if any(
        o.is_hydra_override() and o.is_sweep_override() for o in parser.parse_overrides(overrides)
    ):
        return [composed_run_dir(job) for job in jobs]
    cfg = compose("config", overrides=jobs[0], return_hydra_config=True)
    dirs = []
    for _, name in hydra_jobs(overrides, cfg.hydra.job.config.override_dirname):
        with read_write(cfg.hydra.job):
            cfg.hydra.job.override_dirname = name
        dirs.append(Path(cfg.hydra.sweep.dir) / cfg.hydra.sweep.subdir)
    return dirs


def composed_run_dir(job: list[str]) -> Path:
    """The run directory of one job, from its fully composed Hydra config."""
    hydra_cfg = compose("config", overrides=job, return_hydra_config=True).hydra
    return Path(hydra_cfg.sweep.dir) / hydra_cfg.sweep.subdir


def reproduce(
    artifact: str,
    scale: str,
    overrides: list[str],
    out_dir: Path | None = None,
    mode: Mode = Mode.RUN,
    n_seeds: int | None = None,
) -> Path | None:
    """Run the artifact's sweep at ``scale`` and make the artifact; returns its folder."""
    if artifact not in available():
        raise SystemExit(f"unknown artifact {artifact!r}; available: {', '.join(available())}")
    reproduce_cmd = ["python", "-m", "experiments.reproduce", artifact, "--scale", scale]
    if n_seeds is not None:
        reproduce_cmd += ["--seeds", str(n_seeds)]
    if out_dir is not None:
        reproduce_cmd += ["--out-dir", str(out_dir)]
    reproduce_cmd += overrides
    out_dir = out_dir or Path("results") / artifact / scale
    jobs, block_dirs = plan(artifact, scale, overrides, n_seeds)
    run_dirs = [d for dirs in block_dirs for d in dirs]
    unfinished = any(not (d / "summary.json").exists() for d in run_dirs)
    if uses_slurm(overrides) and unfinished and mode is Mode.RUN:
        check_slurm_controller()
    if len(set(run_dirs)) != len(run_dirs):  # e.g. two blocks that differ only in `method`
        twice = sorted({str(d) for d in run_dirs if run_dirs.count(d) > 1})
        raise SystemExit(f"{artifact}: two sweep jobs would share a run directory: {twice}")
    commands, failed = launch(jobs, block_dirs, overrides, mode)
    if mode is Mode.DRY_RUN:
        print("\n".join(f"  {d}" for d in run_dirs))
        return None

    missing = [d for d in run_dirs if not (d / "summary.json").exists()]
    if failed or missing:
        raise SystemExit(
            f"{len(missing)} of {len(run_dirs)} runs have no summary.json (failed, or still "
            "queued/running on a cluster: see `squeue --me` and the sweep's .submitit logs); "
            f"{artifact} was not drawn. Runs and their logs:\n  "
            + "\n  ".join(f"{d}  (log: {d / 'run.log'})" for d in missing)
            + "".join(f"\nfailed: {c}" for c in failed)
            + "\nFix the cause and re-run the same command: finished runs are not run again."
        )
    importlib.import_module(f"experiments.{artifact}").make(run_dirs, out_dir, scale)
    write_provenance(out_dir, artifact, scale, shlex.join(reproduce_cmd), commands, run_dirs)
    print(f"wrote {out_dir}")
    return out_dir


def plan(
    artifact: str, scale: str, overrides: list[str], n_seeds: int | None
) -> tuple[list[list[str]], list[list[Path]]]:
    """The sweep's jobs (one Hydra multirun per block) and each block's run directories."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            blocks = path_replaces_names(sweep_blocks(artifact, scale, n_seeds), overrides)
            if any(map(is_seed, overrides)) and any(is_seed(o) for b in blocks for o in b):
                raise ValueError(
                    "the seeds come from the experiment's `seeds` (or --seeds N, which runs "
                    "seeds 0..N-1); remove the trainer.seed override"
                )
            jobs = [[f"experiment={artifact}", f"scale={scale}", *b, *overrides] for b in blocks]
            return jobs, [job_run_dirs(job) for job in jobs]
        except HydraException as err:  # e.g. a typo in an override: its message, no traceback
            cause = f" ({err.__cause__})" if err.__cause__ else ""
            raise SystemExit(f"experiments.reproduce {artifact}: {err}{cause}") from None
        except ValueError as err:  # a sweep block or `seeds` the experiment config gets wrong
            raise SystemExit(f"experiments.reproduce {artifact}: {err}") from None


def launch(
    jobs: list[list[str]], block_dirs: list[list[Path]], overrides: list[str], mode: Mode
) -> tuple[list[str], list[str]]:
    """Print each block's command and, in ``Mode.RUN``, run the unfinished ones (one after the
    other; on a cluster all at once). The commands, and those that failed."""
    commands: list[str] = []
    launched: list[tuple[str, subprocess.Popen[bytes]]] = []
    for job, dirs in zip(jobs, block_dirs):
        cmd = [sys.executable, "-m", "amm.run", "-m", *job]
        commands.append(shlex.join(["python", *cmd[1:]]))
        print(commands[-1], flush=True)
        if all((d / "summary.json").exists() for d in dirs):
            print(f"  all {len(dirs)} runs finished already")
        elif mode is Mode.RUN:
            launched.append((commands[-1], subprocess.Popen(cmd)))
            if not uses_cluster(overrides):
                launched[-1][1].wait()  # one block after the other; a failing job stops none
    failed = [command for command, proc in launched if proc.wait() != 0]
    return commands, failed


def write_provenance(
    out_dir: Path,
    artifact: str,
    scale: str,
    command: str,
    commands: list[str],
    run_dirs: list[Path],
) -> None:
    """``commands.txt`` and ``provenance.json`` next to the artifact's outputs."""
    atomic_write(
        out_dir / "commands.txt",
        "\n".join(commands or [f"# {artifact} has no training runs (sweep.{scale}: [])"]) + "\n",
    )
    record = {**provenance(command), "commands": commands}
    record["run_dirs"] = [str(d) for d in run_dirs]
    # the code each run trained with (a run may predate the artifact's commit)
    record["run_git"] = {str(d): run_git(d) for d in run_dirs}
    # the machines the runs ran on (the fields above describe the one that drew the artifact)
    record["run_machines"] = run_machines(run_dirs)
    atomic_write(out_dir / "provenance.json", json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    require_config_dir()
    parser = argparse.ArgumentParser(
        prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("artifact", help=f"one of: {', '.join(available())}")
    parser.add_argument("--scale", choices=SCALES, default="smoke")
    parser.add_argument(
        "--seeds",
        type=int,
        help="run seeds 0..N-1 of every job (default: the experiment's `seeds` at this scale)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="launch nothing: make the artifact from the finished runs on disk",
    )
    parser.add_argument("--out-dir", type=Path, help="default: results/<artifact>/<scale>")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_intermixed_args(argv)
    mode = Mode.DRY_RUN if args.dry_run else Mode.COLLECT if args.collect else Mode.RUN
    reproduce(args.artifact, args.scale, args.overrides, args.out_dir, mode, args.seeds)


if __name__ == "__main__":
    main()
