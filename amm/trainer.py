"""The one training loop of the suite, for every experiment (read it top to bottom).

``train(cfg, run_dir)`` runs one composed config in ``run_dir``, in three phases:

    setup:   validate -> run directory (RunDir: lock, fingerprint; finished?) -> processes,
             seeds -> data -> model -> optimizer -> lr schedule -> resume -> outputs
    loop:    batches -> step -> record (log/eval interval) -> checkpoint (its interval) -> stop?
    summary: summary.json (final metrics, ``diverged``)

and writes there (docs/architecture.md section 3): ``config.yaml`` (resolved), ``meta.json``,
``metrics.jsonl`` (one JSON object per logged step), ``summary.json`` (written last, so its
presence means "finished") and ``checkpoints/last.pt``. Each interval policy sits with what it
schedules: ``Checkpointer.maybe_save`` (``checkpoint_every``), ``Evaluator.due``
(``eval_every``), ``Recorder.due`` (``log_every``, and every evaluation).

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

import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
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
from amm.checkpoint import LAST, Checkpointer, TrainState
from amm.config import PRECISIONS, TrainerSchema, validate
from amm.data import DataModule
from amm.distributed import global_rank, setup_distributed, shard_model, teardown_distributed
from amm.models import Model
from amm.optim import build_optimizer
from amm.provenance import provenance
from amm.rundir import RunDir
from amm.schedule import lr_factor
from amm.tracking import (
    RunOutputs,
    Throughput,
    full_tensor,
    grad_norm,
    resolved_values,
    wandb_run,
)

log = logging.getLogger(__name__)

CHECKPOINT = LAST  # checkpoints/last.pt, relative to the run directory
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
    tcfg = validate(cfg)  # before any work: a bad value names its key and what is allowed
    paths.apply(cfg.paths)
    # every exit path (an error, a stop signal, the end) closes what was opened, in reverse
    with ExitStack() as cleanup:
        run = setup(cfg, tcfg, Path(run_dir), experiment, cleanup)
        if isinstance(run, dict):
            return run  # finished already: its summary
        last, stopped_early = loop(run, cleanup)
        return summarize(run, last, stopped_early)


# ---- setup -------------------------------------------------------------------------------


@dataclass
class Run:
    """What setup built, for the loop and the summary (this rank's view)."""

    cfg: DictConfig
    tcfg: TrainerSchema
    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype | None
    data: DataModule
    raw_model: nn.Module  # the model's parameters (sharded under FSDP)
    model: nn.Module  # what the step calls: compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    resolved_lr: float  # lr: auto is info["lr"] x lr_scale
    autocast: Any
    fsdp: bool
    skip_nonfinite: bool  # optimizer.nonfinite=skip
    state: TrainState
    checkpointer: Checkpointer
    rundir: RunDir | None = None  # rank 0 only, like outputs
    outputs: RunOutputs | None = None

    @property
    def is_main(self) -> bool:
        return self.rundir is not None


def setup(
    cfg: DictConfig, tcfg: TrainerSchema, run_dir: Path, experiment: str, cleanup: ExitStack
) -> Run | dict[str, Any]:
    """Everything before the first step; a finished run's summary instead, if it is one."""
    # rank 0 alone opens the run directory (lock, run.log, config fingerprint); its verdict
    rundir = cleanup.enter_context(RunDir(run_dir, cfg)) if global_rank() == 0 else None
    rank, world_size, device = setup_distributed(tcfg.device)
    cleanup.callback(teardown_distributed)
    finished = rundir.finished if rundir is not None else None
    if world_size > 1:  # ... for all ranks
        verdict = [finished]
        dist.broadcast_object_list(verdict, src=0)
        finished = verdict[0]
    if finished is not None:
        return finished
    seed_everything(tcfg.seed)
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)

    data: DataModule = instantiate(cfg.dataset)
    if rundir is not None:
        rundir.check_data(data.source_files())
    if world_size > 1:
        dist.barrier()  # no rank reads the checkpoint before rank 0 has checked the data
    run = build(cfg, tcfg, data, run_dir, rank, world_size, device)
    run.rundir = rundir
    resumed = run.checkpointer.load()
    if rundir is not None:
        run.outputs = open_outputs(run, rundir, experiment, resumed, cleanup)
    return run


