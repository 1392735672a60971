"""The adaptive momentum coefficient: the one implementation of the beta formula, and the
reduction of per-tensor sums to the scope of beta. Pure functions of tensors (no optimizer).

docs/algorithm.md, sections 1-4: with dual weights (1 - beta, beta) on the gradient plane and
the momentum plane, the proximal step is a heavy-ball step and beta maximises a concave
quadratic,

    beta_t = clip( [(1 + lam) b_t / eta_t + <g + lam d, g - d>] / ||g - d||^2, beta_min, beta_max )

All inner products are in the optimizer's metric (Euclidean for AM-SGD, P^-1 for AM-AdamW).
With several parameter groups the learning rate is part of the metric (the proximal term is
sum_g ||x_g - x_t,g||^2 / (2 eta_g)), so every group's sums are weighted by its eta. Callers
therefore pass eta-weighted sums; with a single group this is exactly the formula above.
"""

from __future__ import annotations

import torch
from torch import Tensor

from amm.optim._tensors import small_tensor

BETA_SCOPES = ("global", "per-group", "per-tensor")


def adaptive_beta(
    plane_bias: Tensor,
    cross: Tensor,
    gap_sq: Tensor,
    *,
    lam: float,
    beta_min: float,
    beta_max: float,
) -> Tensor:
    """beta = clip(((1 + lam) * plane_bias + cross) / gap_sq, beta_min, beta_max).

    Args (same shape, any number of scopes, eta-weighted as described in the module doc):
        plane_bias: the momentum plane's bias b_t (linear: sum eta_{t-1} (<g, d> + wd <g, x>);
            exact: f(x_{t-1}) - f(x_t)).
        cross: sum eta_t <g + lam d, g - d>.
        gap_sq: sum eta_t ||g - d||^2.

    When g == d the two planes coincide and beta does not change the step: report beta_max.
    Overflowed sums give +-inf ratios, which clip to the bounds; NaN ratios give beta_max.
    """
    ratio = ((1.0 + lam) * plane_bias + cross) / gap_sq
    beta = torch.nan_to_num(ratio, nan=beta_max).clamp(beta_min, beta_max)
    return torch.where(gap_sq > 0, beta, torch.full_like(beta, beta_max))


def gap_and_cross(
    g_sq: Tensor, g_dot_d: Tensor, d_sq: Tensor, lam: Tensor | float
) -> tuple[Tensor, Tensor]:
    """||g - d||^2 and <g + lam d, g - d> from the three inner products (no temporaries).

    ||g - d||^2 loses relative precision when g ~ d; then the linear-bias numerator is about
    (1 + lam)||g||^2 > 0 and beta clips to beta_max whatever the small gap is, and a gap that
    rounds to <= 0 reports beta_max too. The single-tensor references compute both literally.
    """
    gap_sq = (g_sq - 2 * g_dot_d + d_sq).clamp_min(0)
    cross = g_sq - (1 - lam) * g_dot_d - lam * d_sq
    return gap_sq, cross


def scope_units(scope: str, group_ids: list[int]) -> list[int]:
    """The unit (one beta each) of every tensor: all one unit (global), one per param group
    present in the step, or one per tensor."""
    if scope == "global":
        return [0] * len(group_ids)
    if scope == "per-group":
        present = sorted(set(group_ids))
        return [present.index(g) for g in group_ids]
    if scope == "per-tensor":
        return list(range(len(group_ids)))
    raise ValueError(f"invalid beta_scope={scope!r}; use one of {BETA_SCOPES}")


def reduce_scope(weighted: Tensor, scope: str, group_ids: list[int]) -> tuple[Tensor, list[int]]:
    """Sum per-tensor rows [tensors, k] into per-unit rows [units, k], and each tensor's unit
    (see `scope_units`). The packed rows are what a sharded step all-reduces."""
    units = scope_units(scope, group_ids)
    if scope == "global":
        return weighted.sum(0, keepdim=True), units
    index = small_tensor(units, weighted.device, torch.long)
    shape = (max(units) + 1, weighted.shape[1])
    packed = torch.zeros(shape, dtype=weighted.dtype, device=weighted.device)
    return packed.index_add_(0, index, weighted), units


def unit_betas(packed: Tensor, settings: list[tuple[float, float, float]]) -> Tensor:
    """One beta per unit from its row [plane_bias, cross, gap_sq] and its
    (lam, beta_min, beta_max): one vectorised `adaptive_beta` per distinct setting."""
    distinct: dict[tuple[float, float, float], list[int]] = {}
    for u, setting in enumerate(settings):
        distinct.setdefault(setting, []).append(u)
    if len(distinct) == 1:
        (lam, beta_min, beta_max), _ = distinct.popitem()
        return adaptive_beta(
            packed[:, 0], packed[:, 1], packed[:, 2], lam=lam, beta_min=beta_min, beta_max=beta_max
        )
    out = torch.empty(packed.shape[0], dtype=packed.dtype, device=packed.device)
    for (lam, beta_min, beta_max), members in distinct.items():
        sel = small_tensor(members, packed.device, torch.long)
        p = packed.index_select(0, sel)
        beta = adaptive_beta(
            p[:, 0], p[:, 1], p[:, 2], lam=lam, beta_min=beta_min, beta_max=beta_max
        )
        out.index_copy_(0, sel, beta)
    return out
