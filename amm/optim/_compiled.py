"""The fused step on the CPU: each optimizer's two passes written in plain torch, the same
math as its Triton kernels (am_sgd_kernels.py, am_adamw_kernels.py), compiled by
`torch.compile` (inductor's C++ backend: one vectorised OpenMP loop per tensor and pass).

- Same interface as `amm.optim._triton.Launcher` (`sums`, `update`), so the optimizers' cores
  run one fused branch whatever the backend.
- Compiled once per tensor list: every per-step number (lr, betas, weights, eps scale) travels
  in the `hyper` / `weights` tensors, never as a Python float, so an lr schedule, a skipped step
  or a resumed optimizer reuses the compiled code (pytorch issue 121857: a float lr recompiles).
  Only the tensor list (shapes, dtypes) and the optimizer's flags select a compiled variant.
- Pass 1 only reads, as on CUDA: the non-finite check after it leaves the state untouched.
- Where no C++ compiler is found, `unavailable_reason()` says so and the step falls back to
  foreach with one warning (`AdaptiveMemoryOptimizer._choose_impl`).

On CUDA the Triton kernels stay the fused step: they are one multi-tensor launch per pass with
a deterministic reduction; a second compiled CUDA path would double what must be kept equal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# Variants one compiled pass may hold (tensor lists x flags); dynamo's default of 8 per code
# object is too few for a process that builds several models (a test session, a sweep).
RECOMPILE_LIMIT = 64


_probed: list[str | None] = []  # the probe's answer, once per process


@torch.compiler.disable  # a host-side probe: a compiled caller runs it eagerly
def unavailable_reason() -> str | None:
    """Why torch.compile cannot build the CPU passes here, or None (probed once)."""
    if not _probed:
        _probed.append(probe())
    return _probed[0]


def probe() -> str | None:
    """Inductor's C++ backend needs a C++ compiler (g++ / clang++, or $CXX) and a Python
    version that dynamo supports."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # InvalidCxxCompiler and whatever the search raises
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"torch.compile found no C++ compiler ({first}); install g++ or set CXX"
    return None


class CompiledPasses:
    """An optimizer's two passes, `sums_fn(tensors, hyper, flags) -> [tensors, 5]` and
    `update_fn(tensors, hyper, weights, flags)` (in place), compiled on first use."""

    def __init__(self, sums_fn: Callable[..., Tensor], update_fn: Callable[..., None]) -> None:
        self._sums = torch.compile(sums_fn, fullgraph=True, dynamic=False)
        self._update = torch.compile(update_fn, fullgraph=True, dynamic=False)

    def sums(self, tensors: list[list[Tensor]], hyper: Tensor, flags: int) -> Tensor:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self._sums(tensors, hyper, flags)

    def update(
        self, tensors: list[list[Tensor]], hyper: Tensor, weights: Tensor, flags: int
    ) -> None:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            self._update(tensors, hyper, weights, flags)