def build(
    cfg: DictConfig,
    tcfg: TrainerSchema,
    data: DataModule,
    run_dir: Path,
    rank: int,
    world_size: int,
    device: torch.device,
) -> Run:
    """Model, optimizer, lr schedule and checkpointer (in this order: the RNG draws of a
    resumed run must be those of the run it continues)."""
    dtype = getattr(torch, tcfg.dtype) if tcfg.dtype else None
    raw_model: nn.Module = instantiate(cfg.model, info=data.info).to(device=device, dtype=dtype)
    sharded = tcfg.distributed == "fsdp"  # checkpoint format (DCP), whatever the world size
    fsdp = sharded and world_size > 1
    if fsdp:
        shard_model(raw_model)  # before the optimizer, which must hold the sharded parameters
    optimizer_options: dict[str, Any] = OmegaConf.to_container(cfg.optimizer, resolve=True)  # type: ignore[assignment]
    optimizer = build_optimizer(raw_model, **optimizer_options, info=data.info)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(tcfg.scheduler, tcfg.max_steps)
    )
    model: nn.Module = raw_model
    if tcfg.compile:
        model = torch.compile(raw_model)  # type: ignore[assignment]  # an OptimizedModule
    if world_size > 1 and not fsdp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    state = TrainState()
    checkpointer = Checkpointer(
        run_dir,
        state,
        raw_model,
        optimizer,
        scheduler,
        every=tcfg.checkpoint_every,
        sharded=sharded,
        is_main=rank == 0,
        world_size=world_size,
        device=device,
    )
    return Run(
        cfg=cfg,
        tcfg=tcfg,
        rank=rank,
        world_size=world_size,
        device=device,
        dtype=dtype,
        data=data,
        raw_model=raw_model,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        resolved_lr=float(optimizer.param_groups[0]["lr"]),
        autocast=autocast_context(tcfg.precision, device),
        fsdp=fsdp,
        skip_nonfinite=optimizer_options.get("nonfinite") == "skip",
        state=state,
        checkpointer=checkpointer,
    )


def open_outputs(
    run: Run, rundir: RunDir, experiment: str, resumed: bool, cleanup: ExitStack
) -> RunOutputs:
    """Rank 0: ``config.yaml``, ``meta.json``, ``metrics.jsonl`` and the W&B run."""
    cfg, step, lr = run.cfg, run.state.step, run.resolved_lr
    saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    saved.optimizer.resolved_lr = lr  # the number the lr (auto x lr_scale) became
    rundir.write_config(saved)
    meta = rundir.write_meta(
        {
            "experiment": experiment,
            **provenance(),
            "world_size": run.world_size,
            "device": str(run.device),
            "resumed_from_step": step,
            "lr": lr,  # the optimizer's resolved initial lr (optimizer.lr: auto x lr_scale)
            "slurm": {k: os.environ[k] for k in SLURM_META if k in os.environ},
        }
    )
    resolved = resolved_values(
        cfg,
        lr=lr,
        optimizer=run.optimizer,
        model=run.raw_model,
        info=run.data.info,
        world_size=run.world_size,
    )
    outputs = RunOutputs(
        rundir.path,
        keep_until_step=step,
        logger=cfg.logger,
        wandb_id=meta["wandb_id"],
        wandb_run=wandb_run(cfg, rundir.path, experiment, resolved),
    )
    cleanup.push(outputs.exit)  # W&B learns how the run ended
    how = f"resumed from step {step}" if resumed else "new run"
    log.info("%s: %s (%d steps, lr %.6g)", rundir.path, how, run.tcfg.max_steps, lr)
    return outputs


# ---- the loop ----------------------------------------------------------------------------


