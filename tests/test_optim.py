"""amm.optim against docs/algorithm.md: sanity facts, torch equivalences, an independent
plain-Python computation of the formulas, foreach == single-tensor, state_dict, dtypes, AMP,
torch.compile, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optim_classes import AM_OPTIMIZERS, paper_options
from torch import nn

from amm.optim import (
    AMSGD,
    AMAdamW,
    NonFiniteGradientError,
    OracleHeavyBall,
    adaptive_beta,
    build_optimizer,
)

# ---------------------------------------------------------------- helpers


def _problem(dtype=torch.float64, seed=0):
    """A small non-quadratic problem with two tensors: f = sum a x^2 / 2 + c x + 0.1 sin(x)."""
    gen = torch.Generator().manual_seed(seed)
    a = [
        torch.rand(3, 4, generator=gen, dtype=dtype) + 0.5,
        torch.rand(5, generator=gen, dtype=dtype),
    ]
    c = [torch.randn(3, 4, generator=gen, dtype=dtype), torch.randn(5, generator=gen, dtype=dtype)]
    x0 = [torch.randn(3, 4, generator=gen, dtype=dtype), torch.randn(5, generator=gen, dtype=dtype)]
    return a, c, x0


def _loss(params, a, c):
    return sum(
        (ai * p**2 / 2 + ci * p + 0.1 * torch.sin(p)).sum() for p, ai, ci in zip(params, a, c)
    )


def _run(opt_factory, steps, lrs=None, dtype=torch.float64, seed=0, closure=False):
    a, c, x0 = _problem(dtype, seed)
    params = [nn.Parameter(x.clone()) for x in x0]
    opt = opt_factory(params)
    betas = []
    for t in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]

        def fn():
            opt.zero_grad()
            loss = _loss(params, a, c)
            loss.backward()
            return loss

        if closure:
            opt.step(fn)
        else:
            fn()
            opt.step()
        stats = opt.beta_stats() if hasattr(opt, "beta_stats") else {}
        betas.append(float(stats["beta"]) if "beta" in stats else None)
    return [p.detach() for p in params], betas, opt


def _dot(u, v):
    return sum(x * y for x, y in zip(u, v))


def _flat_problem(seed=0):
    a, c, x0 = _problem(torch.float64, seed)
    flat = lambda ts: [float(v) for t in ts for v in t.flatten()]  # noqa: E731
    return flat(a), flat(c), flat(x0)


def _grad(x, a, c):
    return [ai * xi + ci + 0.1 * math.cos(xi) for xi, ai, ci in zip(x, a, c)]


def _f(x, a, c):
    return sum(ai * xi * xi / 2 + ci * xi + 0.1 * math.sin(xi) for xi, ai, ci in zip(x, a, c))


def reference_am_sgd(lrs, lam, beta_max, wd, exact=False, seed=0):
    """docs/algorithm.md sections 1-2 in plain Python floats."""
    a, c, x = _flat_problem(seed)
    d, prev_lr, prev_f, betas = None, None, None, []
    for lr in lrs:
        g = [gi + wd * xi for gi, xi in zip(_grad(x, a, c), x)]
        f = _f(x, a, c) + wd / 2 * _dot(x, x)
        if d is None:
            d, beta = list(g), None
        else:
            b = (prev_f - f) if exact else prev_lr * _dot(g, d)
            diff = [gi - di for gi, di in zip(g, d)]
            num = (1 + lam) * b / lr + _dot([gi + lam * di for gi, di in zip(g, d)], diff)
            beta = min(max(num / _dot(diff, diff), 0.0), beta_max)
            d = [((beta + lam) * di + (1 - beta) * gi) / (1 + lam) for gi, di in zip(g, d)]
        betas.append(beta)
        x = [xi - lr * di for xi, di in zip(x, d)]
        prev_lr, prev_f = lr, f
    return x, betas


def reference_am_adamw(
    lrs, lam, beta_max, wd, beta2=0.99, eps=1e-8, seed=0,
    bias_correction="bounded", lam_metric="preconditioned", restart_below=None,
):  # fmt: skip
    """docs/algorithm.md section 3 in plain Python floats, in its general form: the metric P,
    the lam metric M (P^2 or P), W = (P + lam M)^-1 per coordinate, d_{t+1} = W [(1 - beta) P g
    + (beta P + lam M) d]. bounded: raw d, P = B (sqrt(v_hat) + eps), B = 1 - beta_max prod;
    exact: raw m and its EMA weight c per coordinate, d = m / c, P = sqrt(v_hat) + eps."""
    a, c_lin, x = _flat_problem(seed)
    n = len(x)
    d, v = [0.0] * n, [0.0] * n  # bounded: d; exact: the raw m
    c = [0.0] * n  # exact: the EMA weight of m, per coordinate
    prod, prev_lr, betas = 1.0, None, []
    for t, lr in enumerate(lrs, start=1):
        g = _grad(x, a, c_lin)
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        root = [math.sqrt(vi / (1 - beta2**t)) + eps for vi in v]
        B = 1 - beta_max * prod if bias_correction == "bounded" else 1.0
        P = [B * r for r in root]
        M = [pi * pi for pi in P] if lam_metric == "preconditioned" else list(P)
        W = [1 / (pi + lam * mi) for pi, mi in zip(P, M)]
        if bias_correction == "exact" and t == 1:
            beta = None
        else:
            dd = d if bias_correction == "bounded" else [mi / ci for mi, ci in zip(d, c)]
            diff = [gi - di for gi, di in zip(g, dd)]
            b = 0.0  # t = 1: no previous step
            if t > 1:
                b = prev_lr * (sum(gi * di / pi for gi, di, pi in zip(g, dd, P)) + wd * _dot(g, x))
            num = b / lr + sum(
                (gi + lam * mi / pi * di) * ei * wi
                for gi, di, ei, pi, mi, wi in zip(g, dd, diff, P, M, W)
            )
            den = sum(ei * ei * wi for ei, wi in zip(diff, W))
            beta = min(max(num / den, 0.0), beta_max) if den > 0 else beta_max
        betas.append(beta)
        used = 0.0 if beta is None else beta
        restart = beta is not None and restart_below is not None and beta < restart_below
        if bias_correction == "bounded":
            if restart:  # a fresh first step: d = 0, prod = 1, beta = beta_max
                d, prod, used = [0.0] * n, 1.0, beta_max
                P = [(1 - beta_max) * r for r in root]
                M = [pi * pi for pi in P] if lam_metric == "preconditioned" else list(P)
                W = [1 / (pi + lam * mi) for pi, mi in zip(P, M)]
            d = [
                wi * ((1 - used) * pi * gi + (used * pi + lam * mi) * di)
                for wi, pi, mi, gi, di in zip(W, P, M, g, d)
            ]
            step = [di / pi for di, pi in zip(d, P)]
            prod *= used
        else:
            q = [lam * mi / pi for mi, pi in zip(M, P)]
            if restart:  # m_hat <- g, c <- 1
                d, c = list(g), [1.0] * n
            else:
                d = [((used + qi) * mi + (1 - used) * gi) / (1 + qi) for mi, gi, qi in zip(d, g, q)]
                c = [((used + qi) * ci + (1 - used)) / (1 + qi) for ci, qi in zip(c, q)]
            step = [mi / ci / pi for mi, ci, pi in zip(d, c, P)]
        x = [(1 - lr * wd) * xi - lr * si for xi, si in zip(x, step)]
        prev_lr = lr
    return x, betas


FORMULATIONS = [(bc, lm) for bc in ("bounded", "exact") for lm in ("preconditioned", "scalar")]


def _same(a, b):
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _flat(params):
    return [float(v) for p in params for v in p.flatten()]


# learning rates large enough that beta moves between its bounds
BIG_STEPS = [0.8, 0.9, 1.1, 0.7, 1.0, 0.95, 1.2, 0.85, 1.3, 0.9]

# ---------------------------------------------------------------- the beta formula


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.1, 0.3])
def test_g_equals_minus_d_gives_one_minus_3lam_over_4(lam):
    g = torch.randn(50, dtype=torch.float64)
    d = -g
    # linear plane bias, constant lr: b / eta = <g, d>
    beta = adaptive_beta(
        torch.dot(g, d), torch.dot(g + lam * d, g - d), torch.dot(g - d, g - d),
        lam=lam, beta_min=-10.0, beta_max=10.0,
    )  # fmt: skip
    assert beta.item() == pytest.approx((1 - 3 * lam) / 4, abs=1e-12)


def test_g_equals_minus_d_through_the_optimizer():
    lam = 0.05
    p = nn.Parameter(torch.zeros(7, dtype=torch.float64))
    opt = AMSGD([p], lr=0.1, lam=lam, beta_max=1.0)
    g = torch.randn(7, dtype=torch.float64)
    opt.state[p]["step"] = torch.tensor(1.0)
    opt.state[p]["momentum_buffer"] = -g.clone()
    p.grad = g.clone()
    opt.step()
    assert opt.last_beta.item() == pytest.approx((1 - 3 * lam) / 4, abs=1e-12)


def test_lam_zero_bound_used_by_the_proof():
    torch.manual_seed(1)
    g, d = torch.randn(30, dtype=torch.float64), torch.randn(30, dtype=torch.float64) * 3
    beta = adaptive_beta(
        torch.dot(g, d), torch.dot(g, g - d), torch.dot(g - d, g - d),
        lam=0.0, beta_min=0.0, beta_max=1.0,
    )  # fmt: skip
    assert 0 < beta.item() < 1
    assert beta.item() * torch.dot(g - d, g - d).item() == pytest.approx(torch.dot(g, g).item())


def test_coinciding_planes_report_beta_max():
    z = torch.zeros((), dtype=torch.float64)
    assert adaptive_beta(z, z, z, lam=0.1, beta_min=0.0, beta_max=0.9).item() == 0.9


# ---------------------------------------------------------------- equivalences with torch


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("b", [0.0, 0.5, 0.9])
def test_frozen_am_sgd_is_torch_sgd_with_dampening(foreach, b):
    def ours(params):
        return AMSGD(
            [{"params": params[:1]}, {"params": params[1:], "lr": 0.02, "weight_decay": 0.01}],
            lr=0.05, lam=0.0, frozen_beta=b, foreach=foreach,
        )  # fmt: skip

    def theirs(params):
        return torch.optim.SGD(
            [{"params": params[:1]}, {"params": params[1:], "lr": 0.02, "weight_decay": 0.01}],
            lr=0.05, momentum=b, dampening=b, foreach=foreach,
        )  # fmt: skip

    x1, _, _ = _run(ours, 60, dtype=torch.float32)
    x2, _, _ = _run(theirs, 60, dtype=torch.float32)
    for p, q in zip(x1, x2):
        assert torch.equal(p, q)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("bias_correction, lam_metric", FORMULATIONS)
def test_frozen_am_adamw_is_torch_adamw(foreach, bias_correction, lam_metric):
    kw = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    form = dict(bias_correction=bias_correction, lam_metric=lam_metric)
    x1, _, _ = _run(
        lambda p: AMAdamW(p, **kw, lam=0.0, frozen_beta=0.9, foreach=foreach, **form),
        100,
        dtype=torch.float32,
    )
    x2, _, _ = _run(lambda p: torch.optim.AdamW(p, **kw, foreach=foreach), 100, dtype=torch.float32)
    for p, q in zip(x1, x2):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- independent reference


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_am_sgd_matches_plain_python_reference(foreach, wd):
    x, betas, _ = _run(
        lambda p: AMSGD(p, lr=BIG_STEPS[0], lam=0.1, beta_max=0.9, weight_decay=wd, foreach=foreach),
        len(BIG_STEPS), lrs=BIG_STEPS,
    )  # fmt: skip
    x_ref, betas_ref = reference_am_sgd(BIG_STEPS, lam=0.1, beta_max=0.9, wd=wd)
    assert betas[0] is None and betas_ref[0] is None
    assert betas[1:] == pytest.approx(betas_ref[1:], abs=1e-12)
    assert len({round(b, 6) for b in betas[1:]}) > 2, "beta should vary on this problem"
    assert _flat(x) == pytest.approx(x_ref, abs=1e-12)


def test_am_sgd_exact_plane_bias_matches_reference():
    x, betas, opt = _run(
        lambda p: AMSGD(p, lr=0.9, lam=0.1, beta_max=0.9, plane_bias="exact"), 10, closure=True
    )
    assert opt.needs_closure
    x_ref, betas_ref = reference_am_sgd([0.9] * 10, lam=0.1, beta_max=0.9, wd=0.0, exact=True)
    assert len({round(b, 6) for b in betas[1:]}) > 2
    assert betas[1:] == pytest.approx(betas_ref[1:], abs=1e-12)
    assert _flat(x) == pytest.approx(x_ref, abs=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("bias_correction, lam_metric", FORMULATIONS)
def test_am_adamw_matches_plain_python_reference(foreach, wd, bias_correction, lam_metric):
    x, betas, _ = _run(
        lambda p: AMAdamW(p, lr=BIG_STEPS[0], lam=0.1, weight_decay=wd, foreach=foreach,
                          betas=(0.9, 0.99), bias_correction=bias_correction,
                          lam_metric=lam_metric),
        len(BIG_STEPS), lrs=BIG_STEPS,
    )  # fmt: skip
    x_ref, betas_ref = reference_am_adamw(
        BIG_STEPS, lam=0.1, beta_max=0.9, wd=wd,
        bias_correction=bias_correction, lam_metric=lam_metric,
    )  # fmt: skip
    if bias_correction == "bounded":  # d_0 = 0, b = 0: beta_1 = beta_max from the formula
        assert betas[0] == pytest.approx(0.9) and betas_ref[0] == 0.9
    else:
        assert betas[0] is None and betas_ref[0] is None
    assert betas[1:] == pytest.approx(betas_ref[1:], abs=1e-10)
    assert len({round(b, 6) for b in betas[1:]}) > 2
    assert _flat(x) == pytest.approx(x_ref, abs=1e-10)


@pytest.mark.parametrize("bias_correction, lam_metric", FORMULATIONS)
def test_am_adamw_restart_matches_plain_python_reference(bias_correction, lam_metric):
    kw = dict(bias_correction=bias_correction, lam_metric=lam_metric)
    x, betas, _ = _run(
        lambda p: AMAdamW(p, lr=BIG_STEPS[0], lam=0.1, weight_decay=0.05, betas=(0.9, 0.99),
                          restart_below=0.8, **kw),
        len(BIG_STEPS), lrs=BIG_STEPS,
    )  # fmt: skip
    x_ref, betas_ref = reference_am_adamw(BIG_STEPS, 0.1, 0.9, 0.05, restart_below=0.8, **kw)
    assert sum(b is not None and b < 0.8 for b in betas_ref) >= 2, "too few restarts here"
    assert [b is None for b in betas] == [b is None for b in betas_ref]
    assert [b for b in betas if b is not None] == pytest.approx(
        [b for b in betas_ref if b is not None], abs=1e-10
    )
    assert _flat(x) == pytest.approx(x_ref, abs=1e-10)


# Three steps on one coordinate, gradients 1, -0.5, 0.25, lr 0.1, lam 0.1, betas (0.9, 0.99),
# eps 0, by hand (scalar algebra of docs/algorithm.md section 3; beta, then x). Step 1, bounded:
# v_hat = 1, B_1 = 1 - 0.9 = 0.1, P = 0.1; d = 0 and b = 0 give beta = 1 -> 0.9; preconditioned:
# d_1 = (1 - 0.9) g / (1 + lam P) = 0.1 / 1.01, x_1 = -0.1 d_1 / P = -0.1 / 1.01; scalar:
# d_1 = 0.1 / 1.1, x_1 = -0.1 / 1.1. Exact: beta_1 = 0 (none reported), m_hat_1 = g, x_1 = -0.1.
# In one dimension an interior beta puts x at the planes' kink, which for the exact form does not
# depend on the metric (x_2 equal below).
HAND_COMPUTED = {
    ("bounded", "preconditioned"): [(0.9, -0.1 / 1.01), (0.692193715006, -0.043906713164),
                                    (0.552231691203, -0.065358523169)],
    ("bounded", "scalar"): [(0.9, -0.1 / 1.1), (0.687573964497, -0.039620739163),
                            (0.543252595156, -0.059765281063)],
    ("exact", "preconditioned"): [(None, -0.1), (0.040944293143, -0.056049022657),
                                  (0.121049822509, -0.078227940811)],
    ("exact", "scalar"): [(None, -0.1), (0.022222222222, -0.056049022657),
                          (0.092935933962, -0.078227940811)],
}  # fmt: skip


@pytest.mark.parametrize("impl", [dict(foreach=False), dict(foreach=True)])
@pytest.mark.parametrize("form", sorted(HAND_COMPUTED))
def test_am_adamw_three_steps_by_hand(form, impl):
    p = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = AMAdamW([p], lr=0.1, lam=0.1, betas=(0.9, 0.99), eps=0.0, weight_decay=0.0,
                  bias_correction=form[0], lam_metric=form[1], **impl)  # fmt: skip
    for g, (beta, x) in zip([1.0, -0.5, 0.25], HAND_COMPUTED[form]):
        p.grad = torch.tensor([g], dtype=torch.float64)
        before = opt.last_beta
        opt.step()
        if beta is None:
            assert opt.last_beta is before is None
        else:
            assert opt.last_beta.item() == pytest.approx(beta, abs=1e-11)
        assert p.item() == pytest.approx(x, abs=1e-11)


def test_works_with_torch_lr_scheduler():
    model = nn.Linear(4, 2)
    opt = AMAdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(5):
        used = opt.param_groups[0]["lr"]
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < used < 0.1
    assert opt.param_groups[0]["prev_lr"] == used  # eta_{t-1} for the next plane bias
    assert 0.0 <= opt.last_beta.item() <= 0.9


# ---------------------------------------------------------------- foreach == single-tensor

VARIANTS = [
    dict(),
    dict(beta_scope="per-tensor"),
    dict(beta_scope="per-group"),
    dict(beta_min=0.3),
    dict(restart_below=0.5),
    dict(frozen_beta=0.7),
    dict(weight_decay=0.05),
]


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default"
)
def test_foreach_equals_single_tensor(cls, variant):
    def make(foreach):
        def factory(params):
            groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.03}]
            return cls(groups, lr=0.05, foreach=foreach, **variant)

        return factory

    x1, b1, _ = _run(make(True), 12, dtype=torch.float32)
    x2, b2, _ = _run(make(False), 12, dtype=torch.float32)
    for p, q in zip(x1, x2):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert [b is None for b in b1] == [b is None for b in b2]
    assert [b for b in b1 if b is not None] == pytest.approx(
        [b for b in b2 if b is not None], abs=1e-5
    )


def test_restart_resets_momentum_and_clip_bounds_beta():
    _, betas, opt = _run(lambda p: AMSGD(p, lr=0.05, beta_min=0.4), 10)
    assert all(0.4 <= b <= 0.9 for b in betas[1:])
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = AMSGD([p], lr=0.1, restart_below=0.95, beta_max=0.9)  # always restarts
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.state[p]["step"] = torch.tensor(1.0)
    opt.state[p]["momentum_buffer"] = torch.tensor([5.0, 5.0, 5.0], dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], g)


# ---------------------------------------------------------------- state_dict, groups, grads


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resume_is_bit_identical(cls, dtype):
    # bf16: the fp32 scalar state (bias correction, ||d||^2) must survive torch's cast of
    # floating state to the parameter dtype in load_state_dict
    torch.manual_seed(0)
    data = [torch.randn(16, 6, dtype=dtype) for _ in range(20)]
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)

    def train(model, opt, batches):
        for x in batches:
            opt.zero_grad()
            model(x).float().square().mean().backward()
            opt.step()

    m1 = copy.deepcopy(model)
    o1 = cls(m1.parameters(), lr=0.01)
    train(m1, o1, data)

    m2 = copy.deepcopy(model)
    o2 = cls(m2.parameters(), lr=0.01)
    train(m2, o2, data[:9])
    saved = copy.deepcopy((m2.state_dict(), o2.state_dict()))
    m3 = copy.deepcopy(model)
    o3 = cls(m3.parameters(), lr=0.01)
    m3.load_state_dict(saved[0])
    o3.load_state_dict(saved[1])
    train(m3, o3, data[9:])
    for p, q in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(o1.last_beta, o3.last_beta)


def test_params_without_grads_are_skipped_and_groups_keep_their_lr():
    a, b, frozen = (nn.Parameter(torch.randn(4)) for _ in range(3))
    opt = AMSGD([{"params": [a, frozen]}, {"params": [b], "lr": 0.5}], lr=0.1)
    before = frozen.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        (a.square().sum() + b.square().sum()).backward()
        opt.step()
    assert torch.equal(frozen, before) and frozen not in opt.state or not opt.state[frozen]
    assert opt.param_groups[1]["prev_lr"] == 0.5


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_reduce_in_fp32(cls, dtype):
    torch.manual_seed(0)
    model = nn.Linear(16, 4).to(dtype)
    ref = nn.Linear(16, 4)
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    paper = paper_options(cls)  # fp16 Adam needs beta2 = 0.99: 0.999 underflows v at eps 1e-8
    o, o_ref = cls(model.parameters(), lr=0.01, **paper), cls(ref.parameters(), lr=0.01, **paper)
    for _ in range(10):
        x = torch.randn(32, 16)
        for m, opt in ((model, o), (ref, o_ref)):
            opt.zero_grad()
            m(x.to(m.weight.dtype)).float().square().mean().backward()
            opt.step()
    assert o.last_beta.dtype == torch.float32
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())
    assert o.last_beta.item() == pytest.approx(o_ref.last_beta.item(), abs=0.05)


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_amp_grad_scaler(cls):
    model = nn.Linear(8, 1)
    opt = cls(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step in range(6):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(4, 8)).float().square().mean()
        scaler.scale(loss).backward()
        if step == 3:  # an overflow: the scaler must skip the step and our state must not change
            model.weight.grad[0, 0] = float("inf")
            state_before = copy.deepcopy(opt.state_dict())
        scaler.step(opt)
        scaler.update()
        if step == 3:
            after = opt.state_dict()["state"]
            for k, st in state_before["state"].items():
                for name, val in st.items():
                    assert _same(val, after[k][name])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_torch_compile_step_matches_eager(cls):
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    twin = copy.deepcopy(model)
    o1 = cls(model.parameters(), lr=0.01, nonfinite="off")
    o2 = cls(twin.parameters(), lr=0.01, nonfinite="off")
    compiled_step = torch.compile(o2.step)
    for _ in range(4):
        x = torch.randn(16, 8)
        for m, o, step in ((model, o1, o1.step), (twin, o2, compiled_step)):
            o.zero_grad()
            m(x).square().mean().backward()
            step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lam=-0.1), "lam"),
        (dict(beta_max=1.5), "beta_max"),
        (dict(beta_min=0.95), "beta_min"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(restart_below=2.0), "restart_below"),
        (dict(frozen_beta=-0.1), "frozen_beta"),
        (dict(beta_scope="layer"), "beta_scope"),
        (dict(plane_bias="quadratic"), "plane_bias"),
        (dict(nonfinite="ignore"), "nonfinite"),
        (dict(plane_bias="exact", beta_scope="per-tensor"), "beta_scope"),
    ],
)
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_invalid_hyperparameters_name_the_parameter(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([nn.Parameter(torch.zeros(2))], **kwargs)


def test_adamw_specific_bad_input_and_global_scope_consistency():
    with pytest.raises(ValueError, match="betas"):
        AMAdamW([nn.Parameter(torch.zeros(2))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        AMAdamW([nn.Parameter(torch.zeros(2))], eps=-1.0)
    with pytest.raises(ValueError, match="per-group"):
        AMSGD([{"params": [nn.Parameter(torch.zeros(2))], "beta_max": 0.8},
               {"params": [nn.Parameter(torch.zeros(2))]}])  # fmt: skip


def test_exact_plane_bias_without_closure_is_a_clear_error():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="closure"):
        AMSGD([p], plane_bias="exact").step()


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_sparse_gradients_are_rejected(cls):
    emb = nn.Embedding(10, 3, sparse=True)
    opt = cls(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_nonfinite_gradient_raises_naming_the_parameter_or_skips(cls):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = cls(model.named_parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    model[1].bias.grad[0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"1\.bias"):
        opt.step()
    skip = cls(model.named_parameters(), lr=0.1, nonfinite="skip")
    skip.load_state_dict(before[1])
    skip.step()
    assert skip.nonfinite_skips == 1  # what the trainer counts skipped steps from
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[0][k])
    for k, st in skip.state_dict()["state"].items():
        for name, val in st.items():
            assert _same(val, before[1]["state"][k][name])
    model[1].bias.grad[0] = 0.0
    skip.step()  # a finite step is taken and not counted
    assert skip.nonfinite_skips == 1 and not torch.equal(model[1].bias, before[0]["1.bias"])


# ---------------------------------------------------------------- oracle and registry


def test_oracle_beta_is_the_one_step_optimum():
    torch.manual_seed(0)
    A = torch.diag(torch.linspace(0.1, 1.0, 6, dtype=torch.float64))
    x_star = torch.randn(6, dtype=torch.float64)
    x = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = OracleHeavyBall([x], minimizer=[x_star], lr=1.0)
    for _ in range(5):
        x_t = x.detach().clone()
        opt.zero_grad()
        (0.5 * (x - x_star) @ A @ (x - x_star)).backward()
        d = opt.state[x].get("momentum_buffer")
        d = None if d is None else d.clone()
        opt.step()
        if d is not None:
            g = A @ (x_t - x_star)
            grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
            dist = [torch.norm(x_t - (g + b * (d - g)) - x_star) for b in grid]
            best = grid[int(torch.argmin(torch.stack(dist)))]
            assert opt.last_beta.item() == pytest.approx(best.item(), abs=1e-3)


def test_registry_builds_every_optimizer_with_param_groups():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    info = {"lr": 0.25, "minimizer": [torch.zeros_like(p) for p in model.parameters()]}
    for name in ["am_sgd", "am_adamw", "sgd", "adamw", "adam"]:
        opt = build_optimizer(model, name, lr="auto", weight_decay=0.01, info=info)
        assert opt.param_groups[0]["lr"] == 0.25
        assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
        assert all(p.ndim < 2 for p in opt.param_groups[1]["params"])
    oracle = build_optimizer(model, "oracle", lr=0.1, info=info)
    assert isinstance(oracle, OracleHeavyBall)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "lion", lr=0.1)
    with pytest.raises(ValueError, match="auto"):
        build_optimizer(model, "sgd", lr="auto")
    with pytest.raises(ValueError, match="am_sgd"):
        build_optimizer(model, "am_sgd", lr=0.1, momentum=0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU sessions)")
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
@pytest.mark.parametrize("scope", ["global", "per-tensor"])
@pytest.mark.parametrize("fused", [False, True])
def test_no_host_sync_in_step_on_cuda(cls, scope, fused):
    if fused:
        pytest.importorskip("triton")
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)).cuda()
    opt = cls(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.02}],
        lr=0.01,
        beta_scope=scope,
        nonfinite="off",
        fused=fused,
    )
    x = torch.randn(4, 8, device="cuda")
    for step in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        torch.cuda.set_sync_debug_mode("error" if step > 0 else "default")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.last_beta.device.type == "cuda"


def test_am_sgd_tracked_momentum_norm_stays_exact_over_many_steps():
    """foreach AM-SGD advances ||d||^2 algebraically instead of re-reading d: it must agree
    with the buffer's real norm, and the betas with the single-tensor reference, for long."""
    x1, b1, opt = _run(lambda p: AMSGD(p, lr=0.9, foreach=True), 300, dtype=torch.float32)
    x2, b2, _ = _run(lambda p: AMSGD(p, lr=0.9, foreach=False), 300, dtype=torch.float32)
    assert b1[1:] == pytest.approx(b2[1:], abs=1e-4)
    for p in opt.param_groups[0]["params"]:
        state = opt.state[p]
        assert opt._momentum_sq_tracked(p)
        direct = state["momentum_buffer"].double().square().sum().item()
        assert state["momentum_sq"].item() == pytest.approx(direct, rel=1e-4)


