"""AM-AdamW: AdamW whose first-moment coefficient adapts every step (docs/algorithm.md,
section 3).

The metric is P_t = diag(sqrt(v_hat_t) + eps) with Adam's second moment; inner products in the
beta formula are P^-1-weighted; the plane bias includes decoupled weight decay:

    b_t / eta_{t-1} ~= <g_t, d_t>_P + wd <g_t, x_t>
    m_{t+1} = ((beta_t + lam) m_t + (1 - beta_t) g_t) / (1 + lam),  c_{t+1} likewise from c_0 = 0
    x_{t+1} = (1 - eta wd) x_t - eta (m_{t+1} / c_{t+1}) / (sqrt(v_hat_t) + eps)

State: we store the bias-corrected momentum m_hat = m / c (it is the d of the beta formula), its
correction c (to advance m_hat without storing m), and v. With beta frozen at beta1 and lam = 0
this is exactly Adam's bias correction, so AM-AdamW then matches torch.optim.AdamW.

The functional core `am_adamw` runs one of three branches with the same signature:
`_single_tensor_am_adamw` (the reference), `_multi_tensor_am_adamw` (foreach) and
`_fused_am_adamw` (Triton, am_adamw_kernels.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from amm.optim._base import (
    AdaptiveMemoryOptimizer,
    Impl,
    OptimizerOptions,
    StepServices,
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
    sum_dtype,
)
from amm.optim.beta import gap_and_cross

if TYPE_CHECKING:
    from typing_extensions import Unpack

# ---- the sums of the beta formula ---------------------------------------------------------


@dataclass
class _Metric:
    """P^-1 = scale * inv, with inv = 1 / (sqrt(v) + eps * sqrt(bc2)) and scale = sqrt(bc2).

    (sqrt(v_hat) + eps = (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2).) Storing the reciprocal lets
    the sums and the update multiply instead of divide."""

    inv: list[Tensor]
    scales: list[float]


def _single_tensor_am_adamw_sums(
    grads: list[Tensor],
    moms: list[Tensor],
    params: list[Tensor],
    metric: _Metric,
    lam: float,
) -> Tensor:
    """Reference: rows [<g + lam d, g - d>_P, ||g - d||_P^2, <g, d>_P, <g, x>], literally."""
    dtype = common_sum_dtype(grads)
    rows = []
    for g, d, x, inv, scale in zip(grads, moms, params, metric.inv, metric.scales):
        g, d, x = g.to(dtype), d.to(dtype), x.to(dtype)
        p_inv = scale * inv.to(dtype)
        rows.append(
            torch.stack(
                [
                    ((g + lam * d) * (g - d) * p_inv).sum(),
                    ((g - d) * (g - d) * p_inv).sum(),
                    (g * d * p_inv).sum(),
                    dot(g, x),
                ]
            )
        )
    return torch.stack(rows)


def _multi_tensor_am_adamw_sums(
    grads: list[Tensor],
    moms: list[Tensor],
    params: list[Tensor],
    metric: _Metric,
    lam: float,
    with_decay: bool = True,
    scratch: list[Tensor] | None = None,
) -> Tensor:
    """foreach: one temporary u (g P^-1, then d P^-1) and four dots per tensor."""
    dtype = common_sum_dtype(grads)
    inv = metric.inv
    if any(g.dtype != dtype for g in grads):  # bf16/fp16: reduce in fp32
        grads, moms = [g.to(dtype) for g in grads], [m.to(dtype) for m in moms]
        params, inv = [p.to(dtype) for p in params], [i.to(dtype) for i in inv]
    scale = per_tensor(metric.scales, grads[0].device, dtype)
    if scratch is None or scratch[0].dtype != dtype:
        u = list(torch._foreach_mul(grads, inv))
    else:
        u = scratch
        for g, inv_i, u_i in zip(grads, inv, u):
            torch.mul(g, inv_i, out=u_i)
    g_sq = torch.stack([dot(g, u_i) for g, u_i in zip(grads, u)]) * scale
    g_dot_d = torch.stack([dot(m, u_i) for m, u_i in zip(moms, u)]) * scale
    for m, inv_i, u_i in zip(moms, inv, u):
        torch.mul(m, inv_i, out=u_i)
    d_sq = torch.stack([dot(m, u_i) for m, u_i in zip(moms, u)]) * scale
    if with_decay:
        g_dot_x = torch.stack([dot(g, p) for g, p in zip(grads, params)])
    else:
        g_dot_x = torch.zeros_like(g_sq)
    gap_sq, cross = gap_and_cross(g_sq, g_dot_d, d_sq, lam)
    return torch.stack([cross, gap_sq, g_dot_d, g_dot_x], dim=1)


def am_adamw_sums(
    grads: list[Tensor],
    moms: list[Tensor],
    params: list[Tensor],
    metric: _Metric,
    *,
    lam: float,
    foreach: bool,
    with_decay: bool = True,
    scratch: list[Tensor] | None = None,
) -> Tensor:
    """Per-tensor sums [<g + lam d, g - d>_P, ||g - d||_P^2, <g, d>_P, <g, x>] (fp32/fp64).
    `with_decay=False` skips <g, x>, which only decoupled weight decay needs."""
    if foreach:
        return _multi_tensor_am_adamw_sums(grads, moms, params, metric, lam, with_decay, scratch)
    return _single_tensor_am_adamw_sums(grads, moms, params, metric, lam)


# ---- the functional core ------------------------------------------------------------------


def am_adamw(
    ts: StepTensors, groups: list[dict[str, Any]], services: StepServices, impl: Impl
) -> bool:
    """One AM-AdamW step on gathered tensors with the chosen implementation; False if the
    non-finite check skipped it (nothing changed then)."""
    branch = {
        "single": _single_tensor_am_adamw,
        "foreach": _multi_tensor_am_adamw,
        "fused": _fused_am_adamw,
    }[impl]
    return branch(ts, groups, services, impl)


def _single_tensor_am_adamw(
    ts: StepTensors, groups: list[dict[str, Any]], services: StepServices, impl: Impl
) -> bool:
    return _unfused_am_adamw(ts, groups, services, foreach=False)


def _multi_tensor_am_adamw(
    ts: StepTensors, groups: list[dict[str, Any]], services: StepServices, impl: Impl
) -> bool:
    return _unfused_am_adamw(ts, groups, services, foreach=True)


def _unfused_am_adamw(
    ts: StepTensors, groups: list[dict[str, Any]], services: StepServices, foreach: bool
) -> bool:
    """The single-tensor and foreach branches: the same sequence, loops or foreach ops."""
    if not services.grads_finite(ts):
        return False
    metric = _second_moment(ts, groups, services, foreach)
    moms = [local(st["momentum"]) for st in ts.states]

    def rows(members: list[int], lam: float) -> Tensor:
        return am_adamw_sums(
            [ts.grads[i] for i in members],
            [moms[i] for i in members],
            [ts.params[i] for i in members],
            _Metric([metric.inv[i] for i in members], [metric.scales[i] for i in members]),
            lam=lam,
            foreach=foreach,
            with_decay=any(groups[ts.group_ids[i]]["weight_decay"] for i in members),
            scratch=services.scratch(f"u{len(members)}", [ts.grads[i] for i in members])
            if foreach
            else None,
        )

    def sums(idx: list[int]) -> Tensor:
        lams = [groups[ts.group_ids[i]]["lam"] for i in idx]
        if len(set(lams)) == 1:
            return rows(idx, lams[0])
        return torch.cat([rows([i], lam) for i, lam in zip(idx, lams)])

    w = _momentum_weights(ts, groups, services.betas(ts, sums))
    weights = [w_i.to(m.dtype) for w_i, m in zip(w.unbind(), moms)]
    if foreach:
        torch._foreach_lerp_(moms, ts.grads, weights)
    else:
        for m_i, g_i, w_i in zip(moms, ts.grads, weights):
            m_i.lerp_(g_i, w_i)
    for gid, members in by_group(ts.group_ids).items():
        lr, wd = groups[gid]["lr"], groups[gid]["weight_decay"]
        p = [ts.params[i] for i in members]
        m = [moms[i] for i in members]
        inv = [metric.inv[i] for i in members]
        step_sizes: list[float] = [-lr * metric.scales[i] for i in members]
        if foreach:
            if wd != 0:
                torch._foreach_mul_(p, 1 - lr * wd)
            torch._foreach_addcmul_(p, m, inv, step_sizes)
        else:
            for p_i, m_i, inv_i, s_i in zip(p, m, inv, step_sizes):
                if wd != 0:
                    p_i.mul_(1 - lr * wd)
                p_i.addcmul_(m_i, inv_i, value=s_i)
    return True


def _fused_am_adamw(
    ts: StepTensors, groups: list[dict[str, Any]], services: StepServices, impl: Impl
) -> bool:
    """Pass 1 (reads only): per-tensor sums in the metric of the new second moment; pass 2:
    v, m_hat and x in one kernel."""
    hyper, scales = [], []
    for st, gid in zip(ts.states, ts.group_ids):
        group = groups[gid]
        beta2 = group["betas"][1]
        scale = math.sqrt(1 - beta2 ** (st["step"].item() + 1))
        lr, wd = group["lr"], group["weight_decay"]
        hyper.append([beta2, group["eps"] * scale, 1 - lr * wd, -lr * scale])
        scales.append(scale)
    hyper_t = small_tensor(hyper, ts.params[0].device, torch.float32)
    with_decay = any(groups[g]["weight_decay"] != 0 for g in ts.group_ids)
    moms = [local(st["momentum"]) for st in ts.states]
    second = [local(st["exp_avg_sq"]) for st in ts.states]
    tensors = [ts.grads, moms, second, ts.params]  # the kernels' order (am_adamw_kernels)
    raw = services.fused_sums(ts, tensors, hyper_t, with_decay)
    if raw is None:  # the non-finite check skips the step
        return False

    def sums(idx: list[int]) -> Tensor:
        """The rows of the other branches from pass 1's columns (scaled into the metric)."""
        rows = rows_at(raw, idx)
        scale = per_tensor([scales[i] for i in idx], rows.device, rows.dtype)
        lam = per_tensor([groups[ts.group_ids[i]]["lam"] for i in idx], rows.device, rows.dtype)
        g_sq, g_dot_d, d_sq = rows[:, 0] * scale, rows[:, 1] * scale, rows[:, 2] * scale
        gap_sq, cross = gap_and_cross(g_sq, g_dot_d, d_sq, lam)
        return torch.stack([cross, gap_sq, g_dot_d, rows[:, 3]], dim=1)

    w = _momentum_weights(ts, groups, services.betas(ts, sums))
    services.kernels.update(tensors, hyper_t, w.to(torch.float32), with_decay)
    return True


