"""AM-SGD's fused passes (Triton): pass 1 reads g, d (and x with coupled decay) and returns
each tensor's sums; pass 2 reads g, d, x and writes d, x: 7 (8) passes over 4-byte state
against SGD-momentum's 5.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amm.optim._compiled import CompiledPasses
from amm.optim._triton import Launcher, triton

if triton is not None:
    import triton.language as tl

    from amm.optim._triton import _block, _each_block, _load, _store

    @triton.jit
    def _am_sgd_block(
        g_tab, d_tab, x_tab, t, offs, mask, hyper, sums_or_weights,
        DTYPE: tl.constexpr, FLAGS: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr, MASKED: tl.constexpr, UPDATE: tl.constexpr,
    ):  # fmt: skip
        """One block of either pass, on the effective gradient g (coupled decay: g + wd x).
        Pass 1 (UPDATE=False) stores the block's sums at `sums_or_weights`; pass 2 reads the
        tensor's momentum weight w there and writes d <- lerp(d, g, w), x <- x - lr d."""
        if UPDATE:  # the tensor's scalars first: their loads overlap the block's
            neg_lr, w = tl.load(hyper + t * 2 + 1), tl.load(sums_or_weights + t)
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        d = _load(d_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        if (FLAGS & 1) or UPDATE:  # pass 1 reads x only for the decay
            x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        if FLAGS & 1:  # coupled weight decay
            g = g + tl.load(hyper + t * 2) * x
        if UPDATE:
            d = d + w * (g - d)  # d <- lerp(d, g, w)
            x = x + neg_lr * d
            _store(d_tab, t, offs, mask, d, DTYPE, BLOCK, MASKED, ALIGNED)
            _store(x_tab, t, offs, mask, x, DTYPE, BLOCK, MASKED, ALIGNED)
        else:
            out = sums_or_weights
            tl.store(out, tl.sum(g * g, axis=0))
            tl.store(out + 1, tl.sum(g * d, axis=0))
            tl.store(out + 2, tl.sum(d * d, axis=0))
            tl.store(out + 3, 0.0)
            tl.store(out + 4, tl.sum(g * g, axis=0))

    @triton.jit
    def _am_sgd_sums_kernel(
        g_tab, d_tab, x_tab, numels, block_tensor, block_start, hyper, partials,
        DTYPE: tl.constexpr, FLAGS: tl.constexpr, BLOCK: tl.constexpr, NCOL: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        pid, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        out = partials + pid * NCOL
        args = (g_tab, d_tab, x_tab, t, offs, mask, hyper, out)
        _each_block(_am_sgd_block, args, full, DTYPE, FLAGS, BLOCK, ALIGNED, False)

    @triton.jit
    def _am_sgd_update_kernel(
        g_tab, d_tab, x_tab, numels, block_tensor, block_start, hyper, weights,
        DTYPE: tl.constexpr, FLAGS: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        _, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, d_tab, x_tab, t, offs, mask, hyper, weights)
        _each_block(_am_sgd_block, args, full, DTYPE, FLAGS, BLOCK, ALIGNED, True)


def am_sgd_kernels() -> Launcher:
    """The two passes of a fused AM-SGD step, over the tensor lists [grads, d, x], with hyper
    [tensors, 2] fp32 (weight decay, -lr). Pass 1's columns, of the effective gradient
    g = grad + wd x: ||g||^2, <g, d>, ||d||^2, 0, ||g||^2. Pass 2: d <- lerp(d, g, w);
    x <- x - lr d."""
    if triton is None:  # the step falls back to foreach (_triton.unsupported_reason)
        return Launcher()
    return Launcher(_am_sgd_sums_kernel, _am_sgd_update_kernel)


# ---- the same two passes in plain torch, compiled for the CPU (amm.optim._compiled) -------


def sgd_sums_torch(tensors: list[list[Tensor]], hyper: Tensor, flags: int) -> Tensor:
    """Pass 1 (reads only), of the effective gradient g = grad + wd x: ||g||^2, <g, d>, ||d||^2,
    0, ||grad||^2 (the non-finite check reads the last; with decay it is ||g||^2 as on CUDA)."""
    gs, ds, xs = tensors
    rows = []
    for t in range(len(gs)):
        g, d = gs[t].float(), ds[t].float()
        if flags & 1:  # coupled weight decay
            g = g + hyper[t, 0] * xs[t].float()
        g_sq = (g * g).sum()
        rows.append(torch.stack([g_sq, (g * d).sum(), (d * d).sum(), torch.zeros_like(g_sq), g_sq]))
    return torch.stack(rows)


def sgd_update_torch(
    tensors: list[list[Tensor]], hyper: Tensor, weights: Tensor, flags: int
) -> None:
    """Pass 2: d <- lerp(d, g, w), x <- x - lr d, with each tensor's weight w."""
    gs, ds, xs = tensors
    for t in range(len(gs)):
        g, d, x = gs[t].float(), ds[t].float(), xs[t].float()
        if flags & 1:
            g = g + hyper[t, 0] * x
        d = d + weights[t] * (g - d)
        ds[t].copy_(d)
        xs[t].copy_(x + hyper[t, 1] * d)


def am_sgd_compiled() -> CompiledPasses:
    """The CPU form of `am_sgd_kernels()`: the same tensor lists, hyper and weights."""
    return _COMPILED


_COMPILED = CompiledPasses(sgd_sums_torch, sgd_update_torch)
