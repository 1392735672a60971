"""The Triton machinery shared by the fused steps of the AM optimizers (their kernels live in
am_sgd_kernels.py and am_adamw_kernels.py): block and pointer tables, masked/aligned loads and
stores, the deterministic per-tensor reduction of partial sums, and the launcher.

A fused step is two multi-tensor kernels. Pass 1 reads the state and returns each tensor's
sums for the beta formula; beta itself is computed from those few numbers in torch, by the
same code as the foreach path (`amm.optim.beta`); pass 2 updates momentum, second moment and
parameters.

- One launch covers every tensor of a dtype: a block table maps each program to (tensor,
  offset), and pointer tables hold the tensors' addresses, so the launch count does not grow
  with the number of tensors.
- Pass 1 writes nothing, so the non-finite check after it leaves the state untouched.
- Per-block partial sums are reduced per tensor in a fixed order: the result is
  deterministic, so DDP ranks compute the same beta.
- No host sync: tables travel host -> device as non-blocking copies from pinned memory.
- Full blocks (all but each tensor's last) use unmasked 16-byte loads and stores when every
  tensor of the launch is 16-byte aligned (the usual case; checked on the host): Triton
  vectorises only accesses it knows to be aligned and whole.

Per-tensor beta uses the same two passes: a tensor's beta needs that tensor's sums before any
of its elements can be updated, so one pass would have to hold the whole tensor on chip, and
LLaMA's weight matrices (with g, m, v: 67-180 MB each at 1B) are larger than the GPU's
registers and L2 together. Its cost is therefore that of the global beta.

Runs on CUDA tensors with Triton; on the CPU only in Triton's interpreter
(TRITON_INTERPRET=1, which the tests use to check fused == foreach without a GPU).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from amm.optim._tensors import rows_at, small_tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch's CUDA wheels ship Triton
    triton = None

BLOCK = 2048  # elements per program
NCOL = 8  # columns of the per-block partial sums (five used; a power of two for tl.arange)
RBLOCK = 256  # partial-sum rows per iteration of the per-tensor reduction


# Triton decides when the kernels are defined (at import) whether they run in its interpreter.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def interpreting() -> bool:
    """The kernels run in Triton's interpreter, on CPU tensors (slowly): for tests."""
    return _INTERPRETED


def unsupported_reason(per_tensor: list[tuple[Tensor, ...]]) -> str | None:
    """Why the fused step cannot run on these tensors, or None. Each tuple holds one
    parameter's tensors (parameter, gradient, state...): same dtype, device and layout."""
    if triton is None:
        return "Triton is not installed (it ships with torch's CUDA wheels: pip install triton)"
    device = per_tensor[0][0].device
    if device.type != "cuda" and not interpreting():
        return (
            f"the parameters are on {device.type}; the fused step runs on CUDA tensors "
            "(use the default foreach implementation elsewhere)"
        )
    for tensors in per_tensor:
        p = tensors[0]
        if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"dtype {p.dtype} is not supported (float32, bfloat16, float16 are)"
        dense = p.is_contiguous() or (
            p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
        )
        if not dense:
            return f"a parameter of shape {list(p.shape)} is not dense (strides {p.stride()})"
        for t in tensors[1:]:
            if t.device != device or t.dtype != p.dtype or t.stride() != p.stride():
                return (
                    f"a parameter of shape {list(p.shape)} has a gradient or state with another "
                    "dtype, device or memory layout"
                )
    return None


