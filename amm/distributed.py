"""What the trainer needs for multi-process runs beyond DDP: FSDP2 sharding, checkpoints in the
``torch.distributed.checkpoint`` (DCP) format, and the rank variables of a SLURM job.

- ``shard_model``: ``fully_shard`` (FSDP2) on every transformer block, then on the whole model.
  The parameters become DTensors, which ``amm.optim`` detects: its global beta then completes its
  per-shard sums with one all-reduce over the mesh, so it equals the single-process beta.
- ``save_sharded`` / ``load_sharded``: model and optimizer as a DCP checkpoint directory. Each
  rank writes its shards; loading reshards, so a checkpoint loads on any world size (1 included,
  where the model is not sharded at all).
- ``export_slurm_ranks``: the submitit launcher starts one process per SLURM task; torch's
  ``env://`` rendezvous wants RANK / WORLD_SIZE / MASTER_ADDR..., which submitit knows.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

DISTRIBUTED = ("ddp", "fsdp")
SHARDED_PREFIX = "dcp-"  # checkpoints/dcp-<step>/: one DCP checkpoint directory


def export_slurm_ranks() -> None:
    """Set torch's rank variables in a multi-task job of the submitit launcher.

    ``hydra.launcher.tasks_per_node`` (or ``nodes``) > 1 starts one process per task with
    SLURM's variables only. Under torchrun (WORLD_SIZE set) or outside submitit this does nothing.
    """
    if "WORLD_SIZE" in os.environ or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    from submitit.helpers import TorchDistributedEnvironment

    # the trainer picks cuda:LOCAL_RANK itself, so CUDA_VISIBLE_DEVICES stays as SLURM set it;
    # overwrite: a MASTER_PORT set by the user is kept (submitit reads it), the rest is the job's
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2 in place: each transformer block is one unit, the rest of the model another.

    Blocks are the classes a Hugging Face model lists in ``_no_split_modules`` (e.g.
    ``LlamaDecoderLayer``): their parameters are gathered one block at a time. Models without
    blocks (convex problems, ResNets) are one unit, i.e. ZeRO-3 without per-layer gathering.
    """
    blocks: set[str] = set()
    for module in model.modules():
        blocks.update(getattr(module, "_no_split_modules", None) or ())
    for module in model.modules():
        if module is not model and type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the state tensors of a fresh optimizer, so DCP has tensors to load into.

    DCP's ``get_state_dict`` would do this itself with ``step()`` on zero gradients at lr 0; the
    AM optimizers with the exact plane bias need the loss, so here the step gets a closure that
    returns 0. Nothing moves (lr 0), and loading the checkpoint then overwrites every state and
    group value the step touched.
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
    optimizer.step((lambda: zero_loss) if getattr(optimizer, "needs_closure", False) else None)
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


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

    A new directory per checkpoint: the previous one stays valid until the caller has written
    the small ``last.pt`` that names the new one (a pre-emption mid-save loses nothing).
    """
    name = f"{SHARDED_PREFIX}{step:09d}"
    model_state, optim_state = get_state_dict(model, optimizer)
    with single_process_ok():
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=ckpt_dir / name)
    return name


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load a ``save_sharded`` directory into this world size's model and optimizer."""
    init_optimizer_state(optimizer)
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    with single_process_ok():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def prune_sharded(ckpt_dir: Path, keep: str) -> None:
    """Remove the DCP directories other than ``keep`` (rank 0, once ``last.pt`` names ``keep``)."""
    for path in ckpt_dir.glob(f"{SHARDED_PREFIX}*"):
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)
