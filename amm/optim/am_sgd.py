"""AM-SGD (the paper's AM-MGD): momentum SGD whose momentum coefficient adapts every step.

    d_{t+1} = ((beta_t + lam) d_t + (1 - beta_t) g_t) / (1 + lam),   x_{t+1} = x_t - eta_t d_{t+1}

with beta_t from `amm.optim.beta.adaptive_beta` (ALGORITHM.md, sections 1-2). Weight decay is
coupled (added to the gradient, i.e. part of the modelled function), as in torch.optim.SGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from amm.optim._base import (
    AdaptiveMemoryOptimizer,
    StepTensors,
    _local,
    beta_vector,
    common_sum_dtype,
    per_tensor,
    small_tensor,
    squared_norms,
    sum_dtype,
)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


def _single_tensor_am_sgd_sums(grads: list[Tensor], bufs: list[Tensor], lam: float) -> Tensor:
    """Reference: the formulas literally, one tensor at a time. Rows [cross, gap_sq, <g,d>, 0]."""
    dtype = common_sum_dtype(grads)
    rows = []
    for g, d in zip(grads, bufs):
        g, d = g.to(dtype), d.to(dtype)
        zero = torch.zeros((), dtype=dtype, device=g.device)
        rows.append(torch.stack([_dot(g + lam * d, g - d), _dot(g - d, g - d), _dot(g, d), zero]))
    return torch.stack(rows)


def gap_and_cross(g_sq: Tensor, g_dot_d: Tensor, d_sq: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """||g - d||^2 and <g + lam d, g - d> from the three inner products (no temporaries).

    ||g - d||^2 loses relative precision when g ~ d; then the linear-bias numerator is about
    (1 + lam)||g||^2 > 0 and beta clips to beta_max whatever the small gap is, and a gap that
    rounds to <= 0 reports beta_max too. The single-tensor reference computes both literally.
    """
    gap_sq = (g_sq - 2 * g_dot_d + d_sq).clamp_min(0)
    cross = g_sq - (1 - lam) * g_dot_d - lam * d_sq
    return gap_sq, cross


def _multi_tensor_am_sgd_sums(
    grads: list[Tensor],
    bufs: list[Tensor],
    lam: float,
    g_sq: Tensor | None = None,
    d_sq: Tensor | None = None,
) -> Tensor:
    """foreach: ||g||^2, ||d||^2 and <g, d> per tensor, reading g and d without temporaries.
    The squared norms can be passed in (the optimizer knows them: see AMSGD._sums)."""
    dtype = common_sum_dtype(grads)
    g_sq = squared_norms(grads) if g_sq is None else g_sq
    d_sq = squared_norms(bufs) if d_sq is None else d_sq
    if any(g.dtype != dtype for g in grads):  # bf16/fp16: the dot in fp32
        g_dot_d = torch.stack([_dot(g.to(dtype), d.to(dtype)) for g, d in zip(grads, bufs)])
    else:
        g_dot_d = torch.stack(
            [torch.dot(g.reshape(-1), d.reshape(-1)) for g, d in zip(grads, bufs)]
        )
    gap_sq, cross = gap_and_cross(g_sq, g_dot_d, d_sq, lam)
    return torch.stack([cross, gap_sq, g_dot_d, g_sq, d_sq], dim=1)


def am_sgd_sums(
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    lam: float,
    foreach: bool,
    g_sq: Tensor | None = None,
    d_sq: Tensor | None = None,
) -> Tensor:
    """Per-tensor rows [<g + lam d, g - d>, ||g - d||^2, <g, d>, ...] (fp32, fp64 for fp64).
    foreach adds ||g||^2 and ||d||^2 as columns 3 and 4 (AM-SGD advances ||d||^2 with them);
    the single-tensor reference has a zero column 3 (AM-SGD's decay is coupled: no <g, x>)."""
    if foreach:
        return _multi_tensor_am_sgd_sums(grads, bufs, lam, g_sq, d_sq)
    return _single_tensor_am_sgd_sums(grads, bufs, lam)


def lerp_weight(
    beta: Tensor, lam: Tensor | float, restart_below: list[float | None] | None
) -> Tensor:
    """d_{t+1} = lerp(d_t, g_t, w) with w = (1 - beta) / (1 + lam); a restart sets w = 1 (d <- g)."""
    w = (1 - beta) / (1 + lam)
    if restart_below is not None:
        thr = [-math.inf if t is None else t for t in restart_below]
        w = torch.where(beta < per_tensor(thr, w.device, w.dtype), torch.ones_like(w), w)
    return w


def _where(tensors: list[Tensor]) -> tuple[torch.device, torch.dtype]:
    return tensors[0].device, common_sum_dtype(tensors)


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
        foreach: use the multi-tensor implementation (default) or the single-tensor reference.
        fused: two Triton kernels per step (CUDA; see amm.optim.fused) instead of foreach;
            where they cannot run (CPU, no Triton, fp64, ...) the step warns once and uses
            foreach.
        process_group: the parameters are shards (ZeRO-style); the sums are all-reduced over this
            group. DTensor (FSDP2) parameters are detected automatically.
    """

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
        beta_scope: str = "global",
        plane_bias: str = "linear",
        nonfinite: str = "raise",
        foreach: bool | None = None,
        fused: bool | None = None,
        process_group: Any = None,
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
        super().__init__(
            params,
            defaults,
            beta_scope=beta_scope,
            plane_bias=plane_bias,
            nonfinite=nonfinite,
            foreach=foreach,
            process_group=process_group,
            fused=fused,
        )

    _sum_state_keys = ("momentum_sq",)

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0)
        state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # ||d||^2, advanced algebraically from the last step's sums (saves a pass over d);
        # recomputed whenever it is not known ("momentum_sq_known" False)
        state["momentum_sq"] = torch.zeros((), dtype=sum_dtype(param), device=param.device)
        state["momentum_sq_known"] = False

    def _has_history(self, state: dict[str, Any]) -> bool:
        return state["step"].item() > 0  # a CPU tensor: no device sync

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        return (state["momentum_buffer"],)

    def _prepare_fused(self, ts: StepTensors) -> _Prepared:
        """Fused pass 1 (reads only): ||g||^2, <g, d>, ||d||^2 of the effective gradients."""
        groups = self.param_groups
        hyper = [[groups[g]["weight_decay"], -groups[g]["lr"]] for g in ts.group_ids]
        hyper_t = small_tensor(hyper, ts.params[0].device, torch.float32)
        with_decay = any(h[0] != 0 for h in hyper)
        bufs = [_local(st["momentum_buffer"]) for st in ts.states]
        rows = self._fused_kernels.am_sgd_sums(ts.params, ts.grads, bufs, hyper_t, with_decay)
        ts.grad_sq = rows[:, 4]
        return _Prepared(ts.grads, None, fused=_FusedRows(rows, hyper_t, with_decay))

    def _prepare(self, ts: StepTensors, foreach: bool) -> _Prepared:
        """Effective gradients g = grad + wd * x (coupled weight decay), and ||g||^2 if known."""
        grads = list(ts.grads)
        decayed = False
        for i, (p, g, gid) in enumerate(zip(ts.params, ts.grads, ts.group_ids)):
            wd = self.param_groups[gid]["weight_decay"]
            if wd != 0:
                grads[i] = g.add(p, alpha=wd)
                decayed = True
        return _Prepared(grads, None if decayed else ts.grad_sq)

    def _sums(self, ts: StepTensors, prep: _Prepared, idx: list[int], foreach: bool) -> Tensor:
        if prep.fused is not None:
            raw = prep.fused.rows
            if len(idx) != len(ts.params):
                raw = raw.index_select(0, small_tensor(idx, raw.device, torch.long))
            lam = per_tensor(
                [self.param_groups[ts.group_ids[i]]["lam"] for i in idx], raw.device, raw.dtype
            )
            gap_sq, cross = gap_and_cross(raw[:, 0], raw[:, 1], raw[:, 2], lam)
            return torch.stack([cross, gap_sq, raw[:, 1], raw[:, 3]], dim=1)
        lam = self.param_groups[ts.group_ids[idx[0]]]["lam"]
        lams = {self.param_groups[ts.group_ids[i]]["lam"] for i in idx}
        grads = prep.grads
        g = [grads[i] for i in idx]
        d = [_local(ts.states[i]["momentum_buffer"]) for i in idx]
        if foreach and len(lams) == 1:
            every = len(idx) == len(grads)
            g_sq = None
            if prep.grad_sq is not None:
                g_sq = prep.grad_sq if every else torch.stack([prep.grad_sq[i] for i in idx])
            states = [ts.states[i] for i in idx]
            d_sq = None
            # a shard's ||d||^2 is a partial sum that would not survive resharding on resume,
            # so sharded parameters re-read d instead (prep.sums stays unset: nothing is kept)
            if ts.sharded:
                return am_sgd_sums(g, d, lam=lam, foreach=True, g_sq=g_sq)
            if all(st.get("momentum_sq_known", False) for st in states):
                d_sq = torch.stack([st["momentum_sq"] for st in states])
            rows = am_sgd_sums(g, d, lam=lam, foreach=True, g_sq=g_sq, d_sq=d_sq)
            prep.sums = (idx, rows)
            return rows
        if len(lams) == 1:
            return am_sgd_sums(g, d, lam=lam, foreach=foreach)
        # per-group/per-tensor scopes may mix lam values: sums per tensor with its own lam
        return torch.cat(
            [
                am_sgd_sums(
                    [g[k]], [d[k]], lam=self.param_groups[ts.group_ids[i]]["lam"], foreach=foreach
                )
                for k, i in enumerate(idx)
            ]
        )

    def _update(
        self, ts: StepTensors, prep: _Prepared, beta: list[Tensor | float | None], foreach: bool
    ) -> None:
        groups = self.param_groups
        grads = prep.grads
        bufs = [_local(st["momentum_buffer"]) for st in ts.states]
        if prep.fused is not None:
            self._update_fused(ts, prep.fused, bufs, beta)
            return
        params_done = False  # the CPU fused kernel below also updates the parameters
        first = [i for i, b in enumerate(beta) if b is None]
        frozen = [i for i, b in enumerate(beta) if isinstance(b, float)]
        adaptive = [i for i, b in enumerate(beta) if isinstance(b, Tensor)]

        if first:  # d_0 = g_0: the first step is plain gradient descent
            _copy([bufs[i] for i in first], [grads[i] for i in first], foreach)
        for i in frozen:  # same ops as torch.optim.SGD, so lam = 0 reproduces it bit for bit
            lam = groups[ts.group_ids[i]]["lam"]
            keep, take = (beta[i] + lam) / (1 + lam), (1 - beta[i]) / (1 + lam)
            bufs[i].mul_(keep).add_(grads[i], alpha=take)
        if adaptive:
            b = beta_vector([beta[i] for i in adaptive], [0.0] * len(adaptive), *_where(grads))
            gids = [ts.group_ids[i] for i in adaptive]
            lam = per_tensor([groups[g]["lam"] for g in gids], b.device, b.dtype)
            thr = [groups[g]["restart_below"] for g in gids]
            w = lerp_weight(b, lam, None if all(t is None for t in thr) else thr)
            bufs_a, grads_a = [bufs[i] for i in adaptive], [grads[i] for i in adaptive]
            one_weight = all(beta[i] is beta[adaptive[0]] for i in adaptive) and not isinstance(
                lam, Tensor
            )
            same_dtype = all(d.dtype == w.dtype for d in bufs_a)
            one_weight = foreach and one_weight and same_dtype and len(set(map(str, thr))) == 1
            fast = one_weight and _cpu_fused_sgd_applies(bufs_a, len(adaptive) == len(ts.params))
            # (w is read on the host only for CPU tensors: no device sync)
            if fast and float(w[0]) < 1.0:  # w = 1 (a restart): torch wants no momentum then
                # CPU, global beta: torch's fused CPU SGD kernel updates d and x in one pass,
                # d <- (1 - w) d + w g, x <- x - lr d
                w_host = float(w[0])
                for gid, members in _by_group(ts.group_ids).items():
                    torch._fused_sgd_(
                        [ts.params[i] for i in members],
                        [grads[i] for i in members],
                        [bufs[i] for i in members],
                        weight_decay=0.0,  # the grads are effective already (coupled decay)
                        momentum=1.0 - w_host,
                        lr=groups[gid]["lr"],
                        dampening=1.0 - w_host,
                        nesterov=False,
                        maximize=False,
                        is_first_step=False,
                    )
                params_done = True
            elif one_weight:
                torch._foreach_lerp_(bufs_a, grads_a, w[0])  # global beta: one scalar
            else:
                weights = [w_i.to(d.dtype) for w_i, d in zip(w.unbind(), bufs_a)]
                if foreach:
                    torch._foreach_lerp_(bufs_a, grads_a, weights)
                else:
                    for b_i, g_i, w_i in zip(bufs_a, grads_a, weights):
                        b_i.lerp_(g_i, w_i)
            if prep.sums is not None and prep.sums[0] == adaptive:
                # ||(1 - w) d + w g||^2 from the sums: no extra pass over the new d
                rows = prep.sums[1]
                g_dot_d, g_sq, d_sq = rows[:, 2], rows[:, 3], rows[:, 4]
                w = w.to(rows.dtype)
                new_sq = (1 - w) ** 2 * d_sq + 2 * w * (1 - w) * g_dot_d + w**2 * g_sq
                self._remember_sq([ts.states[i] for i in adaptive], new_sq)
            else:
                self._forget_sq([ts.states[i] for i in adaptive])
        if first:
            if prep.grad_sq is not None and not ts.sharded:  # d = g
                self._remember_sq(
                    [ts.states[i] for i in first], torch.stack([prep.grad_sq[i] for i in first])
                )
            else:
                self._forget_sq([ts.states[i] for i in first])
        self._forget_sq([ts.states[i] for i in frozen])

        for gid, members in ({} if params_done else _by_group(ts.group_ids)).items():
            lr = groups[gid]["lr"]
            p, d = [ts.params[i] for i in members], [bufs[i] for i in members]
            if foreach:
                torch._foreach_add_(p, d, alpha=-lr)
            else:
                for p_i, d_i in zip(p, d):
                    p_i.add_(d_i, alpha=-lr)
        torch._foreach_add_([st["step"] for st in ts.states], 1.0)

    def _update_fused(
        self,
        ts: StepTensors,
        fused: _FusedRows,
        bufs: list[Tensor],
        beta: list[Tensor | float | None],
    ) -> None:
        """Pass 2 for every tensor: d <- lerp(d, g, w), x <- x - lr d, where w is 1 on the
        first step (d_0 = g_0) and (1 - beta) / (1 + lam) otherwise (frozen or adaptive)."""
        groups = self.param_groups
        device = fused.rows.device
        b = beta_vector(beta, [0.0] * len(beta), device, torch.float32)
        lam = per_tensor([groups[g]["lam"] for g in ts.group_ids], device, torch.float32)
        thr = [
            groups[g]["restart_below"] if isinstance(x, Tensor) else None
            for g, x in zip(ts.group_ids, beta)
        ]
        w = lerp_weight(b, lam, None if all(t is None for t in thr) else thr)
        if any(x is None for x in beta):
            first = small_tensor([x is None for x in beta], device, torch.bool)
            w = torch.where(first, torch.ones_like(w), w)
        self._fused_kernels.am_sgd_update(
            ts.params, ts.grads, bufs, fused.hyper, w.contiguous(), fused.with_decay
        )
        self._forget_sq(ts.states)  # pass 1 reads ||d||^2 anyway
        torch._foreach_add_([st["step"] for st in ts.states], 1.0)

    @staticmethod
    def _remember_sq(states: list[dict[str, Any]], values: Tensor) -> None:
        # views of the one new vector: no per-tensor copies (the old vector is freed)
        for st, value in zip(states, values.unbind()):
            st["momentum_sq"] = value
            st["momentum_sq_known"] = True

    @staticmethod
    def _forget_sq(states: list[dict[str, Any]]) -> None:
        for st in states:
            st["momentum_sq_known"] = False


@dataclass
class _Prepared:
    """What `_prepare` and `_sums` hand on: effective gradients, ||g||^2 (when the non-finite
    check computed it and there is no coupled decay), and the foreach sums (for ||d||^2)."""

    grads: list[Tensor]
    grad_sq: Tensor | None
    sums: tuple[list[int], Tensor] | None = None
    fused: _FusedRows | None = None


@dataclass
class _FusedRows:
    """Fused pass 1's columns (see FusedKernels.am_sgd_sums) and the hyper-parameters."""

    rows: Tensor
    hyper: Tensor
    with_decay: bool


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


def _by_group(group_ids: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return out