# ---------------------------------------------------------------- issue 12: corner cases


def test_zero_previous_lr_gives_zero_plane_bias():
    """docs/algorithm.md, section 2, by hand: f = x^2 / 2, x_0 = 1, lam = 0, rates 0.5, 0, 0.5.
    Step 0: d = g = 1, x = 0.5. Step 1 (rate 0): nothing moves; beta_max reported, d = 0.95.
    Step 2: the previous rate is 0, so b = 0 and beta = <g, g - d> / ||g - d||^2 < 0 -> 0
    (with the current rate taken for the previous one, b = 0.5 * 0.5 * 0.95, beta = 0.9)."""
    x = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = AMSGD([x], lr=0.5, lam=0.0, beta_max=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: [1.0, 0.0, 1.0, 1.0][k])
    betas = []
    for _ in range(3):
        opt.zero_grad()
        (x**2 / 2).sum().backward()
        opt.step()
        scheduler.step()
        betas.append(None if opt.last_beta is None else opt.last_beta.item())
    assert betas == [None, pytest.approx(0.9), 0.0]
    assert x.item() == 0.25


def test_global_beta_with_per_group_lam_maximises_the_dual():
    """docs/algorithm.md, section 4: with lam_g per group, the global beta maximises
    D(beta) = beta b - sum_g eta_g / (2 (1 + lam_g)) ||g_g + lam_g d_g + beta (d_g - g_g)||^2."""
    a, c, x0 = _problem(torch.float64, seed=3)
    params = [nn.Parameter(x.clone()) for x in x0]
    lams, lrs = [0.05, 0.6], [0.3, 0.1]
    opt = AMSGD(
        [{"params": [params[0]], "lam": lams[0], "lr": lrs[0]},
         {"params": [params[1]], "lam": lams[1], "lr": lrs[1]}],
        beta_max=1.0,
    )  # fmt: skip
    checked = 0
    for _ in range(6):
        opt.zero_grad()
        _loss(params, a, c).backward()
        g = [p.grad.clone() for p in params]
        d = [opt.state[p]["momentum_buffer"].clone() if opt.state[p] else None for p in params]
        prev = [group["prev_lr"] for group in opt.param_groups]
        opt.step()
        if d[0] is None:
            continue
        b = sum(pl * torch.dot(gi.flatten(), di.flatten()) for pl, gi, di in zip(prev, g, d))
        grid = torch.linspace(-2, 2, 400001, dtype=torch.float64)
        dual = grid * b
        for gi, di, lam, lr in zip(g, d, lams, lrs):
            v = (gi + lam * di).flatten()[None, :] + grid[:, None] * (di - gi).flatten()[None, :]
            dual = dual - lr / (2 * (1 + lam)) * v.square().sum(1)
        best = grid[int(torch.argmax(dual))].clamp(0.0, 1.0)
        assert opt.last_beta.item() == pytest.approx(best.item(), abs=2e-5)
        checked += 0.0 < best.item() < 1.0  # an interior maximiser, not only a clip
    assert checked >= 2


