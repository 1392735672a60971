"""What the trainer needs for multi-process runs beyond DDP: the process group, FSDP2 sharding and
the rank variables of a SLURM job (checkpoints in the DCP format: ``amm.checkpoint``).

- ``shard_model``: ``fully_shard`` (FSDP2) on every transformer block, then on the whole model.
  The parameters become DTensors, which ``amm.optim`` detects: its global beta then completes its
  per-shard sums with one all-reduce over the mesh, so it equals the single-process beta.
- ``setup_distributed`` / ``teardown_distributed``: the process group under torchrun.
- ``export_slurm_ranks``: the submitit launcher starts one process per SLURM task; torch's
  ``env://`` rendezvous wants RANK / WORLD_SIZE / MASTER_ADDR..., which submitit knows.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

DISTRIBUTED = ("ddp", "fsdp")


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


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    export_slurm_ranks()  # a multi-task job of the submitit launcher: one rank per task
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if world_size == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, dev


def global_rank() -> int:
    """This process's rank before the process group exists (0 outside torchrun / SLURM tasks)."""
    export_slurm_ranks()
    return int(os.environ.get("RANK", "0"))


def teardown_distributed() -> None:
    """Destroy the process group, if this process made one (every exit path of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