if triton is not None:
    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    # Every kernel body runs in one of two forms. A block that lies wholly inside its tensor (all
    # but each tensor's last) takes unmasked loads and stores, which Triton vectorises (16 bytes
    # per access) when it knows the addresses are 16-byte aligned (ALIGNED: checked on the host,
    # hinted with multiple_of); a tensor's last block takes masked, element-wise accesses.

    @triton.jit
    def _block(block_tensor, block_start, numels, BLOCK: tl.constexpr):
        """This program's tensor, its offsets, their mask, and whether all are in range."""
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
        offs = start + tl.arange(0, BLOCK)
        numel = tl.load(numels + t)
        return pid, t, offs, offs < numel, start + BLOCK <= numel

    @triton.jit
    def _pointers(table, t, offs, DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
        ptrs = tl.load(table + t).to(tl.pointer_type(DTYPE)) + offs
        if ALIGNED:
            ptrs = tl.max_contiguous(tl.multiple_of(ptrs, 16), BLOCK)
        return ptrs

    @triton.jit
    def _load(table, t, offs, mask, DTYPE: tl.constexpr, BLOCK: tl.constexpr,
              MASKED: tl.constexpr, ALIGNED: tl.constexpr):  # fmt: skip
        ptrs = _pointers(table, t, offs, DTYPE, BLOCK, ALIGNED)
        if MASKED:
            return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        else:
            return tl.load(ptrs).to(tl.float32)

    @triton.jit
    def _store(table, t, offs, mask, value, DTYPE: tl.constexpr, BLOCK: tl.constexpr,
               MASKED: tl.constexpr, ALIGNED: tl.constexpr):  # fmt: skip
        ptrs = _pointers(table, t, offs, DTYPE, BLOCK, ALIGNED)
        if MASKED:
            tl.store(ptrs, value.to(DTYPE), mask=mask)
        else:
            tl.store(ptrs, value.to(DTYPE))

    @triton.jit
    def _each_block(body: tl.constexpr, args, full, DTYPE: tl.constexpr, FLAGS: tl.constexpr,
                    BLOCK: tl.constexpr, ALIGNED: tl.constexpr, UPDATE: tl.constexpr):  # fmt: skip
        """`body(*args, DTYPE, FLAGS, BLOCK, ALIGNED, MASKED, UPDATE)` on this program's
        block (UPDATE: pass 2): MASKED=False (vectorised) when the block lies wholly inside its
        tensor (`full`), True for a tensor's last block. (The constexprs are passed one by one:
        in a tuple they would become run-time values.)"""
        if full:
            body(*args, DTYPE, FLAGS, BLOCK, ALIGNED, False, UPDATE)
        else:
            body(*args, DTYPE, FLAGS, BLOCK, ALIGNED, True, UPDATE)

    @triton.jit
    def _segment_sum_kernel(partials, block_offsets, out, NCOL: tl.constexpr, RBLOCK: tl.constexpr):
        """Row sums of each tensor's run of partials, always in the same order."""
        t = tl.program_id(0)
        lo = tl.load(block_offsets + t)
        hi = tl.load(block_offsets + t + 1)
        rows = tl.arange(0, RBLOCK)
        cols = tl.arange(0, NCOL)
        acc = tl.zeros([RBLOCK, NCOL], dtype=tl.float32)
        for start in tl.range(lo, hi, RBLOCK):
            r = start + rows
            rows_in = (r < hi)[:, None]
            acc += tl.load(partials + r[:, None] * NCOL + cols[None, :], mask=rows_in, other=0.0)
        tl.store(out + t * NCOL + cols, tl.sum(acc, axis=0))


@dataclass
class _Launch:
    """The tensors of one dtype and the block table of their kernels."""

    members: list[int]  # positions in the step's tensor lists
    dtype: Any  # Triton's dtype
    numels: Tensor
    block_tensor: Tensor
    block_start: Tensor
    block_offsets: Tensor  # the first block of every member, and the end
    blocks: int


class Launcher:
    """Launches an optimizer's two fused passes, `sums_kernel` (pass 1: each tensor's sums) and
    `update_kernel` (pass 2), whose first arguments are the pointer tables of the step's tensor
    lists, in the order the optimizer passes them. Caches block tables (by shapes) and pointer
    tables (by addresses: parameters and state do not move; gradients may, and are re-sent
    then)."""

    def __init__(self, sums_kernel: Any = None, update_kernel: Any = None) -> None:
        self.sums_kernel, self.update_kernel = sums_kernel, update_kernel
        self._plans: dict[tuple, list[_Launch]] = {}
        self._pointers: dict[str, tuple[tuple[int, ...], Tensor, bool]] = {}

    def _launches(self, tensors: list[Tensor]) -> list[_Launch]:
        device = tensors[0].device
        key = (device, tuple((t.dtype, t.numel()) for t in tensors))
        plan = self._plans.get(key)
        if plan is None:
            by_dtype: dict[torch.dtype, list[int]] = {}
            for i, t in enumerate(tensors):
                if t.numel() > 0:
                    by_dtype.setdefault(t.dtype, []).append(i)
            plan = []
            for dtype, members in by_dtype.items():
                numels = [tensors[i].numel() for i in members]
                block_tensor, block_start, offsets = [], [], [0]
                for k, n in enumerate(numels):
                    starts = list(range(0, n, BLOCK))
                    block_tensor += [k] * len(starts)
                    block_start += starts
                    offsets.append(offsets[-1] + len(starts))
                plan.append(
                    _Launch(
                        members=members,
                        dtype=_TL_DTYPES[dtype],
                        numels=small_tensor(numels, device, torch.int64),
                        block_tensor=small_tensor(block_tensor, device, torch.int32),
                        block_start=small_tensor(block_start, device, torch.int64),
                        block_offsets=small_tensor(offsets, device, torch.int64),
                        blocks=len(block_tensor),
                    )
                )
            self._plans[key] = plan
        return plan

    def _table(self, role: str, tensors: list[Tensor]) -> tuple[Tensor, bool]:
        """The device table of the tensors' addresses, and whether all are 16-byte aligned."""
        addresses = tuple(t.data_ptr() for t in tensors)
        cached = self._pointers.get(role)
        if cached is None or cached[0] != addresses:
            table = small_tensor(list(addresses), tensors[0].device, torch.int64)
            cached = (addresses, table, all(a % 16 == 0 for a in addresses))
            self._pointers[role] = cached
        return cached[1], cached[2]

    def _tables(
        self, tensors: list[list[Tensor]], launch: _Launch, k: int
    ) -> tuple[list[Tensor], bool]:
        """One launch's pointer tables (in the kernels' argument order) and ALIGNED."""
        tables = [
            self._table(f"{i}.{k}", [role[j] for j in launch.members])
            for i, role in enumerate(tensors)
        ]
        return [table for table, _ in tables], all(aligned for _, aligned in tables)

    def _launch(
        self,
        kernel: Any,
        tensors: list[list[Tensor]],
        launch: _Launch,
        k: int,
        hyper: Tensor,
        out: Tensor,
        **meta: Any,
    ) -> None:
        """One kernel launch over one dtype's tensors: pointer tables, block table, the rows
        of `hyper`, then `out` (pass 1: its partial sums; pass 2: its weights)."""
        tables, aligned = self._tables(tensors, launch, k)
        kernel[(launch.blocks,)](
            *tables,
            launch.numels,
            launch.block_tensor,
            launch.block_start,
            _select(hyper, launch.members),
            out,
            DTYPE=launch.dtype,
            BLOCK=BLOCK,
            ALIGNED=aligned,
            **meta,
        )

    # torch.compile runs the launches eagerly (a graph break): Dynamo cannot trace the pointer
    # tables or Triton's launcher, and the kernels are already fused.
    @torch.compiler.disable
    def sums(self, tensors: list[list[Tensor]], hyper: Tensor, flags: int) -> Tensor:
        """Pass 1 over all tensors: [tensors, NCOL] fp32 (columns as the kernel writes them).
        `hyper`: one row per tensor; `flags`: the kernels' compile-time switches (bit 0: some
        tensor has weight decay; the optimizer's kernels define the others)."""
        first = tensors[0]
        device = first[0].device
        rows = torch.zeros(len(first), NCOL, dtype=torch.float32, device=device)
        with _current_device(device):  # Triton launches on the current device
            for k, launch in enumerate(self._launches(first)):
                partials = torch.empty(launch.blocks, NCOL, dtype=torch.float32, device=device)
                self._launch(
                    self.sums_kernel,
                    tensors,
                    launch,
                    k,
                    hyper,
                    partials,
                    NCOL=NCOL,
                    FLAGS=flags,
                )
                out = torch.empty(len(launch.members), NCOL, dtype=torch.float32, device=device)
                _segment_sum_kernel[(len(launch.members),)](
                    partials, launch.block_offsets, out, NCOL=NCOL, RBLOCK=RBLOCK
                )
                if len(launch.members) == len(first):
                    rows = out
                else:
                    rows.index_copy_(0, small_tensor(launch.members, device, torch.long), out)
        return rows

    @torch.compiler.disable
    def update(
        self, tensors: list[list[Tensor]], hyper: Tensor, weights: Tensor, flags: int
    ) -> None:
        """Pass 2 over all tensors, with each tensor's momentum weight `weights` (fp32)."""
        first = tensors[0]
        with _current_device(first[0].device):  # Triton launches on the current device
            for k, launch in enumerate(self._launches(first)):
                w = _select(weights, launch.members)
                self._launch(self.update_kernel, tensors, launch, k, hyper, w, FLAGS=flags)


def _current_device(device: torch.device) -> Any:
    """Triton launches on the current CUDA device, not the tensors': make them the same."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _select(values: Tensor, members: list[int]) -> Tensor:
    """The rows of `values` for one launch (all of it when the launch covers every tensor)."""
    return rows_at(values, members).contiguous()