# ---- shared by the branches ---------------------------------------------------------------


def _second_moment(
    ts: StepTensors, groups: list[dict[str, Any]], services: StepServices, foreach: bool
) -> _Metric:
    """Second moment v_t (with g_t) and the denominator of P_t, shared by sums and update."""
    invs: list[Tensor] = [None] * len(ts.params)  # type: ignore[list-item]
    scales = [0.0] * len(ts.params)
    for gid, members in by_group(ts.group_ids).items():
        beta2, eps = groups[gid]["betas"][1], groups[gid]["eps"]
        vs = [local(ts.states[i]["exp_avg_sq"]) for i in members]
        gs = [ts.grads[i] for i in members]
        bc2 = [1 - beta2 ** (ts.states[i]["step"].item() + 1) for i in members]
        if foreach:
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
            ds = services.scratch(f"inv{gid}", vs)
            for v, d in zip(vs, ds):
                torch.sqrt(v, out=d)
            torch._foreach_add_(ds, [eps * math.sqrt(b) for b in bc2])
            torch._foreach_reciprocal_(ds)
        else:
            ds = []
            for v, g, b in zip(vs, gs, bc2):
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                ds.append(v.sqrt().add_(eps * math.sqrt(b)).reciprocal_())
        for k, i in enumerate(members):
            invs[i], scales[i] = ds[k], math.sqrt(bc2[k])
    return _Metric(invs, scales)


