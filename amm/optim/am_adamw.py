"""AM-AdamW: AdamW whose first-moment coefficient adapts every step (docs/algorithm.md,
section 3).

Adam's preconditioner P_t = B_t (sqrt(v_hat_t) + eps) (diagonal), a proximal step in the metric
P with the lam term in a metric M, and decoupled weight decay:

    b_t / eta_{t-1} ~= <g, P^-1 d> + wd <g, x>                            (first order)
    beta_t  = clip([(eta_{t-1}/eta_t) b_t/eta_{t-1} + <g + lam M P^-1 d, g - d>_W] / ||g - d||_W^2)
    d_{t+1} = (P + lam M)^-1 [(1 - beta_t) P g + (beta_t P + lam M) d],  W = (P + lam M)^-1
    x_{t+1} = (1 - eta wd) x - eta P^-1 d_{t+1}

Two choices the paper leaves open in our copy of it are options of the whole optimizer:

- `bias_correction`: "bounded" (default; the paper's runs, appendix D.1): d is Adam's raw
  momentum (d_0 = 0) and the first-moment correction lives in P, bounded by beta_max because
  beta_t is not known when P is formed: B_t = 1 - beta_max prod_{i<t} beta_i. At t = 1, d = 0
  and b = 0 give beta_1 = beta_max from the formula itself. "exact" (the suite's formulation
  before 2026-12-07): d is the bias-corrected m_hat = m / c with the exact EMA weight c of the
  varying betas, B = 1, beta = 0 at t = 1.
- `lam_metric`: "preconditioned" (default; M = P^2, lam scaled per coordinate by P: the one
  public implementation that cites the paper's algorithm) or "scalar" (M = P: lam acts as in
  AM-SGD, d_{t+1} = ((beta + lam) d + (1 - beta) g) / (1 + lam)).

With beta frozen at beta1 and lam = 0 every combination is torch.optim.AdamW to rounding.

`AMAdamWStep` is the step's core in the phases of `AdaptiveMemoryOptimizer.step()`: prepare
(the new second moment and P^-1), sums (per tensor b / eta_{t-1}, cross and gap in the metric),
update (momentum, correction, parameters); each phase branches on the implementation:
single-tensor (the reference, the formulas literally), foreach, or fused (Triton,
am_adamw_kernels.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from amm.optim._base import (
    OPTION_DEFAULTS,
    AdaptiveMemoryOptimizer,
    GroupHyper,
    Impl,
    OptimizerOptions,
    StepContext,
    StepTensors,
    check_choice,
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

BIAS_CORRECTIONS = ("bounded", "exact")
LAM_METRICS = ("preconditioned", "scalar")


@dataclass(frozen=True)
class AdamHyper(GroupHyper):
    """AM-AdamW's group hyper-parameters: beta_max is betas[0] (one value: a scheduler that
    cycles betas[0] cycles the clip); beta2 and eps are Adam's second moment's."""

    beta2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def values(cls, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            **GroupHyper.values({**group, "beta_max": beta1}),
            "beta2": float(beta2),
            "eps": float(group["eps"]),
        }


# ---- the core -----------------------------------------------------------------------------


class AMAdamWStep:
    """One AM-AdamW step (see `amm.optim._base.StepCore`) in the formulation of the options.

    Per tensor: P^-1 (elementwise, `pinv`), and in the bounded form B_t from the product of the
    betas so far (`state["beta_prod"]`); the exact form keeps c (`state["bias_correction"]`: a
    scalar, or per element with the preconditioned metric, where each coordinate's lam differs).
    """

    def __init__(
        self, ts: StepTensors, hyper: list[GroupHyper], impl: Impl, context: StepContext
    ) -> None:
        self.ts, self.impl, self.context = ts, impl, context
        self.bounded = context.options["bias_correction"] == "bounded"
        self.preconditioned = context.options["lam_metric"] == "preconditioned"
        self.first_step_adaptive = self.bounded
        self.hyper = hyper
        self.hp: list[AdamHyper] = [hyper[g] for g in ts.group_ids]  # type: ignore[misc]
        self.moms = [local(st["momentum"]) for st in ts.states]
        self.second = [local(st["exp_avg_sq"]) for st in ts.states]
        # sqrt(1 - beta2^t): v_hat = v / scale^2
        self.scale = [
            math.sqrt(1 - h.beta2 ** (st["step"].item() + 1)) for h, st in zip(self.hp, ts.states)
        ]
        self.dtype = common_sum_dtype(ts.params)
        self.device = ts.params[0].device
        self.lam = [h.lam for h in self.hp]
        if self.bounded:
            # B_t = 1 - bound prod_{i<t} beta_i; the bound is beta_max, or the frozen beta,
            # which is known (so a frozen beta1 gives Adam's 1 - beta1^t exactly)
            self.bound = per_tensor(
                [h.beta_max if h.frozen_beta is None else h.frozen_beta for h in self.hp],
                self.device,
                self.dtype,
            )
            self.prod = torch.stack([st["beta_prod"].to(self.dtype) for st in ts.states])
            self.B = 1 - self.bound * self.prod
        self.pinv: list[Tensor] = []  # P^-1 per tensor (single/foreach), after prepare()
        self.raw: Tensor | None = None  # fused pass 1's columns

    # -- phase 2: the gradient norms of the non-finite check -------------------------------
    def grad_norms(self) -> Tensor | None:
        if self.impl != "fused":
            return None
        host = small_tensor(
            [
                [h.beta2, h.eps * s, h.lam, 1 - h.lr * h.weight_decay, -h.lr]
                for h, s in zip(self.hp, self.scale)
            ],
            self.device,
            torch.float32,
        )
        factor = small_tensor(self.scale, self.device, torch.float32)  # P^-1 = factor * inv
        if self.bounded:
            factor = factor / self.B.to(torch.float32)
        self.fused_hyper = torch.cat([host, factor[:, None]], dim=1).contiguous()
        self.flags = _flags(
            any(h.weight_decay != 0 for h in self.hp), self.preconditioned, self._c_per_element
        )
        cs = [local(st["bias_correction"]) for st in self.ts.states] if self._c_per_element else []
        # the kernels' order; without a per-element c its table is a placeholder, never read
        self.tensors = [self.ts.grads, self.moms, self.second, self.ts.params, cs or self.moms]
        self.raw = self.context.kernels.sums(self.tensors, self.fused_hyper, self.flags)
        return self.raw[:, 4]

    @property
    def _c_per_element(self) -> bool:
        return not self.bounded and self.preconditioned

    # -- phase 3 ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """v_t = beta2 v + (1 - beta2) g^2 and P_t^-1 = 1 / (B (sqrt(v_t) / s + eps)) (the fused
        kernels recompute both in each pass)."""
        if self.impl == "fused":
            return
        foreach = self.impl == "foreach"
        pinv: list[Tensor] = [None] * len(self.moms)  # type: ignore[list-item]
        for gid, members in by_group(self.ts.group_ids).items():
            h = self.hyper[gid]
            assert isinstance(h, AdamHyper)
            vs, gs = [self.second[i] for i in members], [self.ts.grads[i] for i in members]
            scales = [self.scale[i] for i in members]
            if foreach:
                torch._foreach_mul_(vs, h.beta2)
                torch._foreach_addcmul_(vs, gs, gs, value=1 - h.beta2)
                ds = self.context.scratch(f"pinv{gid}", vs)
                for v, d in zip(vs, ds):
                    torch.sqrt(v, out=d)
                torch._foreach_div_(ds, scales)
                torch._foreach_add_(ds, h.eps)
                if self.bounded:
                    torch._foreach_mul_(ds, [self.B[i].to(d.dtype) for i, d in zip(members, ds)])
                torch._foreach_reciprocal_(ds)
            else:
                ds = []
                for i, v, g, s in zip(members, vs, gs, scales):
                    v.mul_(h.beta2).addcmul_(g, g, value=1 - h.beta2)
                    p = v.sqrt().div_(s).add_(h.eps)
                    if self.bounded:
                        p.mul_(self.B[i].to(p.dtype))
                    ds.append(p.reciprocal_())
            for k, i in enumerate(members):
                pinv[i] = ds[k]
        self.pinv = pinv

    # -- phase 4 ------------------------------------------------------------------------------
    def sums(self, idx: list[int]) -> Tensor:
        """Per tensor [<g, P^-1 d> + wd <g, x>, cross, gap], where cross and gap are
        <g + lam M P^-1 d, g - d>_W' and ||g - d||_W'^2 in W' = (1 + lam) W (the scalar part of
        lam left to the formula, as for AM-SGD; `amm.optim.beta`)."""
        wd = per_tensor([self.hp[i].weight_decay for i in idx], self.device, self.dtype)
        lam = per_tensor([self.lam[i] for i in idx], self.device, self.dtype)
        if self.impl == "fused":
            assert self.raw is not None
            rows = rows_at(self.raw, idx)
            return torch.stack([rows[:, 0] + wd * rows[:, 3], rows[:, 1], rows[:, 2]], dim=1)
        g = [self.ts.grads[i] for i in idx]
        d = [self.moms[i] for i in idx]
        x = [self.ts.params[i] for i in idx]
        pinv = [self.pinv[i] for i in idx]
        lams = [self.lam[i] for i in idx]
        with_decay = any(self.hp[i].weight_decay != 0 for i in idx)
        if self.impl == "single":
            return torch.stack(
                [
                    _reference_sums(
                        *t, lam=l_i, preconditioned=self.preconditioned, dtype=self.dtype
                    )
                    for *t, l_i in zip(g, d, x, pinv, [self.hp[i].weight_decay for i in idx], lams)
                ]
            )
        if any(t.dtype != self.dtype for t in g):  # bf16/fp16: reduce in fp32
            g, d, x = (
                [t.to(self.dtype) for t in g],
                [t.to(self.dtype) for t in d],
                [t.to(self.dtype) for t in x],
            )
            pinv = [t.to(self.dtype) for t in pinv]
        g_dot_x = (
            torch.stack([dot(a, b) for a, b in zip(g, x)])
            if with_decay
            else torch.zeros(len(g), dtype=self.dtype, device=self.device)
        )
        u = self.context.scratch(f"u{len(idx)}", g) if g[0].dtype == self.dtype else None
        u = list(torch._foreach_mul(g, pinv)) if u is None else _mul_into(u, g, pinv)
        plane = torch.stack([dot(a, b) for a, b in zip(d, u)])  # <g, P^-1 d>
        if not self.preconditioned:
            # W' = P^-1: three dots, no further temporaries
            g_sq = torch.stack([dot(a, b) for a, b in zip(g, u)])
            _mul_into(u, d, pinv)
            d_sq = torch.stack([dot(a, b) for a, b in zip(d, u)])
            gap_sq, cross = gap_and_cross(g_sq, plane, d_sq, lam)
            return torch.stack([plane + wd * g_dot_x, cross, gap_sq], dim=1)
        # M = P^2: 1 + q = 1 + lam P per coordinate, W' = (1 + lam) P^-1 / (1 + q);
        # cross = (1 + lam) [<g, e P^-1 / (1 + q)> + lam <d, e / (1 + q)>] with e = g - d
        r = self.context.scratch(f"r{len(idx)}", g) if g[0].dtype == self.dtype else None
        r = list(torch._foreach_add(pinv, lams)) if r is None else _add_into(r, pinv, lams)
        torch._foreach_reciprocal_(r)
        torch._foreach_mul_(r, pinv)  # 1 / (1 + q)
        for u_i, g_i, d_i in zip(u, g, d):  # u <- e
            torch.sub(g_i, d_i, out=u_i)
        torch._foreach_mul_(r, u)  # e / (1 + q)
        cross_d = torch.stack([dot(a, b) for a, b in zip(d, r)])
        torch._foreach_mul_(r, pinv)  # e P^-1 / (1 + q)
        gap = torch.stack([dot(a, b) for a, b in zip(u, r)])
        cross_g = torch.stack([dot(a, b) for a, b in zip(g, r)])
        return torch.stack(
            [plane + wd * g_dot_x, (1 + lam) * (cross_g + lam * cross_d), (1 + lam) * gap], dim=1
        )

    # -- phase 5 ------------------------------------------------------------------------------
    def update(self, beta: list[Beta]) -> None:
        fill = [h.frozen_beta or 0.0 for h in self.hp]  # exact, t = 1: beta = 0 (or frozen)
        b = beta_vector(beta, fill, self.device, self.dtype)
        restart = restarts(b, beta, self.hp)
        if self.bounded:
            self._bounded_update(b, restart)
        else:
            self._exact_update(b, restart)

    def _bounded_update(self, b: Tensor, restart: Tensor | None) -> None:
        """d <- lerp(kappa d, g, w), w = (1 - beta) / (1 + lam M P^-1), x <- (1 - eta wd) x
        - eta P^-1 d. Restart: the step is a fresh first step (docs/algorithm.md, section 3):
        d <- 0 (kappa = 0), prod <- 1, so B = 1 - beta_max and beta = beta_max."""
        B_new, used = self.B, b
        if restart is not None:
            used = torch.where(restart, self.bound * torch.ones_like(b), b)
            B_new = torch.where(restart, 1 - self.bound * torch.ones_like(b), self.B)
        prod_next = (self.prod if restart is None else torch.where(restart, 1.0, self.prod)) * used
        lam = per_tensor(self.lam, self.device, self.dtype)
        # take: the per-tensor part of w (the scalar metric's whole w)
        take = 1 - used if self.preconditioned else (1 - used) / (1 + lam)
        kappa = None if restart is None else torch.where(restart, 0.0, 1.0).to(self.dtype)
        if self.impl == "fused":
            self._fused_update(take, kappa, self.B if restart is None else B_new, used, restart)
        else:
            if restart is not None:  # P^-1 with the restarted B
                ratio = self.B / B_new
                torch._foreach_mul_(self.pinv, [r.to(p.dtype) for r, p in zip(ratio, self.pinv)])
                assert kappa is not None
                self._scale(self.moms, kappa)
            w = self._weights(take)
            self._lerp(w)
            self._step_params()
        torch._foreach_copy_([st["beta_prod"] for st in self.ts.states], list(prod_next.unbind()))

    def _exact_update(self, b: Tensor, restart: Tensor | None) -> None:
        """m_hat <- lerp(m_hat, g, w), w = (1 - beta) / ((beta + q) c + 1 - beta),
        c <- ((beta + q) c + 1 - beta) / (1 + q), q = lam M P^-1 (the scalar metric: q = lam; a
        scalar c per tensor, else per element); restart: m_hat <- g, c <- 1."""
        cs = [local(st["bias_correction"]) for st in self.ts.states]
        if self.impl == "fused":
            if self._c_per_element:
                one = torch.ones_like(b)
                rs = one * 0 if restart is None else restart.to(b.dtype)
                self._fused_update(one, None, None, b, rs)
            else:
                w, c_next = _exact_scalar_weights(b, torch.stack(cs), self.lam, restart)
                self._fused_update(w, None, None, b, None)
                torch._foreach_copy_(cs, list(c_next.unbind()))
            return
        if not self._c_per_element:
            w, c_next = _exact_scalar_weights(b, torch.stack(cs), self.lam, restart)
            torch._foreach_copy_(cs, list(c_next.unbind()))
            self._lerp([w_i.to(m.dtype) for w_i, m in zip(w.unbind(), self.moms)])
        else:
            ws = []
            for i, (c, p, m) in enumerate(zip(cs, self.pinv, self.moms)):
                c32, b_i = c.to(self.dtype), b[i]
                q = self.lam[i] / p.to(self.dtype)  # lam P
                keep = (b_i + q) * c32
                w = (1 - b_i) / (keep + (1 - b_i))
                c_next = (keep + (1 - b_i)) / (1 + q)
                if restart is not None:
                    w = torch.where(restart[i], torch.ones_like(w), w)
                    c_next = torch.where(restart[i], torch.ones_like(c_next), c_next)
                ws.append(torch.nan_to_num(w, nan=0.0).to(m.dtype))  # 0/0: beta = 1, c = 0
                c.copy_(c_next)
            self._lerp(ws)
        self._step_params()

    # helpers of the single-tensor and foreach updates (the same ops, loops or foreach)
    def _weights(self, take: Tensor) -> list[Tensor]:
        """w = take / (1 + lam P) per element (preconditioned), or take per tensor."""
        if not self.preconditioned:
            return [t.to(m.dtype) for t, m in zip(take.unbind(), self.moms)]
        # 1 / (1 + lam P) = P^-1 / (P^-1 + lam)
        out = []
        for t, p, lam in zip(take.unbind(), self.pinv, self.lam):
            out.append(p / (p + lam) * t.to(p.dtype))
        return out

    def _scale(self, tensors: list[Tensor], factors: Tensor) -> None:
        torch._foreach_mul_(tensors, [f.to(t.dtype) for f, t in zip(factors.unbind(), tensors)])

    def _lerp(self, weights: list[Tensor]) -> None:
        if self.impl == "foreach":
            torch._foreach_lerp_(self.moms, self.ts.grads, weights)
        else:
            for m, g, w in zip(self.moms, self.ts.grads, weights):
                m.lerp_(g, w)

    def _step_params(self) -> None:
        """x <- (1 - eta wd) x - eta P^-1 d."""
        for gid, members in by_group(self.ts.group_ids).items():
            h = self.hyper[gid]
            p = [self.ts.params[i] for i in members]
            d = [self.moms[i] for i in members]
            pinv = [self.pinv[i] for i in members]
            if self.impl == "foreach":
                if h.weight_decay != 0:
                    torch._foreach_mul_(p, 1 - h.lr * h.weight_decay)
                torch._foreach_addcmul_(p, d, pinv, value=-h.lr)
            else:
                for p_i, d_i, s_i in zip(p, d, pinv):
                    if h.weight_decay != 0:
                        p_i.mul_(1 - h.lr * h.weight_decay)
                    p_i.addcmul_(d_i, s_i, value=-h.lr)

    def _fused_update(
        self,
        take: Tensor,
        kappa: Tensor | None,
        B: Tensor | None,
        beta: Tensor,
        restart: Tensor | None,
    ) -> None:
        """Pass 2 with each tensor's [take, kappa, P^-1 factor, beta, restart]."""
        ones = torch.ones_like(beta)
        factor = self.fused_hyper[:, 5].to(beta.dtype)  # scale / B of pass 1
        if B is not None:
            factor = factor * self.B / B  # a restarted tensor's new B
        weights = torch.stack(
            [
                take,
                ones if kappa is None else kappa,
                factor,
                beta,
                ones * 0 if restart is None else restart.to(beta.dtype),
            ],
            dim=1,
        )
        self.context.kernels.update(
            self.tensors, self.fused_hyper, weights.to(torch.float32).contiguous(), self.flags
        )


