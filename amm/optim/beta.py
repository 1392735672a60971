"""The adaptive momentum coefficient: the one implementation of the beta formula.

ALGORITHM.md, sections 1-3: with dual weights (1 - beta, beta) on the gradient plane and the
momentum plane, the proximal step is a heavy-ball step and beta maximises a concave quadratic,

    beta_t = clip( [(1 + lam) b_t / eta_t + <g + lam d, g - d>] / ||g - d||^2, beta_min, beta_max )

All inner products are in the optimizer's metric (Euclidean for AM-SGD, P^-1 for AM-AdamW).
With several parameter groups the learning rate is part of the metric (the proximal term is
sum_g ||x_g - x_t,g||^2 / (2 eta_g)), so every group's sums are weighted by its eta. Callers
therefore pass eta-weighted sums; with a single group this is exactly ALGORITHM.md.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
