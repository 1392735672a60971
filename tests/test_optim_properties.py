"""Property tests: whatever the shapes, dtypes and scales, parameters stay finite and beta
stays in [beta_min, beta_max]."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_classes import AM_OPTIMIZERS
from torch import nn

from amm.optim import AMAdamW

shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    cls=st.sampled_from(AM_OPTIMIZERS),
    shape_list=shapes,
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    log_scale=st.sampled_from([-30, -8, 0, 8, 15]),
    kind=st.sampled_from(["random", "zero", "g_equals_d", "g_minus_d"]),
    scope=st.sampled_from(["global", "per-group", "per-tensor"]),
    beta_min=st.sampled_from([0.0, 0.2]),
    foreach=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_parameters_finite_and_beta_in_bounds(
    cls, shape_list, dtype, log_scale, kind, scope, beta_min, foreach, seed
):
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shape_list]
    lr = 1e-3 if cls is AMAdamW else 10.0 ** (-log_scale) * 1e-2
    opt = cls(params, lr=lr, beta_min=beta_min, beta_scope=scope, foreach=foreach)
    scale = 10.0**log_scale
    fixed = [torch.randn(s, generator=gen) * scale for s in shape_list]
    for step in range(4):
        for p, f in zip(params, fixed):
            if kind == "zero":
                g = torch.zeros_like(f)
            elif kind == "g_equals_d":
                g = f  # the same gradient every step: after step 1, d == g (SGD)
            elif kind == "g_minus_d":
                g = f * (-1) ** step
            else:
                g = torch.randn(f.shape, generator=gen) * scale
            p.grad = g.to(dtype)
        opt.step()
        for p in params:
            assert torch.isfinite(p.float()).all()
        beta = opt.last_beta
        if step == 0:
            assert beta is None or cls is AMAdamW
        if beta is not None:
            assert torch.isfinite(beta).all()
            assert (beta >= beta_min).all() and (beta <= 0.9).all()