def _flags(with_decay: bool, preconditioned: bool, c_per_element: bool) -> int:
    """The kernels' FLAGS (am_adamw_kernels.py): bit 0 weight decay, bit 1 M = P^2, bit 2 the
    exact correction per element."""
    return int(with_decay) | int(preconditioned) << 1 | int(c_per_element) << 2


def _exact_scalar_weights(
    b: Tensor, c: Tensor, lams: list[float], restart: Tensor | None
) -> tuple[Tensor, Tensor]:
    """The exact correction with the scalar metric: per tensor the w of
    m_hat <- lerp(m_hat, g, w) and the next c (a restart: w = 1, c = 1)."""
    lam = per_tensor(lams, c.device, c.dtype)
    b = b.to(c.dtype)
    keep = (b + lam) * c
    w = (1 - b) / (keep + (1 - b))
    c_next = (keep + (1 - b)) / (1 + lam)
    if restart is not None:
        w = torch.where(restart, torch.ones_like(w), w)
        c_next = torch.where(restart, torch.ones_like(c_next), c_next)
    return torch.nan_to_num(w, nan=0.0), c_next  # 0/0 only for beta = 1 with c = 0


def _reference_sums(
    g: Tensor,
    d: Tensor,
    x: Tensor,
    pinv: Tensor,
    wd: float,
    *,
    lam: float,
    preconditioned: bool,
    dtype: torch.dtype,
) -> Tensor:
    """The single-tensor reference: [<g, P^-1 d> + wd <g, x>, cross, gap] literally, with
    q = lam M P^-1 (lam P or lam) and W' = (1 + lam) P^-1 / (1 + q)."""
    g, d, x, pinv = g.to(dtype), d.to(dtype), x.to(dtype), pinv.to(dtype)
    q = lam / pinv if preconditioned else torch.full_like(pinv, lam)
    omega = (1 + lam) * pinv / (1 + q)
    e = g - d
    return torch.stack(
        [
            (g * d * pinv).sum() + wd * dot(g, x),
            ((g + q * d) * e * omega).sum(),
            (e * e * omega).sum(),
        ]
    )


