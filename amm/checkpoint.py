"""The run's resume state and its checkpoint format: the one module that writes and reads it.

``TrainState`` is where the loop is (step, epoch, batch, time, betas not yet logged);
``Checkpointer`` owns it together with the model, optimizer and lr schedule, and saves and loads
all of them (and the RNG states) as one checkpoint:

- ``checkpoints/last.pt``: ``torch.save`` of a dict: ``model`` and ``optimizer`` state dicts, or
  under ``trainer.distributed=fsdp`` ``sharded``: the name of a DCP directory
  ``checkpoints/dcp-<step>/`` (every rank writes its shards; it loads on any world size);
  ``scheduler``, ``rng`` (python, numpy, torch, cuda) and the ``TrainState`` fields.
- ``checkpoints/previous.pt``: the checkpoint before it.

Saving never leaves a broken ``last.pt``: the new file is written next to it, flushed to disk
(fsync, ``amm.atomic``), the old ``last.pt`` becomes ``previous.pt`` (a hard link, so ``last.pt`` exists at every
instant), and a rename puts the new one in place. Loading tries ``last.pt``, then (with a
warning naming the file and the error) ``previous.pt``; if none can be read the error names the
files and says what to do: a run never silently starts over.

Loading never runs code: ``torch.load(..., weights_only=True)`` accepts tensors, numbers,
strings and containers only, so a planted ``last.pt`` (a pickle with a ``__reduce__`` payload, on
a shared file system) is refused, not executed. For that every value in the file is such a
type: the numpy RNG state is stored as a tensor. Checkpoints written before that (numpy arrays
inside) load with exactly numpy's array-rebuilding globals allowed, nothing else.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from amm.atomic import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_DIR = Path("checkpoints")
LAST = CHECKPOINT_DIR / "last.pt"
PREVIOUS = CHECKPOINT_DIR / "previous.pt"
SHARDED_PREFIX = "dcp-"  # checkpoints/dcp-<step>/: one DCP checkpoint directory


class CheckpointError(RuntimeError):
    """No checkpoint of a run directory can be read (or one cannot be written)."""


@dataclass
class TrainState:
    """Where the loop is; saved in every checkpoint."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # epoch of the next batch
    batch_idx: int = 0  # batches of ``epoch`` consumed
    elapsed: float = 0.0  # training seconds before the current start
    # per-step beta stats since the last metrics record, so the next record is the same as
    # without the interruption (device tensors; floats in the file)
    pending: list[dict[str, Tensor]] = field(default_factory=list)
    skipped: int = 0  # steps skipped for non-finite gradients (optimizer.nonfinite=skip)
    skipped_in_row: int = 0


