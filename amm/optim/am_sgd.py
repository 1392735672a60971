"""AM-SGD (the paper's AM-MGD): momentum SGD whose momentum coefficient adapts every step.

    d_{t+1} = ((beta_t + lam) d_t + (1 - beta_t) g_t) / (1 + lam),   x_{t+1} = x_t - eta_t d_{t+1}

with beta_t from `amm.optim.beta` (docs/algorithm.md, sections 1-2). Weight decay is coupled
(added to the gradient, i.e. part of the modelled function), as in torch.optim.SGD.

`AMSGDStep` is the step's core in the phases of `AdaptiveMemoryOptimizer.step()`: prepare (the
effective gradients), sums (||g||^2, <g, d>, ||d||^2 per tensor), update (the heavy-ball step);
each phase branches on the implementation: single-tensor (the reference), foreach, or fused
(Triton, am_sgd_kernels.py).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from amm.optim._base import (
    AdaptiveMemoryOptimizer,
    GroupHyper,
    Impl,
    OptimizerOptions,
    StepContext,
    StepTensors,
    restarts,
)
from amm.optim._tensors import (
    Beta,
    beta_vector,
    by_group,
    common_sum_dtype,
    dot,
    local,
    per_tensor,
    rows_at,
    small_tensor,
    squared_norms,
    sum_dtype,
)
from amm.optim.beta import gap_and_cross

if TYPE_CHECKING:
    from typing_extensions import Unpack

# ---- the sums of the beta formula ---------------------------------------------------------


def _single_tensor_sums(g: Tensor, d: Tensor, lam: float, dtype: torch.dtype) -> Tensor:
    """Reference: the formulas literally. Row [<g, d>, <g + lam d, g - d>, ||g - d||^2]."""
    g, d = g.to(dtype), d.to(dtype)
    return torch.stack([dot(g, d), dot(g + lam * d, g - d), dot(g - d, g - d)])


def _multi_tensor_sums(
    grads: list[Tensor],
    bufs: list[Tensor],
    lam: Tensor | float,
    g_sq: Tensor | None = None,
    d_sq: Tensor | None = None,
) -> Tensor:
    """foreach: ||g||^2, ||d||^2 and <g, d> per tensor, reading g and d without temporaries.
    Rows [<g, d>, cross, gap, ||g||^2, ||d||^2]; the squared norms can be passed in."""
    dtype = common_sum_dtype(grads)
    g_sq = squared_norms(grads) if g_sq is None else g_sq
    d_sq = squared_norms(bufs) if d_sq is None else d_sq
    if any(g.dtype != dtype for g in grads):  # bf16/fp16: the dot in fp32
        g_dot_d = torch.stack([dot(g.to(dtype), d.to(dtype)) for g, d in zip(grads, bufs)])
    else:
        g_dot_d = torch.stack([dot(g, d) for g, d in zip(grads, bufs)])
    gap_sq, cross = gap_and_cross(g_sq, g_dot_d, d_sq, lam)
    return torch.stack([g_dot_d, cross, gap_sq, g_sq, d_sq], dim=1)


# ---- the core -----------------------------------------------------------------------------


class AMSGDStep:
    """One AM-SGD step (see `amm.optim._base.StepCore`)."""

    first_step_adaptive = False  # d_0 = g_0: the first step is plain gradient descent

    def __init__(
        self, ts: StepTensors, hyper: list[GroupHyper], impl: Impl, context: StepContext
    ) -> None:
        self.ts, self.impl, self.context = ts, impl, context
        self.hyper = hyper  # per group
        self.hp = [hyper[g] for g in ts.group_ids]  # per tensor
        self.bufs = [local(st["momentum_buffer"]) for st in ts.states]
        self.grads = ts.grads  # the effective gradients after prepare()
        self.grad_sq: Tensor | None = None  # ||g||^2 of the effective gradients, when known
        # foreach: the rows of the last sums (positions, rows), from which ||d||^2 advances
        self.kept: tuple[list[int], Tensor] | None = None
        self.raw: Tensor | None = None  # fused pass 1's columns

    # -- phase 2: the gradient norms of the non-finite check -------------------------------
    def grad_norms(self) -> Tensor | None:
        if self.impl != "fused":
            return None
        device = self.ts.params[0].device
        self.fused_hyper = small_tensor(
            [[h.weight_decay, -h.lr] for h in self.hp], device, torch.float32
        )
        self.flags = int(any(h.weight_decay != 0 for h in self.hp))  # the kernels' FLAGS
        self.tensors = [self.ts.grads, self.bufs, self.ts.params]  # the kernels' order
        # pass 1 (reads only): ||g||^2, <g, d>, ||d||^2 of the effective gradients, ||grad||^2
        self.raw = self.context.kernels.sums(self.tensors, self.fused_hyper, self.flags)
        return self.raw[:, 4]

    # -- phase 3 ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """g = grad + wd * x (coupled weight decay); the fused kernels add it on the fly."""
        if self.impl == "fused":
            return
        grads = list(self.ts.grads)
        decayed = False
        for i, (p, g, h) in enumerate(zip(self.ts.params, self.ts.grads, self.hp)):
            if h.weight_decay != 0:
                grads[i] = g.add(p, alpha=h.weight_decay)
                decayed = True
        self.grads = grads
        self.grad_sq = None if decayed else self.ts.grad_sq

    # -- phase 4 ------------------------------------------------------------------------------
    def sums(self, idx: list[int]) -> Tensor:
        lams = [self.hp[i].lam for i in idx]
        if self.impl == "fused":
            assert self.raw is not None
            rows = rows_at(self.raw, idx)
            lam = per_tensor(lams, rows.device, rows.dtype)
            gap_sq, cross = gap_and_cross(rows[:, 0], rows[:, 1], rows[:, 2], lam)
            return torch.stack([rows[:, 1], cross, gap_sq], dim=1)
        if self.impl == "single":
            dtype = common_sum_dtype(self.grads)
            return torch.stack(
                [
                    _single_tensor_sums(self.grads[i], self.bufs[i], lam, dtype)
                    for i, lam in zip(idx, lams)
                ]
            )
        g, d = [self.grads[i] for i in idx], [self.bufs[i] for i in idx]
        g_sq = None
        if self.grad_sq is not None:
            g_sq = rows_at(self.grad_sq, idx)
        d_sq = None
        states = [self.ts.states[i] for i in idx]
        if not self.ts.sharded and all(_sq_known(self.context.cache, st) for st in states):
            # a shard's ||d||^2 is a partial sum that would not survive resharding on resume,
            # so sharded parameters re-read d instead (nothing is kept)
            d_sq = torch.stack([st["momentum_sq"] for st in states])
        lam = per_tensor(lams, g[0].device, common_sum_dtype(g))
        rows = _multi_tensor_sums(g, d, lam, g_sq, d_sq)
        if not self.ts.sharded:
            self.kept = (idx, rows)
        return rows[:, :3]

    # -- phase 5 ------------------------------------------------------------------------------
    def update(self, beta: list[Beta]) -> None:
        if self.impl == "fused":
            self._fused_update(beta)
        else:
            self._update(beta)
        if self.ts.sharded:  # a shard's ||d||^2 is partial: not tracked (see _sq_known)
            for st in self.ts.states:
                st["momentum_sq"] = torch.full_like(st["momentum_sq"], float("nan"))
        elif self.impl == "single":  # the reference: ||d||^2 read from the new buffers
            _remember_sq(self.context.cache, self.ts.states, squared_norms(self.bufs))

    def _fused_update(self, beta: list[Beta]) -> None:
        """Pass 2: d <- lerp(d, g, w), x <- x - lr d, where w is 1 on the first step (d_0 = g_0)
        and (1 - beta) / (1 + lam) otherwise (frozen or adaptive)."""
        assert self.raw is not None
        device = self.ts.params[0].device
        b = beta_vector(beta, [0.0] * len(beta), device, torch.float32)
        lam = per_tensor([h.lam for h in self.hp], device, torch.float32)
        w = _lerp_weight(b, lam, restarts(b, beta, self.hp))
        if any(x is None for x in beta):
            first = small_tensor([x is None for x in beta], device, torch.bool)
            w = torch.where(first, torch.ones_like(w), w)
        self.context.kernels.update(self.tensors, self.fused_hyper, w.contiguous(), self.flags)
        if not self.ts.sharded:  # pass 1 reads ||d||^2 anyway; kept for the other implementations
            raw = self.raw
            w = w.to(raw.dtype)
            new_sq = (1 - w) ** 2 * raw[:, 2] + 2 * w * (1 - w) * raw[:, 1] + w**2 * raw[:, 0]
            states = self.ts.states
            _remember_sq(self.context.cache, states, new_sq.to(states[0]["momentum_sq"].dtype))

    def _update(self, beta: list[Beta]) -> None:
        """The heavy-ball update of the single-tensor and foreach branches; foreach also
        advances each buffer's ||d||^2."""
        grads, bufs, hp = self.grads, self.bufs, self.hp
        foreach = self.impl == "foreach"
        first = [i for i, b in enumerate(beta) if b is None]
        frozen = [i for i, b in enumerate(beta) if isinstance(b, float)]
        adaptive = [i for i, b in enumerate(beta) if isinstance(b, Tensor)]

        if first:  # d_0 = g_0: the first step is plain gradient descent
            _copy([bufs[i] for i in first], [grads[i] for i in first], foreach)
        for i in frozen:  # same ops as torch.optim.SGD, so lam = 0 reproduces it bit for bit
            lam, b_i = hp[i].lam, beta[i]
            assert isinstance(b_i, float)
            keep, take = (b_i + lam) / (1 + lam), (1 - b_i) / (1 + lam)
            bufs[i].mul_(keep).add_(grads[i], alpha=take)
        params_done = self._adaptive_update(beta, adaptive) if adaptive else False
        if foreach and not self.ts.sharded:
            self._remember_plain_sq(first, frozen)
        if not params_done:
            self._step_params()

    def _adaptive_update(self, beta: list[Beta], adaptive: list[int]) -> bool:
        """d <- lerp(d, g, w) for the tensors with an adaptive beta; True when torch's fused CPU
        SGD kernel has also updated the parameters."""
        ts, grads, bufs, hp = self.ts, self.grads, self.bufs, self.hp
        foreach = self.impl == "foreach"
        params_done = False
        b = beta_vector(
            [beta[i] for i in adaptive],
            [0.0] * len(adaptive),
            grads[0].device,
            common_sum_dtype(grads),
        )
        ha = [hp[i] for i in adaptive]
        lam_t = per_tensor([h.lam for h in ha], b.device, b.dtype)
        w = _lerp_weight(b, lam_t, restarts(b, [beta[i] for i in adaptive], ha))
        bufs_a, grads_a = [bufs[i] for i in adaptive], [grads[i] for i in adaptive]
        one_weight = all(beta[i] is beta[adaptive[0]] for i in adaptive) and not isinstance(
            lam_t, Tensor
        )
        same_dtype = all(d.dtype == w.dtype for d in bufs_a)
        thresholds = {h.restart_below for h in ha}
        one_weight = foreach and one_weight and same_dtype and len(thresholds) == 1
        fast = one_weight and _cpu_fused_sgd_applies(bufs_a, len(adaptive) == len(ts.params))
        # (w is read on the host only for CPU tensors: no device sync)
        if fast and float(w[0]) < 1.0:  # w = 1 (a restart): torch wants no momentum then
            # CPU, global beta: torch's fused CPU SGD kernel updates d and x in one pass,
            # d <- (1 - w) d + w g, x <- x - lr d
            w_host = float(w[0])
            for gid, members in by_group(ts.group_ids).items():
                torch._fused_sgd_(
                    [ts.params[i] for i in members],
                    [grads[i] for i in members],
                    [bufs[i] for i in members],
                    weight_decay=0.0,  # the grads are effective already (coupled decay)
                    momentum=1.0 - w_host,
                    lr=self.hyper[gid].lr,
                    dampening=1.0 - w_host,
                    nesterov=False,
                    maximize=False,
                    is_first_step=False,
                )
            params_done = True
        elif one_weight:
            torch._foreach_lerp_(bufs_a, grads_a, w[0])  # type: ignore[call-overload]
        else:
            weights = [w_i.to(d.dtype) for w_i, d in zip(w.unbind(), bufs_a)]
            if foreach:
                torch._foreach_lerp_(bufs_a, grads_a, weights)
            else:
                for b_i, g_i, w_i in zip(bufs_a, grads_a, weights):
                    b_i.lerp_(g_i, w_i)
        if foreach and self.kept is not None and self.kept[0] == adaptive:
            # ||(1 - w) d + w g||^2 from the sums: no extra pass over the new d
            rows = self.kept[1]
            g_dot_d, g_sq, d_sq = rows[:, 0], rows[:, 3], rows[:, 4]
            w = w.to(rows.dtype)
            new_sq = (1 - w) ** 2 * d_sq + 2 * w * (1 - w) * g_dot_d + w**2 * g_sq
            _remember_sq(self.context.cache, [ts.states[i] for i in adaptive], new_sq)
        return params_done

    def _remember_plain_sq(self, first: list[int], frozen: list[int]) -> None:
        """foreach: ||d||^2 of the buffers set without the sums (first step d = g, frozen)."""
        ts, bufs, cache = self.ts, self.bufs, self.context.cache
        if first:  # d = g
            first_sq = (
                torch.stack([self.grad_sq[i] for i in first])
                if self.grad_sq is not None
                else squared_norms([bufs[i] for i in first])
            )
            _remember_sq(cache, [ts.states[i] for i in first], first_sq)
        if frozen:
            _remember_sq(
                cache, [ts.states[i] for i in frozen], squared_norms([bufs[i] for i in frozen])
            )

    def _step_params(self) -> None:
        """x <- x - lr d."""
        foreach = self.impl == "foreach"
        for gid, members in by_group(self.ts.group_ids).items():
            lr = self.hyper[gid].lr
            p, d = [self.ts.params[i] for i in members], [self.bufs[i] for i in members]
            if foreach:
                torch._foreach_add_(p, d, alpha=-lr)
            else:
                for p_i, d_i in zip(p, d):
                    p_i.add_(d_i, alpha=-lr)


