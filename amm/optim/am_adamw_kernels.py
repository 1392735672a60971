"""AM-AdamW's fused passes (Triton): pass 1 reads g, m, v (and x when weight decay needs
<g, x>) and returns each tensor's sums; pass 2 reads g, m, v, x and writes m, v, x: 10 (11)
passes over 4-byte state against fused AdamW's 7. The second moment is recomputed in pass 2
instead of being stored in pass 1 (same traffic, and pass 1 stays read-only).
"""

from __future__ import annotations

from amm.optim._triton import Launcher, triton

if triton is not None:
    import triton.language as tl

    from amm.optim._triton import _block, _each_block, _load, _store

    @triton.jit
    def _am_adamw_block(
        g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, sums_or_weights,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr, MASKED: tl.constexpr, UPDATE: tl.constexpr,
    ):  # fmt: skip
        """One block of either pass. Both start from the block's g, m_hat, the new second
        moment v and inv = 1 / (sqrt(v) + eps) (IEEE-rounded like torch's ops; 0 outside the
        tensor). Pass 1 (UPDATE=False) stores the block's sums at `sums_or_weights`; pass 2
        reads the tensor's momentum weight w there and writes v, m_hat and x."""
        beta2, eps = tl.load(hyper + t * 4), tl.load(hyper + t * 4 + 1)
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        m = _load(m_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v = _load(v_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v = beta2 * v + (1.0 - beta2) * g * g
        inv = tl.div_rn(tl.zeros_like(v) + 1.0, tl.sqrt_rn(v) + eps)  # both operands blocks
        inv = tl.where(mask, inv, 0.0)
        if UPDATE:
            decay, step = tl.load(hyper + t * 4 + 2), tl.load(hyper + t * 4 + 3)
            w = tl.load(sums_or_weights + t)
            x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
            m = m + w * (g - m)  # m_hat <- lerp(m_hat, g, w)
            if WITH_DECAY:  # decoupled weight decay: decay = 1 - lr wd (1 for every tensor else)
                x = x * decay
            x = x + step * m * inv
            _store(v_tab, t, offs, mask, v, DTYPE, BLOCK, MASKED, ALIGNED)
            _store(m_tab, t, offs, mask, m, DTYPE, BLOCK, MASKED, ALIGNED)
            _store(x_tab, t, offs, mask, x, DTYPE, BLOCK, MASKED, ALIGNED)
        else:
            out = sums_or_weights
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
        out = partials + pid * NCOL
        args = (g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, out)
        _each_block(_am_adamw_block, args, full, DTYPE, WITH_DECAY, BLOCK, ALIGNED, False)

    @triton.jit
    def _am_adamw_update_kernel(
        g_tab, m_tab, v_tab, x_tab, numels, block_tensor, block_start, hyper, weights,
        DTYPE: tl.constexpr, WITH_DECAY: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        _, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, m_tab, v_tab, x_tab, t, offs, mask, hyper, weights)
        _each_block(_am_adamw_block, args, full, DTYPE, WITH_DECAY, BLOCK, ALIGNED, True)


def am_adamw_kernels() -> Launcher:
    """The two passes of a fused AM-AdamW step, over the tensor lists [grads, m_hat, v, x], with
    hyper [tensors, 4] fp32 (beta2, eps sqrt(1 - beta2^t), decay, step size). Pass 1's columns:
    ||g||_P^2, <g, d>_P, ||d||_P^2 (times sqrt(1 - beta2^t) gives the metric of
    docs/algorithm.md), <g, x>, ||g||^2. Pass 2: v <- beta2 v + (1 - beta2) g^2;
    m_hat <- lerp(m_hat, g, w); x <- decay x + step m_hat / (sqrt(v) + eps sqrt(1 - beta2^t))
    (without weight decay every decay is 1 and x is not multiplied)."""
    if triton is None:  # the step falls back to foreach (_triton.unsupported_reason)
        return Launcher()
    return Launcher(_am_adamw_sums_kernel, _am_adamw_update_kernel)