@pytest.mark.parametrize("foreach", [True, False])
def test_momentum_reset_in_place_is_seen(foreach):
    """User code resetting momentum (`state["momentum_buffer"].zero_()`) between steps: the
    kept ||d||^2 must follow, so foreach and the single-tensor reference agree."""
    runs = []
    for fe in (foreach, not foreach):
        a, c, x0 = _problem(torch.float64)
        params = [nn.Parameter(x.clone()) for x in x0]
        opt = AMSGD(params, lr=0.4, foreach=fe)
        for t in range(6):
            opt.zero_grad()
            _loss(params, a, c).backward()
            opt.step()
            if t == 2:
                for p in params:
                    opt.state[p]["momentum_buffer"].zero_()
        runs.append([p.detach() for p in params])
        for p in params:  # the kept value is the buffer's, whatever happened to it
            direct = opt.state[p]["momentum_buffer"].square().sum()
            assert opt.state[p]["momentum_sq"].item() == pytest.approx(direct.item(), rel=1e-12)
    for p, q in zip(*runs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_exact_plane_bias_includes_coupled_weight_decay():
    """AM-SGD's gradient is that of f + wd/2 ||x||^2, so the exact bias is that function's
    decrease (the plain-Python reference models the same objective)."""
    wd = 0.05
    x, betas, _ = _run(
        lambda p: AMSGD(p, lr=0.9, weight_decay=wd, plane_bias="exact"), 10, closure=True
    )
    x_ref, betas_ref = reference_am_sgd([0.9] * 10, lam=0.1, beta_max=0.9, wd=wd, exact=True)
    assert betas[1:] == pytest.approx(betas_ref[1:], abs=1e-12)
    assert _flat(x) == pytest.approx(x_ref, abs=1e-12)


def test_nonfinite_error_names_a_few_parameters_and_the_count():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])  # 8 tensors
    opt = AMSGD(model.named_parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    with pytest.raises(NonFiniteGradientError, match="8 parameters, among them") as err:
        opt.step()
    assert str(err.value).count("(shape") == 3


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_nan_lr_and_unsupported_flags_are_rejected(cls):
    p = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        cls(p, lr=float("nan"))
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        cls(p, lr=torch.tensor([0.1, 0.2]))
    for flag in ("differentiable", "capturable"):
        with pytest.raises(NotImplementedError, match=flag):
            cls(p, **{flag: True})


def test_am_adamw_defaults_are_torch_adamws():
    p = [nn.Parameter(torch.zeros(2))]
    ours, theirs = AMAdamW(p).defaults, torch.optim.AdamW(p).defaults
    for key in ("lr", "betas", "eps", "weight_decay"):
        assert ours[key] == theirs[key], key


# ---------------------------------------------------------------- AM-AdamW's formulation


def _steps(opt, params, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


@pytest.mark.parametrize("key, saved, mine", [
    ("bias_correction", "exact", "bounded"), ("lam_metric", "scalar", "preconditioned"),
])  # fmt: skip
def test_a_checkpoint_of_another_formulation_is_refused(key, saved, mine):
    p = [nn.Parameter(torch.randn(3, 2))]
    opt = AMAdamW(p, lr=0.01, **{key: saved})
    _steps(opt, p, 3)
    fresh = AMAdamW([nn.Parameter(torch.randn(3, 2))], lr=0.01, **{key: mine})
    with pytest.raises(ValueError, match=f"saved with {key}='{saved}'.*construct it with"):
        fresh.load_state_dict(opt.state_dict())


def test_a_checkpoint_from_before_the_options_is_the_exact_scalar_formulation():
    """Groups saved before 2026-12-07 have neither option but a beta_max key: they are the
    exact correction with the scalar lam metric, and continue exactly as that optimizer."""
    p = [nn.Parameter(torch.randn(3, 2))]
    old = AMAdamW(p, lr=0.01, bias_correction="exact", lam_metric="scalar")
    _steps(old, p, 3)
    saved = copy.deepcopy(old.state_dict())
    for group in saved["param_groups"]:
        del group["bias_correction"], group["lam_metric"]
        group["beta_max"] = group["betas"][0]
    with pytest.raises(ValueError, match="bias_correction='exact'"):
        AMAdamW([nn.Parameter(torch.randn(3, 2))]).load_state_dict(saved)
    q = [nn.Parameter(p[0].detach().clone())]
    resumed = AMAdamW(q, lr=0.01, bias_correction="exact", lam_metric="scalar")
    resumed.load_state_dict(saved)
    assert "beta_max" not in resumed.param_groups[0]
    _steps(old, p, 3, seed=1)
    _steps(resumed, q, 3, seed=1)
    assert torch.equal(p[0], q[0])


def test_beta_max_is_betas0():
    p = nn.Parameter(torch.zeros(2))
    opt = AMAdamW([p], betas=(0.9, 0.99), beta_max=0.8)
    assert opt.param_groups[0]["betas"] == (0.8, 0.99) and "beta_max" not in opt.param_groups[0]
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "beta_max": 0.8})
    assert opt.param_groups[1]["betas"] == (0.8, 0.99)
    with pytest.raises(ValueError, match=r"beta_max \(betas\[0\]\) differs"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "betas": (0.7, 0.99)})


