"""AM-SGD's fused passes (Triton): pass 1 reads g, d (and x with coupled decay) and returns
each tensor's sums; pass 2 reads g, d, x and writes d, x: 7 (8) passes over 4-byte state
against SGD-momentum's 5.
"""

from __future__ import annotations

from torch import Tensor

from amm.optim._triton import Launcher, triton

if triton is not None:
    import triton.language as tl

    from amm.optim._triton import _block, _load, _store

    @triton.jit
    def _am_sgd_sums(
        g_tab, d_tab, x_tab, t, offs, mask, hyper, out,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr,
        MASKED: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        d = _load(d_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        if WITH_DECAY:  # coupled decay: the effective gradient g + wd x
            x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
            g = g + tl.load(hyper + t * 2) * x
        tl.store(out, tl.sum(g * g, axis=0))
        tl.store(out + 1, tl.sum(g * d, axis=0))
        tl.store(out + 2, tl.sum(d * d, axis=0))
        tl.store(out + 3, 0.0)
        tl.store(out + 4, tl.sum(g * g, axis=0))

    @triton.jit
    def _am_sgd_sums_kernel(
        g_tab, d_tab, x_tab, numels, block_tensor, block_start, hyper, partials,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr, NCOL: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        pid, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, d_tab, x_tab, t, offs, mask, hyper, partials + pid * NCOL)
        if full:
            _am_sgd_sums(*args, DTYPE, WITH_DECAY, BLOCK, False, ALIGNED)
        else:
            _am_sgd_sums(*args, DTYPE, WITH_DECAY, BLOCK, True, ALIGNED)

    @triton.jit
    def _am_sgd_update(
        g_tab, d_tab, x_tab, t, offs, mask, hyper, weights,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr,
        MASKED: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        neg_lr, w = tl.load(hyper + t * 2 + 1), tl.load(weights + t)
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        d = _load(d_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        if WITH_DECAY:
            g = g + tl.load(hyper + t * 2) * x
        d = d + w * (g - d)  # d <- lerp(d, g, w)
        x = x + neg_lr * d
        _store(d_tab, t, offs, mask, d, DTYPE, BLOCK, MASKED, ALIGNED)
        _store(x_tab, t, offs, mask, x, DTYPE, BLOCK, MASKED, ALIGNED)

    @triton.jit
    def _am_sgd_update_kernel(
        g_tab, d_tab, x_tab, numels, block_tensor, block_start, hyper, weights,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        _, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, d_tab, x_tab, t, offs, mask, hyper, weights)
        if full:
            _am_sgd_update(*args, DTYPE, WITH_DECAY, BLOCK, False, ALIGNED)
        else:
            _am_sgd_update(*args, DTYPE, WITH_DECAY, BLOCK, True, ALIGNED)


class AMSGDKernels(Launcher):
    """The two passes of a fused AM-SGD step."""

    def sums(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        hyper: Tensor,
        with_decay: bool,
    ) -> Tensor:
        """hyper: [tensors, 2] fp32 (weight decay, -lr). Columns of the effective gradient
        g = grad + wd x: ||g||^2, <g, d>, ||d||^2, 0, ||g||^2."""
        roles = dict(g=grads, d=bufs, x=params)
        return self._sums(_am_sgd_sums_kernel, roles, hyper, WITH_DECAY=with_decay)

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        hyper: Tensor,
        weights: Tensor,
        with_decay: bool,
    ) -> None:
        """d <- lerp(d, grad + wd x, w); x <- x - lr d."""
        roles = dict(g=grads, d=bufs, x=params)
        self._update(_am_sgd_update_kernel, roles, hyper, weights, WITH_DECAY=with_decay)
