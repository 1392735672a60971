"""The one training loop of the suite, for every experiment (read it top to bottom).

``train(cfg, run_dir)`` runs one composed config in ``run_dir``:

    seed -> data -> model -> optimizer -> lr schedule -> resume? -> step loop -> summary

and writes there (docs/architecture.md section 3): ``config.yaml`` (resolved), ``meta.json``,
``metrics.jsonl`` (one JSON object per logged step), ``summary.json`` (final metrics, written
last, so its presence means "finished") and ``checkpoints/last.pt``.

Metric conventions: the record of step ``t`` (1-based count of optimizer updates) holds the loss
of the batch used by update ``t``, i.e. ``f(x_{t-1})`` for a full-batch problem, and the beta that
update used. Values stay on the device between log steps; one host transfer per log interval
carries the loss, the train metrics and every step's beta since the previous record (``betas``).

Pre-emption: SIGTERM or SIGUSR2 sets a flag; at the next step boundary (the next log step under
DDP, where the ranks agree) the run saves its checkpoint and exits with 128 + signal number, so
a scheduler requeues it; the same command then resumes from the checkpoint in the same directory.

Distributed: under ``torchrun`` (WORLD_SIZE > 1), or in a multi-task job of the submitit
launcher, each rank trains on its shard of every batch (``data.train_batches(epoch, rank,
world_size)``) with DDP, or with FSDP2 (``trainer.distributed=fsdp``, see ``amm.distributed``:
parameters, gradients and optimizer state sharded; checkpoints in the DCP format, which loads on
any world size); logged losses are averaged over ranks; rank 0 alone writes files and talks to
W&B, and evaluates (under FSDP every rank runs the evaluation forward, which gathers parameters).
A stop signal is passed on, after the checkpoint, to the handler installed before the trainer's:
under the submitit launcher that handler requeues the job (SIGUSR2: time limit near).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from amm import paths
from amm.checkpoint import CHECKPOINT_DIR, LAST, Checkpointer, TrainState, remove_checkpoints
from amm.config import validate
from amm.data import DataModule
from amm.distributed import global_rank, setup_distributed, shard_model, teardown_distributed
from amm.models import Model
from amm.optim import build_optimizer
from amm.provenance import provenance
from amm.rundir import (
    FINGERPRINT,
    RunDirNotWritable,
    RunLock,
    config_differences,
    config_fingerprint,
    data_differences,
    data_fingerprint,
    mismatch_error,
    read_fingerprint,
    write_fingerprint,
)
from amm.tracking import (
    RunOutputs,
    Throughput,
    full_tensor,
    grad_norm,
    resolved_values,
    run_log,
    wandb_run,
)

log = logging.getLogger(__name__)

CHECKPOINT = LAST  # checkpoints/last.pt, relative to the run directory
SUMMARY = "summary.json"
INTERVAL_KEYS = ("betas", "steps_per_s", "tokens_per_s")  # in records, left out of the summary
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
# recorded in meta.json: which SLURM job (array task) ran the run, where, after how many requeues
SLURM_META = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
)


def train(cfg: DictConfig, run_dir: Path, experiment: str = "default") -> dict[str, Any]:
    """Run (or resume, or skip if finished) the training described by ``cfg`` in ``run_dir``."""
    run_dir = Path(run_dir)
    tcfg = cfg.trainer
    validate(cfg)  # before any work: a bad value names its key and what is allowed
    paths.apply(cfg.paths)

    # every exit path (an error, a stop signal, the end) closes what was opened, in reverse
    with ExitStack() as cleanup:
        # ---- the run directory: lock, log, fingerprint (rank 0); finished already? -------
        is_main = global_rank() == 0
        finished = open_run_dir(cfg, run_dir, cleanup) if is_main else None

        # ---- distributed setup, seeds ----------------------------------------------------
        rank, world_size, device = setup_distributed(tcfg.device)
        cleanup.callback(teardown_distributed)
        if world_size > 1:  # rank 0 alone looked at the run directory: its verdict for all
            verdict = [finished]
            dist.broadcast_object_list(verdict, src=0)
            finished = verdict[0]
        if finished is not None:
            return finished
        seed_everything(int(tcfg.seed))
        if tcfg.num_threads:
            torch.set_num_threads(int(tcfg.num_threads))

        # ---- problem, model, optimizer, schedule -----------------------------------------
        data: DataModule = instantiate(cfg.dataset)
        if is_main:
            check_data(cfg, run_dir, data)
        if world_size > 1:
            dist.barrier()  # no rank reads the checkpoint before rank 0 has checked the data
        info = data.info
        fstar = info.get("fstar")
        dtype = getattr(torch, tcfg.dtype) if tcfg.dtype else None
        raw_model: nn.Module = instantiate(cfg.model, info=info).to(device=device, dtype=dtype)
        sharded = tcfg.distributed == "fsdp"  # checkpoint format (DCP), whatever the world size
        fsdp = sharded and world_size > 1
        if fsdp:
            shard_model(raw_model)  # before the optimizer, which must hold the sharded parameters
        optimizer_options: dict[str, Any] = OmegaConf.to_container(cfg.optimizer, resolve=True)  # type: ignore[assignment]
        optimizer = build_optimizer(raw_model, **optimizer_options, info=info)
        resolved_lr = float(optimizer.param_groups[0]["lr"])  # lr: auto is info["lr"] x lr_scale
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(tcfg.scheduler, int(tcfg.max_steps))
        )
        model: nn.Module = raw_model  # what the step calls: compiled and/or DDP-wrapped
        if tcfg.compile:
            model = torch.compile(raw_model)  # type: ignore[assignment]  # an OptimizedModule
        if world_size > 1 and not fsdp:
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        beta_stats: Callable[[], dict[str, Tensor]] = getattr(optimizer, "beta_stats", dict)
        autocast = autocast_context(tcfg.precision, device)
        skip_nonfinite = optimizer_options.get("nonfinite") == "skip"

        # ---- resume from the run directory's checkpoint, if any --------------------------
        state = TrainState()
        checkpointer = Checkpointer(
            run_dir,
            state,
            raw_model,
            optimizer,
            scheduler,
            sharded=sharded,
            is_main=is_main,
            world_size=world_size,
            device=device,
        )
        resumed = checkpointer.load()

        # ---- outputs (rank 0): config.yaml, meta.json, metrics.jsonl, W&B ----------------
        outputs = None
        if is_main:
            saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
            saved.optimizer.resolved_lr = resolved_lr  # the number the lr (auto x lr_scale) became
            OmegaConf.save(saved, run_dir / "config.yaml")
            meta = write_meta(run_dir, experiment, world_size, device, state.step, resolved_lr)
            resolved = resolved_values(
                cfg,
                lr=resolved_lr,
                optimizer=optimizer,
                model=raw_model,
                info=info,
                world_size=world_size,
            )
            outputs = RunOutputs(
                run_dir,
                keep_until_step=state.step,
                logger=cfg.logger,
                wandb_id=meta["wandb_id"],
                wandb_run=wandb_run(cfg, run_dir, experiment, resolved),
            )
            cleanup.push(outputs.exit)  # W&B learns how the run ended
            how = f"resumed from step {state.step}" if resumed else "new run"
            log.info("%s: %s (%d steps, lr %.6g)", run_dir, how, int(tcfg.max_steps), resolved_lr)

        # ---- the step loop -----------------------------------------------------------------
        max_steps, log_every = int(tcfg.max_steps), int(tcfg.log_every)
        accumulate = int(tcfg.accumulate_grad_batches)
        eval_every, ckpt_every = int(tcfg.eval_every or 0), int(tcfg.checkpoint_every or 0)
        batches = batch_stream(data, state.epoch, state.batch_idx, rank, world_size)
        bar = cleanup.enter_context(
            tqdm(total=max_steps, initial=state.step, disable=not (is_main and tcfg.progress))
        )
        last: dict[str, Any] = {}
        stopped_early = ""  # why the run stopped before max_steps (diverged)
        skipped_since_record = 0
        t0 = time.perf_counter()
        throughput = Throughput(state.step, world_size)  # steps/s (tokens/s) between records
        stop = cleanup.enter_context(StopFlag())
        while state.step < max_steps:
            micro_batches = []
            for _ in range(accumulate):
                state.epoch, i, batch = next(batches)
                micro_batches.append(to_device(batch, device, dtype))
                throughput.add(batch)

            upcoming = state.step + 1  # the gradient norm is computed for records only
            logs_next = upcoming % log_every == 0 or upcoming == max_steps
            logs_next |= eval_every > 0 and upcoming % eval_every == 0
            skips_before = getattr(optimizer, "nonfinite_skips", 0)
            loss, metrics = take_step(
                model,
                optimizer,
                micro_batches,
                autocast,
                tcfg.grad_clip,
                world_size,
                want_grad_norm=logs_next,
            )
            scheduler.step()
            state.step, state.batch_idx = state.step + 1, i + 1
            state.pending.append(beta_stats())
            bar.update(1)
            step = state.step

            # optimizer.nonfinite=skip: the optimizer counts the steps it skipped for a
            # non-finite gradient (its one host read); count, log, and stop when it persists
            if skip_nonfinite and getattr(optimizer, "nonfinite_skips", 0) > skips_before:
                state.skipped += 1
                state.skipped_in_row += 1
                skipped_since_record += 1
                if is_main:
                    log.warning(
                        "step %d: non-finite gradient, update skipped (%d in a row, %d in all)",
                        step,
                        state.skipped_in_row,
                        state.skipped,
                    )
                if state.skipped_in_row >= int(tcfg.max_nonfinite_in_row):
                    stopped_early = (
                        f"{state.skipped_in_row} updates in a row skipped for non-finite "
                        f"gradients (trainer.max_nonfinite_in_row={tcfg.max_nonfinite_in_row})"
                    )
            elif skip_nonfinite:
                state.skipped_in_row = 0

            do_eval = step == max_steps or (eval_every > 0 and step % eval_every == 0)
            if step % log_every == 0 or do_eval or stopped_early:
                record = make_record(loss, metrics, state.pending, world_size)
                state.pending = []
                record = {
                    "step": step,
                    "epoch": state.epoch,
                    "lr": scheduler.get_last_lr()[0],
                    **record,
                }
                if fstar is not None:
                    record["objective_gap"] = record["loss"] - fstar
                if skip_nonfinite:
                    record["skipped_steps"] = skipped_since_record
                    skipped_since_record = 0
                record.update(throughput.rates(step))  # after make_record's host transfer
                if do_eval and (is_main or fsdp):
                    record.update(evaluate(raw_model, data, device, dtype, autocast))
                record["time_s"] = state.elapsed + time.perf_counter() - t0
                if outputs is not None:
                    outputs.write(record)
                    postfix = {k: record[k] for k in ("loss", "beta") if k in record}
                    bar.set_postfix(postfix, refresh=False)  # drawn at tqdm's own pace
                last = record
                throughput.restart(step)  # the evaluation is not part of the next rates
                stop.sync(world_size)

            signum = stop.agreed(world_size)
            at_end = step == max_steps or bool(stopped_early)
            if at_end or (ckpt_every > 0 and step % ckpt_every == 0) or signum:
                checkpointer.save(elapsed=state.elapsed + time.perf_counter() - t0)
            if signum:
                if is_main:
                    log.warning(
                        "%s: stopped by %s at step %d; checkpoint saved, the same command "
                        "resumes it",
                        run_dir,
                        signal.Signals(signum).name,
                        step,
                    )
                if outputs is not None:
                    outputs.close(exit_code=128 + signum)  # before a requeue can kill us
                stop.pass_on(signum)  # under submitit: requeue the job (and exit)
                raise SystemExit(128 + signum)  # non-zero, so a scheduler requeues the job
            if stopped_early:
                break

        # ---- summary ---------------------------------------------------------------------
        summary: dict[str, Any] = {}
        if outputs is not None:
            records = outputs.records()  # all of them: also the steps before a resume
            last = last or (records[-1] if records else {})
            # not the last interval's betas and rates: they describe an interval, not the run
            summary = {k: v for k, v in last.items() if k not in INTERVAL_KEYS}
            summary |= divergence(records, stopped_early, state.skipped)
            # reference values the data measured: f* and how exact it is (the solver's reached
            # gradient norm); for language data, the eval tokens' unigram entropy
            references = ("fstar", "fstar_grad_norm", "eval_unigram_entropy")
            summary |= {k: info[k] for k in references if k in info}
            outputs.summarize(summary)  # W&B: summary.final
            outputs.close()
            write_json_atomic(run_dir / SUMMARY, summary)
            if summary["diverged"]:
                log.warning("%s: DIVERGED: %s", run_dir, summary["diverged_reason"])
            log.info(
                "%s: finished at step %s; summary: %s",
                run_dir,
                summary.get("step"),
                run_dir / SUMMARY,
            )
        if world_size > 1:
            dist.barrier()
        return summary


def open_run_dir(cfg: DictConfig, run_dir: Path, cleanup: ExitStack) -> dict[str, Any] | None:
    """Rank 0's first look at the run directory: take its lock, log to its ``run.log``, check
    the fingerprint of the config (``trainer.on_mismatch``). The summary if finished, else None."""
    summary_path = run_dir / SUMMARY
    cleanup.enter_context(run_log(run_dir / "run.log"))
    try:
        cleanup.enter_context(RunLock(run_dir))  # a second process in this directory is refused
    except RunDirNotWritable:
        if not summary_path.exists():
            raise
        read_only = True  # a finished run on a read-only file system: only read it
    else:
        read_only = False
    started = summary_path.exists() or (run_dir / CHECKPOINT_DIR).exists()
    recorded = read_fingerprint(run_dir)
    config = config_fingerprint(cfg)
    if started and recorded is not None:
        differences = config_differences(recorded.get("config", {}), config)
        if summary_path.exists():  # its data is not built: check the files it read, in place
            differences += data_differences(recorded.get("data", {}), files=None)
        if differences:
            restart_or_refuse(cfg, run_dir, differences)
    if summary_path.exists():
        note = " (read-only)" if read_only else ""
        log.info("%s: finished already%s; summary: %s", run_dir, note, summary_path)
        return dict(json.loads(summary_path.read_text()))
    if recorded is None or not started:
        write_fingerprint(run_dir, config, {})  # the data part once the data is built
    return None


def check_data(cfg: DictConfig, run_dir: Path, data: DataModule) -> None:
    """The data files of a resumed run must be those it started with (rank 0)."""
    recorded = read_fingerprint(run_dir) or {}
    files = data.source_files()
    if recorded.get("data"):
        differences = data_differences(recorded["data"], files)
        if differences:
            restart_or_refuse(cfg, run_dir, differences)
    write_fingerprint(run_dir, config_fingerprint(cfg), data_fingerprint(files))


def restart_or_refuse(cfg: DictConfig, run_dir: Path, differences: list[str]) -> None:
    """``trainer.on_mismatch``: ``refuse`` (raise, listing the differences) or ``restart``
    (delete the run's checkpoints, metrics and summary, then start it over)."""
    if cfg.trainer.on_mismatch != "restart":
        raise mismatch_error(run_dir, differences)
    log.warning(
        "%s: config or data changed (%s); trainer.on_mismatch=restart: starting the run over",
        run_dir,
        "; ".join(differences),
    )
    remove_checkpoints(run_dir)
    for name in (SUMMARY, "metrics.jsonl", FINGERPRINT):
        (run_dir / name).unlink(missing_ok=True)


def divergence(records: list[dict[str, Any]], stopped_early: str, skipped: int) -> dict[str, Any]:
    """``diverged`` (and why) for the summary: a non-finite loss was logged, or the run stopped
    on non-finite gradients. Artifacts read it to mark the run."""
    bad = next((r for r in records if not math.isfinite(r.get("loss", 0.0))), None)
    out: dict[str, Any] = {"diverged": bool(bad) or bool(stopped_early)}
    if stopped_early:
        out["diverged_reason"] = f"stopped: {stopped_early}"
    elif bad is not None:
        out["diverged_reason"] = f"loss {bad['loss']} at step {bad['step']}"
    if skipped:
        out["skipped_steps"] = skipped
    return out


# ---- helpers, in the order the loop uses them ---------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def lr_factor(cfg: DictConfig, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at update ``step`` (0-based): linear warmup, then the schedule."""
    name, warmup = cfg.name, int(cfg.warmup_steps)
    milestones, gamma, min_ratio = list(cfg.milestones), float(cfg.gamma), float(cfg.min_lr_ratio)
    if name not in ("constant", "cosine", "step"):
        raise ValueError(f"unknown scheduler {name!r}; use constant, cosine or step")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "step":
            return gamma ** sum(step >= m for m in milestones)
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def autocast_context(precision: str | None, device: torch.device) -> Any:
    if precision is None:
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; use null or bf16")


def write_meta(
    run_dir: Path,
    experiment: str,
    world_size: int,
    device: torch.device,
    resumed_from: int,
    lr: float,
) -> dict[str, Any]:
    """Write ``meta.json``; a restart keeps the W&B run id, so W&B resumes the same run."""
    path = run_dir / "meta.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    meta = {
        "experiment": experiment,
        **provenance(),
        "world_size": world_size,
        "device": str(device),
        "resumed_from_step": resumed_from,
        "lr": lr,  # the optimizer's resolved initial lr (optimizer.lr: auto x lr_scale)
        "slurm": {k: os.environ[k] for k in SLURM_META if k in os.environ},
        "wandb_id": old.get("wandb_id") or secrets.token_hex(4),
    }
    write_json_atomic(path, meta)
    return meta


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file (a reader never sees half)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def batch_stream(
    data: DataModule, epoch: int, skip: int, rank: int, world_size: int
) -> Iterator[tuple[int, int, Any]]:
    """(epoch, index in epoch, batch) forever, starting at batch ``skip`` of ``epoch``.

    Data modules make an epoch's batches a function of the epoch number, so skipping the
    batches a checkpoint had consumed puts a resumed run at the same place in the data.
    """
    while True:
        for i, batch in enumerate(data.train_batches(epoch, rank=rank, world_size=world_size)):
            if i >= skip:
                yield epoch, i, batch
        epoch, skip = epoch + 1, 0


