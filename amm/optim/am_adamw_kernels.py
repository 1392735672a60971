"""AM-AdamW's fused passes (Triton): pass 1 reads g, d, v (and x when weight decay needs
<g, x>) and returns each tensor's sums; pass 2 reads g, d, v, x and writes d, v, x: 10 (11)
passes over 4-byte state against fused AdamW's 7 (the exact correction with the
preconditioned metric reads and writes its per-element c too). The second moment is
recomputed in pass 2 instead of being stored in pass 1 (same traffic, and pass 1 stays
read-only).

FLAGS (compile-time): bit 0 weight decay, bit 1 the preconditioned lam metric (M = P^2),
bit 2 the exact correction kept per element (with bit 1).
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
    def _am_adamw_block(
        g_tab, d_tab, v_tab, x_tab, c_tab, t, offs, mask, hyper, sums_or_weights,
        DTYPE: tl.constexpr, FLAGS: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr, MASKED: tl.constexpr, UPDATE: tl.constexpr,
    ):  # fmt: skip
        """One block of either pass. Both start from the block's g, d, the new second moment v
        and P^-1 = factor / (sqrt(v) + eps) (IEEE-rounded; a finite stand-in outside the tensor). Pass 1
        (UPDATE=False) stores the block's sums at `sums_or_weights`; pass 2 reads the
        tensor's [take, kappa, factor, beta, restart] there and writes v, d (and c) and x."""
        beta2, eps = tl.load(hyper + t * 6), tl.load(hyper + t * 6 + 1)
        lam = tl.load(hyper + t * 6 + 2)
        g = _load(g_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        d = _load(d_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v = _load(v_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
        v = beta2 * v + (1.0 - beta2) * g * g
        inv = tl.div_rn(tl.zeros_like(v) + 1.0, tl.sqrt_rn(v) + eps)  # both operands blocks
        # outside the tensor g, d, v, x load as 0: a finite inv keeps every product there 0
        inv = tl.where(mask, inv, 1.0)
        if UPDATE:
            decay, neg_lr = tl.load(hyper + t * 6 + 3), tl.load(hyper + t * 6 + 4)
            w_row = sums_or_weights + t * 5
            take, kappa, factor = tl.load(w_row), tl.load(w_row + 1), tl.load(w_row + 2)
            pinv = factor * inv
            x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
            if FLAGS & 4:  # exact, per element: w = (1 - b) / ((b + lam P) c + 1 - b)
                beta, restart = tl.load(w_row + 3), tl.load(w_row + 4)
                c = _load(c_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
                q = lam / pinv
                keep = (beta + q) * c
                w = (1.0 - beta) / (keep + (1.0 - beta))
                c = (keep + (1.0 - beta)) / (1.0 + q)
                w = tl.where(w == w, w, 0.0)  # 0/0 only for beta = 1 with c = 0
                w = tl.where(restart != 0.0, 1.0, w)  # a restart: m_hat <- g, c <- 1
                c = tl.where(restart != 0.0, 1.0, c)
                _store(c_tab, t, offs, mask, c, DTYPE, BLOCK, MASKED, ALIGNED)
            elif FLAGS & 2:  # w = take / (1 + lam P) = take P^-1 / (P^-1 + lam)
                w = take * pinv / (pinv + lam)
            else:
                w = tl.zeros_like(v) + take
            d = kappa * d
            d = d + w * (g - d)  # d <- lerp(kappa d, g, w)
            if FLAGS & 1:  # decoupled weight decay: decay = 1 - lr wd (1 for every tensor else)
                x = x * decay
            x = x + neg_lr * pinv * d
            _store(v_tab, t, offs, mask, v, DTYPE, BLOCK, MASKED, ALIGNED)
            _store(d_tab, t, offs, mask, d, DTYPE, BLOCK, MASKED, ALIGNED)
            _store(x_tab, t, offs, mask, x, DTYPE, BLOCK, MASKED, ALIGNED)
        else:
            out = sums_or_weights
            pinv = tl.load(hyper + t * 6 + 5) * inv
            e = g - d
            tl.store(out, tl.sum(g * d * pinv, axis=0))  # <g, P^-1 d>
            if FLAGS & 2:  # W' = (1 + lam) P^-1 / (1 + lam P), 1 / (1 + lam P) = P^-1/(P^-1 + lam)
                r = pinv / (pinv + lam)
                cross = tl.sum(g * e * r * pinv + lam * d * e * r, axis=0) * (1.0 + lam)
                tl.store(out + 1, cross)
                tl.store(out + 2, tl.sum(e * e * r * pinv, axis=0) * (1.0 + lam))
            else:  # W' = P^-1
                tl.store(out + 1, tl.sum((g + lam * d) * e * pinv, axis=0))
                tl.store(out + 2, tl.sum(e * e * pinv, axis=0))
            if FLAGS & 1:
                x = _load(x_tab, t, offs, mask, DTYPE, BLOCK, MASKED, ALIGNED)
                tl.store(out + 3, tl.sum(g * x, axis=0))
            else:
                tl.store(out + 3, 0.0)
            tl.store(out + 4, tl.sum(g * g, axis=0))  # ||g||^2: the non-finite check

    @triton.jit
    def _am_adamw_sums_kernel(
        g_tab, d_tab, v_tab, x_tab, c_tab, numels, block_tensor, block_start, hyper, partials,
        DTYPE: tl.constexpr, FLAGS: tl.constexpr, BLOCK: tl.constexpr, NCOL: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        pid, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        out = partials + pid * NCOL
        args = (g_tab, d_tab, v_tab, x_tab, c_tab, t, offs, mask, hyper, out)
        _each_block(_am_adamw_block, args, full, DTYPE, FLAGS, BLOCK, ALIGNED, False)

    @triton.jit
    def _am_adamw_update_kernel(
        g_tab, d_tab, v_tab, x_tab, c_tab, numels, block_tensor, block_start, hyper, weights,
        DTYPE: tl.constexpr, FLAGS: tl.constexpr, BLOCK: tl.constexpr,
        ALIGNED: tl.constexpr,
    ):  # fmt: skip
        _, t, offs, mask, full = _block(block_tensor, block_start, numels, BLOCK)
        args = (g_tab, d_tab, v_tab, x_tab, c_tab, t, offs, mask, hyper, weights)
        _each_block(_am_adamw_block, args, full, DTYPE, FLAGS, BLOCK, ALIGNED, True)


def am_adamw_kernels() -> Launcher:
    """The two passes of a fused AM-AdamW step, over the tensor lists [grads, d, v, x, c] (c:
    the per-element exact correction, else a placeholder never read), with hyper [tensors, 6]
    fp32 (beta2, eps sqrt(1 - beta2^t), lam, 1 - lr wd, -lr, factor), where P^-1 = factor /
    (sqrt(v) + eps sqrt(1 - beta2^t)), factor = sqrt(1 - beta2^t) / B. Pass 1's columns:
    <g, P^-1 d>, cross and gap in W' (amm.optim.am_adamw), <g, x>, ||g||^2. Pass 2, with
    weights [tensors, 5] (take, kappa, factor, beta, restart): v <- beta2 v + (1 - beta2) g^2,
    d <- lerp(kappa d, g, w), x <- (1 - lr wd) x - lr P^-1 d."""
    if triton is None:  # the step falls back to foreach (_triton.unsupported_reason)
        return Launcher()
    return Launcher(_am_adamw_sums_kernel, _am_adamw_update_kernel)


# ---- the same two passes in plain torch, compiled for the CPU (amm.optim._compiled) -------


def _adamw_prelude(
    hyper: Tensor, t: int, g: Tensor, v: Tensor, factor: Tensor, flags: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Tensor t's new second moment v, P^-1 = factor / s with s = sqrt(v) + eps, and with the
    preconditioned metric r = 1 / (1 + lam P) = factor / (factor + lam s), both from one
    division, q = 1 / (s (factor + lam s)): on a CPU the divisions, not the memory traffic,
    bound this metric's passes."""
    beta2, eps, lam = hyper[t, 0], hyper[t, 1], hyper[t, 2]
    v = beta2 * v + (1.0 - beta2) * g * g
    s = v.sqrt() + eps
    if not flags & 2:
        return v, factor / s, None
    den = factor + lam * s
    q = 1.0 / (s * den)
    return v, factor * den * q, factor * s * q


def adamw_sums_torch(tensors: list[list[Tensor]], hyper: Tensor, flags: int) -> Tensor:
    """Pass 1 (reads only): per tensor <g, P^-1 d>, cross, gap, <g, x>, ||g||^2 (as the Triton
    kernel's columns). This pass moves 3 arrays but computes a sqrt and a division per element,
    so on a CPU its arithmetic, not its memory traffic, sets its time: the per-tensor constants
    (factor, 1 + lam) multiply the sums, not the elements, and the preconditioned metric's
    P^-1 = factor den k and r P^-1 = factor^2 k come from one reciprocal k = 1 / (s den)."""
    gs, ds, vs, xs, _ = tensors
    rows = []
    for t in range(len(gs)):
        g, d = gs[t].float(), ds[t].float()
        beta2, eps, lam, factor = hyper[t, 0], hyper[t, 1], hyper[t, 2], hyper[t, 5]
        s = (beta2 * vs[t].float() + (1.0 - beta2) * g * g).sqrt() + eps
        e = g - d
        if flags & 2:  # W' = (1 + lam) P^-1 / (1 + lam P); s P = den / factor
            den = factor + lam * s
            k = 1.0 / (s * den)
            plane = (g * d * den * k).sum() * factor
            cross = (e * k * (factor * g + lam * s * d)).sum() * (factor * (1.0 + lam))
            gap = (e * e * k).sum() * (factor * factor * (1.0 + lam))
        else:  # W' = P^-1 = factor / s
            k = 1.0 / s
            plane = (g * d * k).sum() * factor
            cross = ((g + lam * d) * e * k).sum() * factor
            gap = (e * e * k).sum() * factor
        g_dot_x = (g * xs[t].float()).sum() if flags & 1 else torch.zeros_like(gap)
        rows.append(torch.stack([plane, cross, gap, g_dot_x, (g * g).sum()]))
    return torch.stack(rows)


def adamw_update_torch(
    tensors: list[list[Tensor]], hyper: Tensor, weights: Tensor, flags: int
) -> None:
    """Pass 2 with each tensor's [take, kappa, factor, beta, restart]: v, d (and c) and x."""
    gs, ds, vs, xs, cs = tensors
    for t in range(len(gs)):
        g, d, x = gs[t].float(), ds[t].float(), xs[t].float()
        take, kappa = weights[t, 0], weights[t, 1]
        v, pinv, r = _adamw_prelude(hyper, t, g, vs[t].float(), weights[t, 2], flags)
        lam, decay, neg_lr = hyper[t, 2], hyper[t, 3], hyper[t, 4]
        if flags & 4:  # exact, per element: w = (1 - b) / ((b + lam P) c + 1 - b)
            beta, restart = weights[t, 3], weights[t, 4]
            q = lam / pinv
            keep = (beta + q) * cs[t].float()
            w = (1.0 - beta) / (keep + (1.0 - beta))
            c = (keep + (1.0 - beta)) / (1.0 + q)
            w = torch.where(w == w, w, 0.0)  # 0/0 only for beta = 1 with c = 0
            w = torch.where(restart != 0.0, 1.0, w)  # a restart: m_hat <- g, c <- 1
            cs[t].copy_(torch.where(restart != 0.0, 1.0, c))
        elif r is not None:  # w = take / (1 + lam P)
            w = take * r
        else:
            w = take
        d = kappa * d
        d = d + w * (g - d)  # d <- lerp(kappa d, g, w)
        if flags & 1:  # decoupled weight decay: decay = 1 - lr wd
            x = x * decay
        xs[t].copy_(x + neg_lr * pinv * d)
        vs[t].copy_(v)
        ds[t].copy_(d)


def am_adamw_compiled() -> CompiledPasses:
    """The CPU form of `am_adamw_kernels()`: the same tensor lists, hyper and weights."""
    return _COMPILED


_COMPILED = CompiledPasses(adamw_sums_torch, adamw_update_torch)