def loop(run: Run, cleanup: ExitStack) -> tuple[dict[str, Any], str]:
    """The steps up to ``max_steps``: the last record, and why the run stopped early ("")."""
    tcfg, state = run.tcfg, run.state
    batches = batch_stream(run.data, state.epoch, state.batch_idx, run.rank, run.world_size)
    bar = cleanup.enter_context(
        tqdm(total=tcfg.max_steps, initial=state.step, disable=not (run.is_main and tcfg.progress))
    )
    recorder = Recorder(run, bar)
    nonfinite = NonfiniteGuard(run)
    stop = cleanup.enter_context(StopFlag())
    beta_stats: Callable[[], dict[str, Tensor]] = getattr(run.optimizer, "beta_stats", dict)
    last: dict[str, Any] = {}
    stopped_early = ""
    while state.step < tcfg.max_steps:
        micro_batches = []
        for _ in range(tcfg.accumulate_grad_batches):
            state.epoch, i, batch = next(batches)
            micro_batches.append(to_device(batch, run.device, run.dtype))
            recorder.throughput.add(batch)

        nonfinite.before_step()
        loss, metrics = take_step(
            run.model,
            run.optimizer,
            micro_batches,
            run.autocast,
            tcfg.grad_clip,
            run.world_size,
            want_grad_norm=recorder.due(state.step + 1),  # computed for records only
        )
        run.scheduler.step()
        state.step, state.batch_idx = state.step + 1, i + 1
        state.pending.append(beta_stats())
        bar.update(1)
        stopped_early = nonfinite.after_step()

        if recorder.due(state.step) or stopped_early:
            last = recorder.record(loss, metrics, nonfinite.take_skipped())
            stop.sync(run.world_size)
        signum = stop.agreed(run.world_size)
        at_end = state.step == tcfg.max_steps or bool(stopped_early)
        run.checkpointer.maybe_save(recorder.elapsed(), force=at_end or bool(signum))
        if signum:
            stop_now(run, stop, signum)
        if stopped_early:
            break
    return last, stopped_early