def _lerp_weight(beta: Tensor, lam: Tensor | float, restart: Tensor | None) -> Tensor:
    """d_{t+1} = lerp(d_t, g_t, w) with w = (1 - beta) / (1 + lam); a restart sets w = 1 (d <- g)."""
    w = (1 - beta) / (1 + lam)
    if restart is not None:
        w = torch.where(restart, torch.ones_like(w), w)
    return w


# ||d||^2 of each momentum buffer is kept in state["momentum_sq"] (so a resumed run continues
# bit for bit) and advanced algebraically by foreach steps, which then need not re-read d. The
# value is used only while the buffer is the one it was computed for and no in-place edit has
# touched it since (e.g. user code resetting momentum with `momentum_buffer.zero_()`): the
# optimizer's run-time cache records the buffer and its version counter; anything else makes
# the next foreach step re-read d. Under torch.compile the value is not used (always re-read).


def _sq_known(cache: dict[int, Any], state: dict[str, Any]) -> bool:
    if torch.compiler.is_compiling():
        return False
    d = state["momentum_buffer"]
    seen = cache.get(id(d))
    return seen is not None and seen[0]() is d and seen[1] == d._version


def _remember_sq(cache: dict[int, Any], states: list[dict[str, Any]], values: Tensor) -> None:
    # views of the one new vector: no per-tensor copies (the old vector is freed)
    compiling = torch.compiler.is_compiling()
    for st, value in zip(states, values.unbind()):
        st["momentum_sq"] = value
        if not compiling:
            remember_version(cache, st["momentum_buffer"])