class Checkpointer:
    """Saves and loads ``state`` + model + optimizer + lr schedule + RNG states of one run, and
    decides when it saves: every ``every`` steps (0: only when asked, e.g. at the end)."""

    def __init__(
        self,
        run_dir: Path,
        state: TrainState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        every: int = 0,
        sharded: bool,
        is_main: bool,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.run_dir, self.state = run_dir, state
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.every = every
        self.sharded, self.is_main, self.world_size, self.device = (
            sharded,
            is_main,
            world_size,
            device,
        )

    # ---- save ---------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether step ``step`` is on the checkpoint interval (``trainer.checkpoint_every``)."""
        return self.every > 0 and step % self.every == 0

    def maybe_save(self, elapsed: float, *, force: bool = False) -> bool:
        """Save if the current step is due, or ``force`` (the end, a stop signal); every rank
        calls it at every step. Whether it saved."""
        if not (force or self.due(self.state.step)):
            return False
        self.save(elapsed)
        return True

    def save(self, elapsed: float) -> None:
        """Write a checkpoint of the current state (every rank calls it); ``elapsed``: the
        training seconds so far."""
        ckpt_dir = self.run_dir / CHECKPOINT_DIR
        st = self.state
        # DCP: every rank writes its shards into a new directory; last.pt then names it
        name = save_sharded(self.model, self.optimizer, ckpt_dir, st.step) if self.sharded else None
        if self.is_main:
            if name:
                payload: dict[str, Any] = {"sharded": name}
            else:
                payload = {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                }
            payload |= {
                "scheduler": self.scheduler.state_dict(),
                "rng": get_rng_state(),
                "step": st.step,
                "epoch": st.epoch,
                "batch_idx": st.batch_idx,
                "elapsed": elapsed,
                # a host transfer, but checkpoints are rare
                "pending": [{k: v.item() for k, v in d.items()} for d in st.pending],
                "skipped": st.skipped,
                "skipped_in_row": st.skipped_in_row,
            }
            save_rotating(payload, self.run_dir / LAST, self.run_dir / PREVIOUS)
            if name:
                prune_sharded(ckpt_dir, keep=_sharded_names(self.run_dir))
        if self.world_size > 1:
            dist.barrier()

    # ---- load ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Resume from ``last.pt`` (else ``previous.pt``); False when the run has none."""
        candidates = [p for p in (self.run_dir / LAST, self.run_dir / PREVIOUS) if p.exists()]
        failures: list[str] = []
        for path in candidates:
            try:
                self._load(path)
            except Exception as err:  # any unreadable file: try the previous checkpoint
                failures.append(f"{path}: {type(err).__name__}: {err}")
                continue
            if failures:
                log.warning(
                    "checkpoint %s; resumed from the previous checkpoint %s (step %d) instead",
                    failures[0],
                    path,
                    self.state.step,
                )
            return True
        if failures:
            raise CheckpointError(
                "no readable checkpoint in "
                f"{self.run_dir / CHECKPOINT_DIR}:\n  "
                + "\n  ".join(failures)
                + "\nThe run cannot resume. Restore a good copy of these files, or start the run "
                "over with trainer.on_mismatch=restart (deletes its checkpoints and metrics), "
                "or use another run directory."
            )
        return False

    def _load(self, path: Path) -> None:
        ckpt = safe_load(path)
        if not isinstance(ckpt, dict) or "step" not in ckpt:
            raise CheckpointError("not a checkpoint of this trainer (no 'step')")
        if "sharded" in ckpt:  # a DCP directory, written at any world size
            load_sharded(self.model, self.optimizer, path.parent / ckpt["sharded"])
        else:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        st = self.state
        st.step, st.epoch, st.batch_idx = ckpt["step"], ckpt["epoch"], ckpt["batch_idx"]
        st.elapsed = ckpt["elapsed"]
        st.pending = [
            {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in d.items()}
            for d in ckpt["pending"]
        ]
        st.skipped = ckpt.get("skipped", 0)
        st.skipped_in_row = ckpt.get("skipped_in_row", 0)


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a run's checkpoints (a restart from scratch)."""
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)


# ---- files --------------------------------------------------------------------------------


def save_rotating(obj: Any, last: Path, previous: Path) -> None:
    """``torch.save`` to ``last``, keeping the old ``last`` as ``previous``; crash-safe.

    At every instant ``last`` is a complete file (old or new) once it first exists: the new one
    is written by ``atomic_write`` (temporary name, fsync, rename, directory fsync), and once it
    is on disk, before the rename, the old one is linked as ``previous``.
    """

    def keep_previous() -> None:
        if last.exists():
            keep = previous.with_name(previous.name + ".tmp")
            keep.unlink(missing_ok=True)
            try:
                os.link(last, keep)
            except OSError:  # file systems without hard links
                shutil.copyfile(last, keep)
            os.replace(keep, previous)

    try:
        atomic_write(last, lambda fh: torch.save(obj, fh), before_replace=keep_previous)
    except OSError as err:
        raise CheckpointError(
            f"cannot write the checkpoint {last}: {err}. Free space or make the run directory "
            "writable, then re-run the same command: it resumes from the last good checkpoint."
        ) from err


def safe_load(path: Path) -> Any:
    """``torch.load`` that cannot run code: tensors, numbers, strings and containers only.

    An older checkpoint's numpy RNG state (an array in a tuple) needs numpy's array-rebuilding
    globals: exactly those are allowed, so such a file still loads and nothing else does.
    """
    legacy_numpy = [np.ndarray, np.dtype, _numpy_reconstruct(), type(np.dtype(np.uint32))]
    try:
        with torch.serialization.safe_globals(legacy_numpy):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a reference to {found.group(1)}" if found else "objects"
        raise CheckpointError(
            f"{path} holds {what}, which no amm checkpoint holds; it was refused "
            "unread, as loading it could run code. amm did not write this file: remove it, or "
            "restore the run's own checkpoint."
        ) from None


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray._reconstruct