class Evaluator:
    """The evaluation and its interval: every ``eval_every`` steps (0: never) and at the end.
    Rank 0 evaluates, or under FSDP every rank (the forward gathers parameters)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.every, self.max_steps = run.tcfg.eval_every, run.tcfg.max_steps

    def due(self, step: int) -> bool:
        return step == self.max_steps or (self.every > 0 and step % self.every == 0)

    def __call__(self) -> dict[str, float]:
        run = self.run
        if not (run.is_main or run.fsdp):
            return {}
        return evaluate(run.raw_model, run.data, run.device, run.dtype, run.autocast)


class Recorder:
    """The metrics records and their interval: every ``log_every`` steps and at every
    evaluation. A record is built with one host transfer, then written (rank 0)."""

    def __init__(self, run: Run, bar: tqdm) -> None:
        self.run, self.bar = run, bar
        self.log_every = run.tcfg.log_every
        self.evaluator = Evaluator(run)
        self.fstar = run.data.info.get("fstar")
        self.t0 = time.perf_counter()
        self.throughput = Throughput(run.state.step, run.world_size)  # steps/s between records

    def due(self, step: int) -> bool:
        return step % self.log_every == 0 or self.evaluator.due(step)

    def elapsed(self) -> float:
        """Training seconds, including those before a resume."""
        return self.run.state.elapsed + time.perf_counter() - self.t0

    def record(self, loss: Tensor, metrics: dict[str, Any], skipped: int | None) -> dict[str, Any]:
        """The record of this step (``skipped``: steps skipped since the last record, if
        counted); written by rank 0, returned on every rank."""
        run, state = self.run, self.run.state
        step = state.step
        values = make_record(loss, metrics, state.pending, run.world_size)
        state.pending = []
        record = {"step": step, "epoch": state.epoch, "lr": run.scheduler.get_last_lr()[0]}
        record |= values
        if self.fstar is not None:
            record["objective_gap"] = record["loss"] - self.fstar
        if skipped is not None:
            record["skipped_steps"] = skipped
        record.update(self.throughput.rates(step))  # after make_record's host transfer
        if self.evaluator.due(step):
            record.update(self.evaluator())
        record["time_s"] = self.elapsed()
        if run.outputs is not None:
            run.outputs.write(record)
            postfix = {k: record[k] for k in ("loss", "beta") if k in record}
            self.bar.set_postfix(postfix, refresh=False)  # drawn at tqdm's own pace
        self.throughput.restart(step)  # the evaluation is not part of the next rates
        return record


class NonfiniteGuard:
    """``optimizer.nonfinite=skip``: the optimizer counts the steps it skipped for a non-finite
    gradient (its one host read); count them, log them, and stop when they persist
    (``trainer.max_nonfinite_in_row``). Does nothing for other settings."""

    def __init__(self, run: Run) -> None:
        self.run, self.enabled = run, run.skip_nonfinite
        self.limit = run.tcfg.max_nonfinite_in_row
        self.skips_before = 0
        self.since_record = 0

    def _skips(self) -> int:
        return int(getattr(self.run.optimizer, "nonfinite_skips", 0))

    def before_step(self) -> None:
        if self.enabled:
            self.skips_before = self._skips()

    def after_step(self) -> str:
        """Why the run must stop now ("" to go on)."""
        state = self.run.state
        if not self.enabled:
            return ""
        if self._skips() <= self.skips_before:
            state.skipped_in_row = 0
            return ""
        state.skipped += 1
        state.skipped_in_row += 1
        self.since_record += 1
        if self.run.is_main:
            log.warning(
                "step %d: non-finite gradient, update skipped (%d in a row, %d in all)",
                state.step,
                state.skipped_in_row,
                state.skipped,
            )
        if state.skipped_in_row < self.limit:
            return ""
        return (
            f"{state.skipped_in_row} updates in a row skipped for non-finite "
            f"gradients (trainer.max_nonfinite_in_row={self.limit})"
        )

    def take_skipped(self) -> int | None:
        """Skips since the last record, for the next one (None when not counted)."""
        if not self.enabled:
            return None
        count, self.since_record = self.since_record, 0
        return count


def stop_now(run: Run, stop: StopFlag, signum: int) -> None:
    """A stop signal, the checkpoint saved: exit so that a scheduler requeues the run."""
    if run.is_main:
        log.warning(
            "%s: stopped by %s at step %d; checkpoint saved, the same command resumes it",
            run.checkpointer.run_dir,
            signal.Signals(signum).name,
            run.state.step,
        )
    if run.outputs is not None:
        run.outputs.close(exit_code=128 + signum)  # before a requeue can kill us
    stop.pass_on(signum)  # under submitit: requeue the job (and exit)
    raise SystemExit(128 + signum)  # non-zero, so a scheduler requeues the job


# ---- the summary -------------------------------------------------------------------------


def summarize(run: Run, last: dict[str, Any], stopped_early: str) -> dict[str, Any]:
    """Rank 0 writes ``summary.json`` (final metrics, ``diverged``); every rank returns it."""
    summary: dict[str, Any] = {}
    if run.outputs is not None and run.rundir is not None:
        records = run.outputs.records()  # all of them: also the steps before a resume
        last = last or (records[-1] if records else {})
        # not the last interval's betas and rates: they describe an interval, not the run
        summary = {k: v for k, v in last.items() if k not in INTERVAL_KEYS}
        summary |= divergence(records, stopped_early, run.state.skipped)
        # reference values the data measured: f* and how exact it is (the solver's reached
        # gradient norm); for language data, the eval tokens' unigram entropy
        references = ("fstar", "fstar_grad_norm", "eval_unigram_entropy")
        summary |= {k: run.data.info[k] for k in references if k in run.data.info}
        run.outputs.summarize(summary)  # W&B: summary.final
        run.outputs.close()
        run.rundir.finish(summary)
        if summary["diverged"]:
            log.warning("%s: DIVERGED: %s", run.rundir.path, summary["diverged_reason"])
        where = run.rundir.summary_path
        log.info(
            "%s: finished at step %s; summary: %s", run.rundir.path, summary.get("step"), where
        )
    if run.world_size > 1:
        dist.barrier()
    return summary


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


def autocast_context(precision: str | None, device: torch.device) -> Any:
    """The forward pass's autocast for ``trainer.precision`` (its names: ``amm.config``)."""
    if precision is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, PRECISIONS[precision]))


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