@pytest.mark.parametrize("make", [
    lambda o, cycle: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.05, total_steps=20, cycle_momentum=cycle),
    lambda o, cycle: torch.optim.lr_scheduler.CyclicLR(
        o, base_lr=0.001, max_lr=0.05, step_size_up=5, base_momentum=0.6, max_momentum=0.9,
        cycle_momentum=cycle),
], ids=["OneCycleLR", "CyclicLR"])  # fmt: skip
def test_schedulers_that_cycle_momentum_cycle_the_clip(make):
    """AM-AdamW: betas[0] is beta_max, so cycle_momentum cycles the upper clip of beta (and
    changes the run); AM-SGD has neither `momentum` nor `betas`: torch refuses, clearly."""
    runs = {}
    for cycle in (True, False):
        p = nn.Parameter(torch.linspace(-1, 1, 6))
        opt = AMAdamW([p], lr=0.01, betas=(0.9, 0.99))
        schedule = make(opt, cycle)
        clips = []
        for t in range(12):
            p.grad = torch.cos(3 * p.detach()) + 0.1 * t
            clip = opt.param_groups[0]["betas"][0]
            opt.step()
            assert opt.last_beta.item() <= clip + 1e-7
            clips.append(clip)
            schedule.step()
        runs[cycle] = (p.detach().clone(), clips)
    assert len(set(runs[True][1])) > 3 and len(set(runs[False][1])) == 1  # the clip moved
    assert not torch.equal(runs[True][0], runs[False][0])
    with pytest.raises(ValueError, match="momentum or beta1"):
        make(AMSGD([nn.Parameter(torch.zeros(2))], lr=0.01), True)


@pytest.mark.parametrize("bias_correction, lam_metric", FORMULATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_formulation_resumes_bit_identically(bias_correction, lam_metric, dtype):
    form = dict(bias_correction=bias_correction, lam_metric=lam_metric)
    p = [nn.Parameter(torch.randn(4, 3).to(dtype)), nn.Parameter(torch.randn(5).to(dtype))]
    q = [nn.Parameter(t.detach().clone()) for t in p]
    whole = AMAdamW(p, lr=0.01, weight_decay=0.1, restart_below=0.5, **form)
    _steps(whole, p, 4)
    first = AMAdamW(q, lr=0.01, weight_decay=0.1, restart_below=0.5, **form)
    _steps(first, q, 4)
    saved = copy.deepcopy(first.state_dict())
    resumed = AMAdamW(q, lr=0.01, weight_decay=0.1, restart_below=0.5, **form)
    resumed.load_state_dict(saved)
    for a, b in zip(p, q):
        sa, sb = whole.state[a], resumed.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    _steps(whole, p, 4, seed=1)
    _steps(resumed, q, 4, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(p, q))
