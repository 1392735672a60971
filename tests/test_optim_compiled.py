"""fused=True on the CPU: the two passes compiled by torch.compile (amm.optim._compiled)
against the foreach step, compiled once, and the fallback where no C++ compiler is found.

tests/conftest.py sets TRITON_INTERPRET=1 (the Triton kernels' tests run on CPU tensors); the
`compiled` fixture turns it off for this module's optimizers, as on a user's CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_classes import AM_OPTIMIZERS, paper_options
from torch import nn

import amm.optim._compiled as compiled_mod
import amm.optim._triton as triton_mod
from amm.optim import AMAdamW


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    monkeypatch.setattr(triton_mod, "_INTERPRETED", False)
    if compiled_mod.unavailable_reason() is not None:
        pytest.skip(compiled_mod.unavailable_reason())


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 96), nn.Tanh(), nn.Linear(96, 3)).to(dtype=dtype)


def _groups(model):
    return [
        {"params": list(model[0].parameters())},
        {"params": list(model[2].parameters()), "lr": 0.01, "weight_decay": 0.0},
    ]


def _train(model, opt, steps, seed=1, start=0):
    gen = torch.Generator().manual_seed(seed + start)
    betas = []
    for t in range(start, start + steps):
        for group in opt.param_groups:  # a schedule: the lr changes every step
            group["lr"] = 0.02 * (0.8**t)
        x = torch.randn(16, 40, generator=gen, dtype=next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()
        if opt.last_beta is not None:
            betas.append(opt.last_beta.clone())
    return betas


def _assert_same_run(runs, rtol=1e-4, atol=2e-5, beta_atol=1e-4):
    """Parameters, every state tensor and the betas of (foreach, fused) runs agree to fp32
    rounding (the passes round P^-1 = factor / (sqrt(v) + eps s) as the Triton kernels do)."""
    (m1, o1, b1), (m2, o2, b2) = runs
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)
        s1, s2 = o1.state[p], o2.state[q]
        assert s1.keys() == s2.keys()
        for key in s1:
            torch.testing.assert_close(s1[key], s2[key], rtol=rtol, atol=atol, msg=key)
    assert len(b1) == len(b2)
    for a, b in zip(b1, b2):
        torch.testing.assert_close(a, b, rtol=0, atol=beta_atol)


VARIANTS = [
    dict(),
    dict(beta_scope="per-tensor"),
    dict(weight_decay=0.05, beta_scope="per-group"),
    dict(beta_min=0.5, restart_below=0.7, maximize=True),
    dict(frozen_beta=0.8),
]
FORMULATIONS = [
    dict(bias_correction=bc, lam_metric=lm)
    for bc in ("bounded", "exact")
    for lm in ("preconditioned", "scalar")
]


def _cases():
    cases = [(cls, v) for cls in AM_OPTIMIZERS for v in VARIANTS]
    cases += [(AMAdamW, {**f, **v}) for f in FORMULATIONS[1:] for v in VARIANTS[:4]]
    # compiling costs seconds per variant: the inner loop runs the defaults
    return [
        c if c[1] in (VARIANTS[0], VARIANTS[1]) else pytest.param(*c, marks=pytest.mark.slow)
        for c in cases
    ]


@pytest.mark.parametrize(
    ("cls", "options"),
    _cases(),
    ids=lambda v: (
        v.__name__
        if isinstance(v, type)
        else ",".join(f"{k}={x}" for k, x in v.items()) or "default"
    ),
)
def test_compiled_step_equals_foreach(cls, options):
    """Every formulation, beta scope, maximize, weight decay and Clip/Restart/frozen: the
    compiled step on the full state equals the foreach step."""
    runs = []
    for fused in (False, True):
        model = _model()
        opt = cls(_groups(model), lr=0.02, fused=fused, **options, **paper_options(cls))
        runs.append((model, opt, _train(model, opt, 8)))
    _assert_same_run(runs)


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_compiled_step_bf16(cls):
    runs = []
    for fused in (False, True):
        model = _model(dtype=torch.bfloat16)
        opt = cls(model.parameters(), lr=0.02, fused=fused, **paper_options(cls))
        runs.append((model, opt, _train(model, opt, 4)))
    _assert_same_run(runs, rtol=2e-2, atol=2e-2, beta_atol=1e-2)  # bf16: a rounding per store


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_compiled_once_through_schedule_skip_and_resume(cls):
    """After the first step, no recompile: the lr follows a schedule (in the hyper tensor, not a
    Python float), a step is skipped (nonfinite='skip'), a fresh optimizer resumes from
    state_dict; the resumed run equals the uninterrupted one bit for bit."""
    model = _model()
    opt = cls(model.parameters(), lr=0.02, fused=True, nonfinite="skip", **paper_options(cls))
    _train(model, opt, 1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        _train(model, opt, 3, start=1)
        for p in model.parameters():
            p.grad = torch.full_like(p, float("nan"))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()  # skipped: pass 1 ran, pass 2 did not
        assert opt.nonfinite_skips == 1
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        _train(model, opt, 3, start=4)
        resumed = _model(seed=5)
        resumed.load_state_dict(saved_model)
        again = cls(resumed.parameters(), lr=0.02, fused=True, nonfinite="skip")
        again.load_state_dict(saved_opt)
        _train(resumed, again, 3, start=4)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_compiled_falls_back_to_foreach_with_one_warning(monkeypatch):
    """Without a C++ compiler (or for fp64): the foreach step, one warning naming why."""
    reason = "torch.compile found no C++ compiler (test); install g++ or set CXX"
    monkeypatch.setattr(compiled_mod, "unavailable_reason", lambda: reason)
    for cls in AM_OPTIMIZERS:
        for dtype, why in [(torch.float32, "no C\\+\\+ compiler"), (torch.float64, "float64")]:
            params = [nn.Parameter(torch.linspace(-1, 1, 12, dtype=dtype)) for _ in range(2)]
            opts = cls([params[0]], lr=0.1, fused=True), cls([params[1]], lr=0.1)
            with pytest.warns(UserWarning, match=f"fused=True.*{why}.*foreach") as caught:
                for _ in range(3):
                    for p, opt in zip(params, opts):
                        p.grad = torch.cos(3 * p.detach())
                        opt.step()
            assert sum("fused=True" in str(w.message) for w in caught) == 1
            assert torch.equal(params[0], params[1])


def test_unavailable_reason_names_a_missing_compiler(monkeypatch):
    """The probe itself: a compiler search that finds nothing gives a reason, not an error."""
    import torch._inductor.config as inductor_config

    assert compiled_mod.probe() is None  # g++ on this machine
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("amm-no-such-compiler++",))
    reason = compiled_mod.probe()
    assert reason is not None and "no C++ compiler" in reason and "CXX" in reason


@pytest.mark.slow
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_compiled_step_inside_a_compiled_step(cls):
    """A user's torch.compile(optimizer.step) with fused=True on the CPU: the same numbers."""
    models = [_model(), _model()]
    opts = [cls(m.parameters(), lr=0.02, fused=f) for m, f in zip(models, (True, False))]
    steps = [torch.compile(opts[0].step), opts[1].step]
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        x = torch.randn(16, 40, generator=gen)
        for model, opt, step in zip(models, opts, steps):
            opt.zero_grad()
            model(x).square().mean().backward()
            step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5)
