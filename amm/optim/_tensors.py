"""Tensor helpers shared by the optimizers and their kernels (a leaf: imports only torch).

Sums run in fp32, or fp64 for fp64 parameters; small host values reach accelerators without a
host sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# A tensor's beta in a step: None (no history: the first step), a frozen float, or a 0-dim
# device tensor (adaptive).
Beta = Tensor | float | None


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """The loss of `step(closure)`: the closure's value, computed with gradients enabled (the
    step itself runs under no_grad), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: in-place ops update the DTensor), else `t`."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "device_mesh") else t


def sum_dtype(t: Tensor) -> torch.dtype:
    """Reductions run in fp32, or fp64 for fp64 parameters (deterministic convex problems)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def common_sum_dtype(tensors: list[Tensor]) -> torch.dtype:
    """The dtype of a list's sums: fp64 if any tensor is fp64, else fp32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


def squared_norms(tensors: list[Tensor]) -> Tensor:
    """||t||^2 per tensor, in fp32 (fp64 for fp64 tensors): one read of each tensor."""
    dtype = common_sum_dtype(tensors)
    if all(t.dtype == dtype for t in tensors):  # the usual case: no casts
        flat = [t.reshape(-1) for t in tensors]
        return torch.stack([torch.dot(f, f) for f in flat])
    if all(t.dtype in (torch.float32, torch.float64) for t in tensors):
        # a BLAS dot reads the tensor once and is faster than a norm kernel on the CPU
        return torch.stack([torch.dot(t.reshape(-1), t.reshape(-1)).to(dtype) for t in tensors])
    return torch.stack(torch._foreach_norm(tensors, dtype=dtype)).to(dtype).square()


def small_tensor(values: list[Any], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A few host values on the device without a host sync: a plain copy from pageable memory
    would wait for the stream, so accelerators get a non-blocking copy from pinned memory."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def rows_at(rows: Tensor, idx: list[int]) -> Tensor:
    """The rows of `rows` at positions `idx`: `rows` itself when `idx` lists every row."""
    if len(idx) == rows.shape[0]:
        return rows
    return rows.index_select(0, small_tensor(idx, rows.device, torch.long))


def per_tensor(values: list[float], device: torch.device, dtype: torch.dtype) -> Tensor | float:
    """Per-tensor hyper-parameters: one float when they agree (the usual case), else a vector."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return small_tensor(values, device, dtype)


def beta_vector(
    beta: list[Beta], fill: list[float], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Per-tensor betas as one device vector; None (first step) takes `fill`. No host sync."""
    first = beta[0]
    if isinstance(first, Tensor) and all(b is first for b in beta):  # global scope
        return first.to(dtype).reshape(1).expand(len(beta))
    return torch.stack(
        [
            b.to(dtype)
            if isinstance(b, Tensor)
            else torch.full((), float(f if b is None else b), dtype=dtype, device=device)
            for b, f in zip(beta, fill)
        ]
    )


def by_group(group_ids: list[int]) -> dict[int, list[int]]:
    """Positions of a step's tensors per param group, in order."""
    out: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return out