# ---- RNG states ---------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """Every RNG's state in types ``torch.load(weights_only=True)`` reads back."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),  # (int, tuple of ints, float | None)
        "numpy": {
            "bit_generator": name,
            "key": torch.from_numpy(np.asarray(key).astype(np.int64)),  # uint32 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        key = numpy_state["key"].numpy().astype(np.uint32)
        numpy_state = (
            numpy_state["bit_generator"],
            key,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)  # a tuple with an array: a checkpoint from before the dict
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- DCP (FSDP2: sharded model and optimizer) ----------------------------------------------


@contextmanager
def single_process_ok() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group: at world size 1 it should."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def save_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer, ckpt_dir: Path, step: int
) -> str:
    """Write model + optimizer as ``ckpt_dir/dcp-<step>/`` (all ranks call it); its name.

    A new directory per checkpoint: the older ones stay valid until ``last.pt`` and
    ``previous.pt`` no longer name them (a pre-emption mid-save loses nothing).
    """
    name = f"{SHARDED_PREFIX}{step:09d}"
    model_state, optim_state = get_state_dict(model, optimizer)
    with single_process_ok():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=ckpt_dir / name)
    return name


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load a ``save_sharded`` directory into this world size's model and optimizer."""
    if not path.is_dir():
        raise CheckpointError(f"the DCP directory {path} it names is missing")
    check_dcp_metadata(path / ".metadata")
    init_optimizer_state(optimizer)
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    with single_process_ok():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


# What DCP's .metadata pickle refers to (torch 2.11-2.14): its metadata dataclasses, torch sizes,
# dtypes and layouts, paths. DCP reads the file with plain pickle.load, so it is vetted first.
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": None,  # None: any name of the module
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _DcpMetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = module in _DCP_GLOBALS and (
            _DCP_GLOBALS[module] is None or name in _DCP_GLOBALS[module]  # type: ignore[operator]
        )
        if module == "torch":  # torch.Size and the dtypes only
            allowed = name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def check_dcp_metadata(path: Path) -> None:
    """Refuse a DCP ``.metadata`` that refers to anything but DCP's own metadata types.

    ``dcp.load`` unpickles it without restriction; this reads it first with an unpickler that
    resolves only the globals such a file holds, so a planted file is refused, not run.
    """
    try:
        with path.open("rb") as fh:
            _DcpMetadataUnpickler(fh).load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds a reference to {err}, which no DCP metadata holds; it was refused "
            "unread, as loading it could run code. amm did not write this file: remove the "
            "checkpoint, or restore the run's own."
        ) from None
    except (OSError, EOFError) as err:
        raise CheckpointError(f"cannot read the DCP metadata {path}: {err}") from err


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the state tensors of a fresh optimizer, so DCP has tensors to load into.

    The state's layout is the optimizer's own, so it makes it itself: one step on zero gradients
    at lr 0 (what DCP's ``get_state_dict`` does, there without a closure). The closure returns 0,
    so optimizers that need the loss (exact plane bias, oracle) take the same path as the others,
    and no caller needs to know which ones do. Nothing moves (lr 0), and loading the checkpoint
    then overwrites every state and group value the step touched.
    """
    if optimizer.state:
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    zero_loss = torch.zeros((), device=params[0].device, dtype=params[0].dtype)
    optimizer.step(lambda: zero_loss)  # type: ignore[arg-type,return-value]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def _sharded_names(run_dir: Path) -> set[str]:
    """The DCP directories that ``last.pt`` and ``previous.pt`` name."""
    names = set()
    for path in (run_dir / LAST, run_dir / PREVIOUS):
        try:
            names.add(safe_load(path)["sharded"])
        except Exception:  # missing or unreadable: names nothing to keep
            continue
    return names


def prune_sharded(ckpt_dir: Path, keep: set[str]) -> None:
    """Remove the DCP directories not in ``keep`` (rank 0, after ``last.pt`` was written)."""
    for path in ckpt_dir.glob(f"{SHARDED_PREFIX}*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