def _momentum_weights(ts: StepTensors, groups: list[dict[str, Any]], beta: list[Beta]) -> Tensor:
    """Per tensor, the w of m_hat_{t+1} = lerp(m_hat_t, g, w); advances the corrections c."""
    corrections = [st["bias_correction"] for st in ts.states]
    c = torch.stack(corrections)
    lam = per_tensor([groups[g]["lam"] for g in ts.group_ids], c.device, c.dtype)
    # t = 1 has no momentum to weigh: beta = 0 (m_hat_1 = g_1), or the frozen value
    fill = [groups[g]["frozen_beta"] or 0.0 for g in ts.group_ids]
    b = beta_vector(beta, fill, c.device, c.dtype)
    # w = (1 - beta) / ((beta + lam) c_t + 1 - beta)
    keep = (b + lam) * c
    w = (1 - b) / (keep + (1 - b))
    c_next = (keep + (1 - b)) / (1 + lam)
    restart = restarts(b, beta, groups, ts.group_ids)
    if restart is not None:  # Restart: m_hat <- g, c <- 1
        w = torch.where(restart, torch.ones_like(w), w)
        c_next = torch.where(restart, torch.ones_like(c_next), c_next)
    w = torch.nan_to_num(w, nan=0.0)  # 0/0 only for beta = 1 with c = 0: keep the state
    torch._foreach_copy_(corrections, list(c_next.unbind()))
    return w