def to_device(batch: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """Move the tensors of a batch (nested dicts/lists/tuples) to ``device``; cast floats."""
    if isinstance(batch, Tensor):
        cast = dtype if dtype is not None and batch.is_floating_point() else None
        return batch.to(device=device, dtype=cast, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, dtype) for v in batch)
    return batch


def take_step(
    model: Model,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Any],
    autocast: Any,
    grad_clip: float | None,
    world_size: int,
    want_grad_norm: bool = False,
) -> tuple[Tensor, dict[str, Any]]:
    """One optimizer update on the gradients of ``micro_batches``; returns the (local) loss and
    metrics before it, averaged over the micro-batches.

    The metrics include ``grad_norm``, the global L2 norm of the gradients before clipping,
    whenever ``grad_clip`` is set (the clipping computes it anyway) or ``want_grad_norm``.

    With k micro-batches (``trainer.accumulate_grad_batches``) each loss is weighted 1/k, so the
    update is the one of a batch k times as large (micro-batches of equal size); under DDP/FSDP
    the gradients are synchronised once, on the last micro-batch.

    Optimizers that need the loss (``needs_closure``: exact plane bias, oracle) get a closure
    that recomputes loss and gradients; the first call's outputs are returned. Under DDP the
    closure returns the loss averaged over ranks, like the gradients: an optimizer that used
    its rank's loss would compute a different beta, and the replicas would drift apart.
    """
    k = len(micro_batches)

    def forward_backward() -> tuple[Tensor, dict[str, Any]]:
        optimizer.zero_grad(set_to_none=True)
        outputs = []
        for j, batch in enumerate(micro_batches):
            with gradient_sync(model, j == k - 1), torch.enable_grad(), autocast:
                loss, metrics = model(batch)  # (optimizers call closures under no_grad)
                (loss / k if k > 1 else loss).backward()
            outputs.append((loss, metrics))
        loss, metrics = outputs[0] if k == 1 else average_outputs(outputs)
        if grad_clip:
            norm = nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
            metrics = {**metrics, "grad_norm": full_tensor(norm)}
        elif want_grad_norm:
            metrics = {**metrics, "grad_norm": grad_norm(model.parameters())}
        return loss, metrics

    if not getattr(optimizer, "needs_closure", False):
        outputs = forward_backward()
        optimizer.step()
        return outputs

    calls: list[tuple[Tensor, dict[str, Any]]] = []

    def closure() -> Tensor:
        calls.append(forward_backward())
        loss = calls[-1][0].detach()
        if world_size > 1:
            loss = loss.clone()
            dist.all_reduce(loss)  # SUM: gloo has no AVG
            loss /= world_size
        return loss

    optimizer.step(closure)  # type: ignore[arg-type]  # torch's stub says float; a loss is a Tensor
    return calls[0]