def _mul_into(out: list[Tensor], a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    for o, x, y in zip(out, a, b):
        torch.mul(x, y, out=o)
    return out


def _add_into(out: list[Tensor], a: list[Tensor], b: list[float]) -> list[Tensor]:
    for o, x, y in zip(out, a, b):
        torch.add(x, y, out=o)
    return out


# ---- the class ----------------------------------------------------------------------------


class AMAdamW(AdaptiveMemoryOptimizer):
    """Adaptive Memory AdamW.

    The defaults of lr, betas, eps and weight_decay are torch.optim.AdamW's, so swapping the
    class keeps them; the paper's values are in configs/optimizer/am_adamw.yaml.

    Args as `AMSGD` (lam, beta_min, restart_below, frozen_beta, beta_scope, plane_bias,
    nonfinite, maximize, foreach, fused, differentiable, capturable, process_group), plus
        betas: (beta1, beta2). AM adapts the first-moment coefficient; beta1 is its upper clip
            beta_max (the paper reads 0.9 as both), so a scheduler that cycles betas[0]
            (OneCycleLR, CyclicLR with cycle_momentum) cycles the clip. beta2 is Adam's
            second-moment coefficient (paper: 0.99). For a fixed-momentum AdamW use
            `frozen_beta=beta1, lam=0`.
        beta_max: another name for betas[0]; if given, it replaces betas[0].
        eps: Adam's epsilon (paper: 1e-8).
        weight_decay: decoupled weight decay (paper: 1e-4 for the LLMs).
        bias_correction: "bounded" (the paper's runs: Adam's raw momentum, the first-moment
            correction in P bounded by beta_max) or "exact" (the bias-corrected momentum with
            the exact EMA weight of the varying betas; the suite's formulation before
            2026-12-07). See docs/algorithm.md, section 3.
        lam_metric: the metric M of the lam term: "preconditioned" (M = P^2) or "scalar"
            (M = P). See docs/algorithm.md, section 3.
    """

    core = AMAdamWStep
    hyper = AdamHyper
    options: ClassVar[dict[str, Any]] = {
        **OPTION_DEFAULTS,
        "bias_correction": "bounded",
        "lam_metric": "preconditioned",
    }
    math_options = ("beta_scope", "plane_bias", "maximize", "bias_correction", "lam_metric")
    # checkpoints saved before these options existed used the exact correction, scalar lam
    legacy_options: ClassVar[dict[str, Any]] = {"bias_correction": "exact", "lam_metric": "scalar"}
    beta_max_key = "beta_max (betas[0])"
    _sum_state_keys = ("bias_correction", "beta_prod")

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
        bias_correction: str = "bounded",
        lam_metric: str = "preconditioned",
        **options: Unpack[OptimizerOptions],
    ) -> None:
        betas = tuple(betas)  # type: ignore[assignment]
        if len(betas) != 2:
            raise ValueError(f"AMAdamW: invalid betas={betas!r}: need (beta1, beta2)")
        if beta_max is not None:
            betas = (beta_max, betas[1])
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            lam=lam,
            beta_min=beta_min,
            restart_below=restart_below,
            frozen_beta=frozen_beta,
        )
        super().__init__(
            params,
            defaults,
            bias_correction=bias_correction,
            lam_metric=lam_metric,
            **options,
        )

    def _beta_max(self, group: dict[str, Any]) -> Any:
        return group["betas"][0]

    def _check_group(self, group: dict[str, Any]) -> None:
        check_choice(group, "bias_correction", BIAS_CORRECTIONS, "AMAdamW")
        check_choice(group, "lam_metric", LAM_METRICS, "AMAdamW")
        beta1, beta2 = group["betas"]
        if not 0.0 <= beta1 < 1.0:  # B_1 = 1 - beta_max must not vanish
            raise ValueError(
                f"AMAdamW: invalid beta_max (betas[0])={beta1!r}: must be in [0, 1) "
                "(the paper uses 0.9)"
            )
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"AMAdamW: invalid betas[1]={beta2!r}: must be in [0, 1)")
        if not group["eps"] >= 0.0:
            raise ValueError(f"AMAdamW: invalid eps={group['eps']!r}: must be >= 0")
        super()._check_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _beta_max_into_betas(param_group, self.defaults["betas"])
        super().add_param_group(param_group)

    def _upgrade_group(self, group: dict[str, Any]) -> None:
        super()._upgrade_group(group)
        # saved before beta_max and betas[0] were one value: beta_max was the clip
        _beta_max_into_betas(group, group.get("betas", (0.9, 0.999)))

    def _make_kernels(self) -> Any:
        from amm.optim.am_adamw_kernels import am_adamw_kernels

        return am_adamw_kernels()

    def _compiled_passes(self) -> Any:
        from amm.optim.am_adamw_kernels import am_adamw_compiled

        return am_adamw_compiled()

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0)
        state["momentum"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # scalars on the device: they depend on beta, which stays there
        if self._option("bias_correction") == "bounded":  # prod_{i<t} beta_i (empty: 1)
            state["beta_prod"] = torch.ones((), dtype=sum_dtype(param), device=param.device)
        elif self._option("lam_metric") == "preconditioned":  # c per element (lam P differs)
            state["bias_correction"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        else:
            state["bias_correction"] = torch.zeros((), dtype=sum_dtype(param), device=param.device)

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        c = state.get("bias_correction")
        if c is not None and c.dim() > 0:
            return state["momentum"], state["exp_avg_sq"], c
        return state["momentum"], state["exp_avg_sq"]


def _beta_max_into_betas(group: dict[str, Any], betas: Any) -> None:
    """A param group given (or saved) with beta_max: it is betas[0]."""
    if "beta_max" in group:
        top = group.pop("beta_max")
        if top is not None:
            group["betas"] = (top, tuple(group.get("betas", betas))[1])