def remember_version(cache: dict[int, Any], buffer: Tensor) -> None:
    """Record that state["momentum_sq"] now belongs to `buffer` as it is."""
    cache[id(buffer)] = (weakref.ref(buffer), buffer._version)


def _cpu_fused_sgd_applies(bufs: list[Tensor], every_tensor: bool) -> bool:
    """torch's fused CPU SGD step fits: every tensor takes the same beta, all on the CPU, and
    not under torch.compile (the op has no fake kernel for tracing; the foreach ops do)."""
    return (
        every_tensor
        and not torch.compiler.is_compiling()
        and hasattr(torch, "_fused_sgd_")
        and all(d.device.type == "cpu" and d.dtype in (torch.float32, torch.float64) for d in bufs)
    )


def _copy(dst: list[Tensor], src: list[Tensor], foreach: bool) -> None:
    if foreach:
        torch._foreach_copy_(dst, src)
    else:
        for a, b in zip(dst, src):
            a.copy_(b)


# ---- the class ----------------------------------------------------------------------------


class AMSGD(AdaptiveMemoryOptimizer):
    """Adaptive Memory momentum SGD (AM-MGD).

    Args:
        params: iterable of parameters, param groups, or named parameters.
        lr: learning rate eta.
        lam: the regulariser lambda pulling the step toward the pure momentum step (paper: 0.1).
        beta_max, beta_min: clip of beta (paper: 0.9, 0); beta_min > 0 is the "Clip" variant.
        restart_below: if set, reset the momentum (d <- g) when beta_t falls below it ("Restart").
        frozen_beta: if set, beta is this constant (fixed-momentum baseline; with lam=0 this is
            torch.optim.SGD(momentum=b, dampening=b) exactly).
        weight_decay: coupled L2 weight decay (added to the gradient).
        beta_scope: "global" (one beta from sums over all parameters), "per-group", "per-tensor".
        plane_bias: "linear" (first order, no extra loss evaluation) or "exact" (uses the losses
            f(x_{t-1}), f(x_t) from `step(closure)`; deterministic problems).
        nonfinite: "raise" (default), "skip" the step, or "off" (no check, no host sync).
        maximize: maximise the objective instead of minimising it (as in torch.optim).
        foreach: the multi-tensor implementation (None or True: the default, on every device;
            on the CPU too, where it is faster than the loop) or, with False, the single-tensor
            reference.
        fused: two Triton kernels per step (CUDA; see amm.optim.am_sgd_kernels) instead of
            foreach; where they cannot run (CPU, no Triton, fp64, ...) the step warns once and
            uses foreach.
        process_group: the parameters are shards (ZeRO-style); the sums are all-reduced over this
            group. DTensor (FSDP2) parameters are detected automatically.
        differentiable, capturable: torch.optim's flags; only False is supported (True raises
            NotImplementedError).
    """

    core = AMSGDStep
    coupled_decay = True
    _sum_state_keys = ("momentum_sq",)

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        *,
        lam: float = 0.1,
        beta_max: float = 0.9,
        beta_min: float = 0.0,
        restart_below: float | None = None,
        frozen_beta: float | None = None,
        weight_decay: float = 0.0,
        **options: Unpack[OptimizerOptions],
    ) -> None:
        defaults = dict(
            lr=lr,
            lam=lam,
            beta_max=beta_max,
            beta_min=beta_min,
            restart_below=restart_below,
            frozen_beta=frozen_beta,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults, **options)

    def _make_kernels(self) -> Any:
        from amm.optim.am_sgd_kernels import am_sgd_kernels

        return am_sgd_kernels()

    def _compiled_passes(self) -> Any:
        from amm.optim.am_sgd_kernels import am_sgd_compiled

        return am_sgd_compiled()

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0)
        state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # ||d||^2 (see _sq_known): 0 for the zero buffer
        state["momentum_sq"] = torch.zeros((), dtype=sum_dtype(param), device=param.device)
        remember_version(self._core_cache, state["momentum_buffer"])

    def _loaded_state(self, param: Tensor, state: dict[str, Any]) -> None:
        # a checkpoint's ||d||^2 is trusted for its buffer (a resumed run continues bit for
        # bit), unless an older checkpoint marked it unknown or it is not a number (shards)
        known = state.pop("momentum_sq_known", True)
        value = state.get("momentum_sq")
        if known and isinstance(value, Tensor) and bool(torch.isfinite(value)):
            remember_version(self._core_cache, state["momentum_buffer"])

    def _momentum_sq_tracked(self, param: Tensor) -> bool:
        """Whether the next foreach step will use the kept ||d||^2 of `param` (for tests)."""
        return _sq_known(self._core_cache, self.state[param])

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        return (state["momentum_buffer"],)