def gradient_sync(model: Model, enabled: bool) -> Any:
    """Context of one micro-batch's backward: DDP and FSDP2 reduce gradients only if enabled."""
    if isinstance(model, DDP):
        return nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: the reduce-scatter waits too
        model.set_requires_gradient_sync(enabled)
    return nullcontext()


def average_outputs(outputs: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, dict[str, Any]]:
    """Mean loss and tensor metrics of the micro-batches (other metrics: the last one's)."""
    loss = torch.stack([loss.detach() for loss, _ in outputs]).mean()
    metrics = dict(outputs[-1][1])
    for name, value in metrics.items():
        if isinstance(value, Tensor):
            metrics[name] = torch.stack([m[name].detach() for _, m in outputs]).mean()
    return loss, metrics


def make_record(
    loss: Tensor, metrics: dict[str, Any], pending: list[dict[str, Tensor]], world_size: int
) -> dict[str, Any]:
    """Loss, train metrics and the interval's betas as floats, with ONE device->host transfer.

    The loss and tensor metrics are averaged over ranks (betas are the same on every rank).
    """
    names = ["loss", *(k for k, v in metrics.items() if isinstance(v, Tensor))]
    reduced = torch.stack(
        [loss.detach().double(), *(metrics[k].detach().double() for k in names[1:])]
    )
    if world_size > 1:
        dist.all_reduce(reduced)  # SUM: gloo has no AVG
        reduced /= world_size
    beta_values = [v.double() for d in pending for v in d.values()]
    values = torch.cat([reduced, torch.stack(beta_values)]) if beta_values else reduced
    floats = values.tolist()
    record = dict(zip(names, floats[: len(names)], strict=True))
    record.update({k: float(v) for k, v in metrics.items() if not isinstance(v, Tensor)})
    stats, rest = [], iter(floats[len(names) :])
    for d in pending:
        stats.append({k: next(rest) for k in d})
    if stats and stats[-1]:
        record.update(stats[-1])  # beta (and beta_min / beta_max) of this step
    if len(pending) > 1:
        record["betas"] = [s.get("beta") for s in stats]  # every step of the interval
    return record


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataModule,
    device: torch.device,
    dtype: torch.dtype | None,
    autocast: Any,
) -> dict[str, float]:
    """Mean loss and metrics over ``data.eval_batches()`` as ``eval_*`` (empty without any)."""
    batches = data.eval_batches()
    if batches is None:
        return {}
    was_training = model.training
    model.eval()
    totals: dict[str, Tensor] = {}
    count = 0
    for batch in batches:
        with autocast:
            loss, metrics = model(to_device(batch, device, dtype))
        for k, v in {"loss": loss, **metrics}.items():
            v = torch.as_tensor(v, device=device, dtype=torch.float64)
            totals[k] = totals[k] + v if k in totals else v
        count += 1
    model.train(was_training)
    if not count:
        return {}
    means = (torch.stack(list(totals.values())) / count).tolist()
    return {f"eval_{k}": v for k, v in zip(totals, means, strict=True)}


class StopFlag:
    """Records SIGTERM / SIGUSR2; the handler only sets a flag, the loop decides when to stop.

    Single process: act at the next step. Under DDP the ranks must agree (a rank that saves and
    exits alone would hang the others), so ``sync`` (called at log steps) combines the flags.
    """

    def __init__(self) -> None:
        self.signum = 0  # set by the handler
        self._agreed = 0  # set by sync, the same on every rank
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum

    def sync(self, world_size: int) -> None:
        if world_size == 1:
            return
        flag = torch.tensor([self.signum], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self._agreed = int(flag.item())

    def pass_on(self, signum: int) -> None:
        """Call the handler that was installed before ours, if it is a Python function.

        Under the submitit launcher that is submitit's: on SIGUSR2 (the time limit is near) it
        requeues the job, which then resumes from the checkpoint just written, and exits.
        """
        old = self._old.get(signum)
        if callable(old):
            old(signum, None)

    def agreed(self, world_size: int) -> int:
        """The signal to stop for now (0: go on)."""
        return self.signum if world_size == 1 else self._agreed