# ---- the class ----------------------------------------------------------------------------


class AMAdamW(AdaptiveMemoryOptimizer):
    """Adaptive Memory AdamW.

    The defaults of lr, betas, eps and weight_decay are torch.optim.AdamW's, so swapping the
    class keeps them; the paper's values are in configs/optimizer/am_adamw.yaml.

    Args as `AMSGD` (lam, beta_max, beta_min, restart_below, frozen_beta, beta_scope,
    plane_bias, nonfinite, maximize, foreach, fused, differentiable, capturable,
    process_group), plus
        betas: (beta1, beta2). AM adapts the first-moment coefficient, so beta1 serves only as
            the default clip `beta_max` (the paper reads 0.9 as both); beta2 is Adam's
            second-moment coefficient (paper: 0.99). For a fixed-momentum AdamW use
            `frozen_beta=beta1, lam=0`.
        eps: Adam's epsilon (paper: 1e-8).
        weight_decay: decoupled weight decay (paper: 1e-4 for the LLMs).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        lam: float = 0.1,
        beta_max: float | None = None,
        beta_min: float = 0.0,
        restart_below: float | None = None,
        frozen_beta: float | None = None,
        **options: Unpack[OptimizerOptions],
    ) -> None:
        if len(betas) != 2:
            raise ValueError(f"AMAdamW: invalid betas={betas!r}: need (beta1, beta2)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            lam=lam,
            beta_max=betas[0] if beta_max is None else beta_max,
            beta_min=beta_min,
            restart_below=restart_below,
            frozen_beta=frozen_beta,
        )
        super().__init__(params, defaults, **options)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        beta1, beta2 = group["betas"]
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"AMAdamW: invalid betas[0]={beta1!r}: must be in [0, 1)")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"AMAdamW: invalid betas[1]={beta2!r}: must be in [0, 1)")
        if not group["eps"] >= 0.0:
            raise ValueError(f"AMAdamW: invalid eps={group['eps']!r}: must be >= 0")

    functional = staticmethod(am_adamw)
    decoupled_decay = True
    _sum_state_keys = ("bias_correction",)

    def _make_kernels(self) -> Any:
        from amm.optim.am_adamw_kernels import am_adamw_kernels

        return am_adamw_kernels()

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0)
        state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # c of docs/algorithm.md section 3, on the device: it depends on beta, which stays there.
        state["bias_correction"] = torch.zeros((), dtype=sum_dtype(param), device=param.device)

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        return state["momentum"], state["exp_avg_sq"]
