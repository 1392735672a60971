"""AM-AdamW's fused passes (Triton): pass 1 reads g, m, v (and x when weight decay needs
<g, x>) and returns each tensor's sums; pass 2 reads g, m, v, x and writes m, v, x: 10 (11)
passes over 4-byte state against fused AdamW's 7. The second moment is recomputed in pass 2
instead of being stored in pass 1 (same traffic, and pass 1 stays read-only).
"""

from __future__ import annotations

from torch import Tensor

from amm.optim._triton import Launcher, triton

if triton is not None:
    import triton.language as tl

    from amm.optim._triton import _block, _load, _store

    @triton.jit
    def _adam_metric(g, v, mask, beta2, eps):
        """The new second moment and 1 / (sqrt(v) + eps), IEEE-rounded like torch's ops."""
        v = beta2 * v + (1.0 - beta2) * g * g
        inv = tl.div_rn(tl.zeros_like(v) + 1.0, tl.sqrt_rn(v) + eps)  # both operands blocks
        return v, tl.where(mask, inv, 0.0)

    @triton.jit
    def _am_adamw_sums(
        g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, out,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr,
        MASKED: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        beta2, eps = tl.load(hyper + t * 4), tl.load(hyper + t * 4 + 1)
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        m = _load(m_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v = _load(v_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v, inv = _adam_metric(g, v, mask, beta2, eps)
        u = g * inv
        tl.store(out, tl.sum(g * u, axis=0))  # ||g||_P^2 (unscaled)
        tl.store(out + 1, tl.sum(m * u, axis=0))  # <g, d>_P
        tl.store(out + 2, tl.sum(m * m * inv, axis=0))  # ||d||_P^2
        if WITH_DECAY:
            x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
            tl.store(out + 3, tl.sum(g * x, axis=0))
        else:
            tl.store(out + 3, 0.0)
        tl.store(out + 4, tl.sum(g * g, axis=0))  # ||g||^2: the non-finite check

    @triton.jit
    def _am_adamw_sums_kernel(
        g_tab, m_tab, v_tab, x_tab, numels, block_tensor, block_start, hyper, partials,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr, NCOL: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        pid, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, partials + pid * NCOL)
        if full:
            _am_adamw_sums(*args, DTYPE, WITH_DECAY, BLOCK, False, ALIGNED)
        else:
            _am_adamw_sums(*args, DTYPE, WITH_DECAY, BLOCK, True, ALIGNED)

    @triton.jit
    def _am_adamw_update(
        g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, weights,
        DTYPE: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        beta2, eps = tl.load(hyper + t * 4), tl.load(hyper + t * 4 + 1)
        decay, step = tl.load(hyper + t * 4 + 2), tl.load(hyper + t * 4 + 3)
        w = tl.load(weights + t)
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        m = _load(m_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v = _load(v_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v, inv = _adam_metric(g, v, mask, beta2, eps)
        m = m + w * (g - m)  # m_hat <- lerp(m_hat, g, w)
        x = x * decay + step * m * inv
        _store(v_tab, t, offs, mask, v, DTYPE, BLOCK, MASKED, ALIGNED)
        _store(m_tab, t, offs, mask, m, DTYPE, BLOCK, MASKED, ALIGNED)
        _store(x_tab, t, offs, mask, x, DTYPE, BLOCK, MASKED, ALIGNED)

    @triton.jit
    def _am_adamw_update_kernel(
        g_tab, m_tab, v_tab, x_tab, numels, block_tensor, block_start, hyper, weights,
        DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr,
    ):  # fmt: skip
        _, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, weights)
        if full:
            _am_adamw_update(*args, DTYPE, BLOCK, False, ALIGNED)
        else:
            _am_adamw_update(*args, DTYPE, BLOCK, True, ALIGNED)


class AMAdamWKernels(Launcher):
    """The two passes of a fused AM-AdamW step."""

    def sums(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        moms: list[Tensor],
        second: list[Tensor],
        hyper: Tensor,
        with_decay: bool,
    ) -> Tensor:
        """hyper: [tensors, 4] fp32 (beta2, eps sqrt(1 - beta2^t), decay, step size).
        Columns: ||g||_P^2, <g, d>_P, ||d||_P^2 (times sqrt(1 - beta2^t) gives the metric of
        docs/algorithm.md), <g, x>, ||g||^2."""
        roles = dict(g=grads, m=moms, v=second, x=params)
        return self._sums(_am_adamw_sums_kernel, roles, hyper, WITH_DECAY=with_decay)

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        moms: list[Tensor],
        second: list[Tensor],
        hyper: Tensor,
        weights: Tensor,
    ) -> None:
        """v <- beta2 v + (1 - beta2) g^2; m_hat <- lerp(m_hat, g, w);
        x <- decay x + step m_hat / (sqrt(v) + eps sqrt(1 - beta2^t))."""
        roles = dict(g=grads, m=moms, v=second, x=params)
        self._update(_am_adamw_update_kernel, roles, hyper, weights)
