"""The fused (Triton) step against the foreach step.

On a GPU the kernels are compiled; elsewhere they run in Triton's interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1 when there is no GPU)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from optim_classes import AM_OPTIMIZERS, paper_options
from torch import nn

from amm.optim import AMAdamW, NonFiniteGradientError

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 96), nn.Tanh(), nn.Linear(96, 3)).to(DEVICE, dtype)


def _train(model, opt, steps, seed=1, lrs=None):
    gen = torch.Generator().manual_seed(seed)
    betas = []
    for t in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        x = torch.randn(16, 40, generator=gen).to(DEVICE, next(model.parameters()).dtype)
        opt.zero_grad()
        model(x).float().square().mean().backward()
        opt.step()
        if opt.last_beta is not None:
            betas.append(opt.last_beta.clone())
    return betas


def _groups(model, lr2):
    return [
        {"params": list(model[0].parameters())},
        {"params": list(model[2].parameters()), "lr": lr2, "weight_decay": 0.0},
    ]


VARIANTS = [
    dict(),
    dict(weight_decay=0.05),
    dict(beta_scope="per-tensor"),
    dict(beta_scope="per-group"),
    dict(beta_min=0.5, restart_below=0.7),
    dict(frozen_beta=0.8),
    dict(nonfinite="off", lam=0.2),
]
# Triton's interpreter takes seconds per variant on the CPU: the inner loop checks the default
# and the per-tensor scope, `make test` every variant
FAST_VARIANTS = 2


def _variants() -> list[object]:
    return [
        v if i < FAST_VARIANTS else pytest.param(v, marks=pytest.mark.slow)
        for i, v in enumerate([VARIANTS[0], VARIANTS[2], VARIANTS[1], *VARIANTS[3:]])
    ]


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
@pytest.mark.parametrize(
    "variant", _variants(), ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default"
)
def test_fused_equals_foreach(cls, variant):
    lrs = [0.02 * (0.8**t) for t in range(8)]  # a schedule: the eta_{t-1}/eta_t ratio
    results = {}
    for fused in (False, True):
        model = _model()
        opt = cls(_groups(model, 0.01), lr=0.02, fused=fused, **variant, **paper_options(cls))
        betas = _train(model, opt, 8, lrs=lrs)
        results[fused] = (model, opt, betas)
    (m1, o1, b1), (m2, o2, b2) = results[False], results[True]
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for a, b in zip(o1._state_tensors(o1.state[p]), o2._state_tensors(o2.state[q])):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(b1) == len(b2)
    for a, b in zip(b1, b2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


FORMULATIONS = [
    dict(bias_correction=bc, lam_metric=lm)
    for bc in ("bounded", "exact")
    for lm in ("preconditioned", "scalar")
]
FORMULATION_VARIANTS = [
    dict(),
    dict(weight_decay=0.05, beta_scope="per-tensor"),
    dict(beta_min=0.5, restart_below=0.7),
    dict(frozen_beta=0.8, lam=0.0),
]


def _formulation_cases() -> list[object]:
    """Every AM-AdamW formulation with every variant; the inner loop runs the defaults."""
    cases = []
    for form in FORMULATIONS:
        for k, variant in enumerate(FORMULATION_VARIANTS):
            case = {**form, **variant}
            fast = k == 0 and form == FORMULATIONS[0]
            cases.append(case if fast else pytest.param(case, marks=pytest.mark.slow))
    return cases


@pytest.mark.parametrize(
    "options", _formulation_cases(), ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items())
)
def test_fused_am_adamw_formulations_equal_foreach(options):
    """Each formulation (bounded / exact correction, preconditioned / scalar lam metric) in the
    kernels equals the foreach step on the full state (momentum, v, and the correction)."""
    lrs = [0.02 * (0.8**t) for t in range(8)]
    runs = {}
    for fused in (False, True):
        model = _model()
        opt = AMAdamW(_groups(model, 0.01), lr=0.02, betas=(0.9, 0.99), fused=fused, **options)
        runs[fused] = (model, opt, _train(model, opt, 8, lrs=lrs))
    (m1, o1, b1), (m2, o2, b2) = runs[False], runs[True]
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        s1, s2 = o1.state[p], o2.state[q]
        assert s1.keys() == s2.keys()
        for key in s1:
            torch.testing.assert_close(s1[key], s2[key], rtol=1e-5, atol=1e-6, msg=key)
    assert len(b1) == len(b2)
    for a, b in zip(b1, b2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_fused_mixed_dtypes_and_low_precision(cls):
    """bf16 and fp32 tensors in one optimizer (one launch per dtype, sums in fp32): the fused
    step is as close to an all-fp32 run as the foreach step is. Gradients are fixed, so the
    rounding differences do not feed back through them."""
    gen = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(64, 32, generator=gen), torch.randn(50, generator=gen)
    grads = [(torch.randn(64, 32, generator=gen), torch.randn(50, generator=gen)) for _ in range(6)]
    results = {}
    for name, low, fused in (("fp32", torch.float32, False), ("foreach", torch.bfloat16, False),
                             ("fused", torch.bfloat16, True)):  # fmt: skip
        w = nn.Parameter(w0.to(DEVICE, low))
        b = nn.Parameter(b0.to(DEVICE))
        opt = cls([w, b], lr=0.02, fused=fused, **paper_options(cls))
        for gw, gb in grads:
            w.grad, b.grad = gw.to(DEVICE, low), gb.to(DEVICE)
            opt.step()
        results[name] = (w.detach().float(), b.detach(), opt.last_beta)
    assert results["fused"][2].dtype == torch.float32
    ref = results["fp32"]
    # Triton's interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest even), a
    # bias that accumulates over the steps: a looser bound there
    slack = 1e-3 if DEVICE == "cuda" else 5e-3
    for k in range(3):
        err_fused = (results["fused"][k] - ref[k]).abs().max().item()
        err_foreach = (results["foreach"][k] - ref[k]).abs().max().item()
        assert err_fused <= 1.5 * err_foreach + slack, (k, err_fused, err_foreach)


@pytest.mark.slow
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_fused_is_deterministic_and_resumes_bit_identically(cls):
    def run(split=None):
        model = _model()
        opt = cls(model.parameters(), lr=0.02, fused=True)
        gen = torch.Generator().manual_seed(3)
        for t in range(8):
            if t == split:
                saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
                model = _model(seed=5)
                model.load_state_dict(saved[0])
                opt = cls(model.parameters(), lr=0.02, fused=True)
                opt.load_state_dict(saved[1])
            x = torch.randn(16, 40, generator=gen).to(DEVICE)
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()], opt.last_beta

    (a, ba), (b, bb), (c, bc) = run(), run(), run(split=4)
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
    assert torch.equal(ba, bb) and torch.equal(ba, bc)


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_fused_nonfinite_gradient_raises_or_skips_leaving_state_untouched(cls):
    model = _model()
    for policy in ("raise", "skip"):
        opt = cls(model.parameters(), lr=0.02, fused=True, nonfinite=policy)
        _train(model, opt, 2)
        before = copy.deepcopy(opt.state_dict()["state"])
        weights = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        model(torch.randn(4, 40, device=DEVICE)).square().mean().backward()
        model[2].bias.grad[1] = float("nan")
        if policy == "raise":
            with pytest.raises(NonFiniteGradientError, match=r"\[2\]|shape \[3\]"):
                opt.step()
        else:
            opt.step()
        after = opt.state_dict()["state"]
        for k, st in before.items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, after[k][key]), (policy, key)
        assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_fused_step_under_torch_compile_equals_eager(cls):
    """torch.compile(opt.step) runs the kernel launches eagerly (compiler.disable) and traces the
    rest; it used to fail (the kernels object created inside the traced step was lost)."""
    model = _model()
    twin = copy.deepcopy(model)
    eager = cls(model.parameters(), lr=0.01, nonfinite="off", fused=True)
    compiled = cls(twin.parameters(), lr=0.01, nonfinite="off", fused=True)
    _train(model, eager, steps=4)
    compiled.step = torch.compile(compiled.step)
    _train(twin, compiled, steps=4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fused_falls_back_to_foreach_with_one_warning_where_it_cannot_run():
    """fp64 and non-dense layouts (and, without Triton's interpreter, CPU tensors): the foreach
    step, the same numbers, and one warning naming the reason."""
    model = _model()
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        AMAdamW(model.parameters(), fused=True, foreach=True)
    for cls in AM_OPTIMIZERS:
        for p0, reason in [
            (torch.randn(4, 4, dtype=torch.float64), "float64"),
            (torch.randn(6, 4).t(), "not dense"),  # a transposed view
        ]:
            params = [nn.Parameter(p0.clone().to(DEVICE)) for _ in range(2)]
            fused_opt = cls([params[0]], lr=0.1, fused=True)
            foreach_opt = cls([params[1]], lr=0.1)
            with pytest.warns(UserWarning, match=f"fused=True.*{reason}.*foreach") as caught:
                for _ in range(3):
                    for p, opt in zip(params, (fused_opt, foreach_opt)):
                        p.grad = torch.sin(3 * p.detach()) + p.detach()
                        opt.step()
            assert sum("fused=True" in str(w.message) for w in caught) == 1  # once, not per step
            torch.testing.assert_close(params[0], params[1], rtol=0, atol=0)


def test_fused_runs_where_triton_can():
    import amm.optim._triton as fused

    assert DEVICE == "cuda" or fused.interpreting(), "tests/conftest.py sets TRITON_INTERPRET=1"
    cpu = [(torch.zeros(2), torch.zeros(2), torch.zeros(2))]
    if not fused.interpreting():
        assert "CUDA" in fused.unsupported_reason(cpu)


@pytest.mark.parametrize("cls", AM_OPTIMIZERS)
def test_fused_unaligned_parameters(cls):
    """A parameter that starts 4 bytes into its storage is not 16-byte aligned: its launch
    takes the element-wise kernels (no vector-load hint, which would be wrong), same result."""
    import amm.optim._triton as fused

    first = torch.randn(1 + 3000, device=DEVICE)
    buffers = [first, first.clone()]
    params = [nn.Parameter(b[1:]) for b in buffers]  # views at offset 1
    aligned = torch.zeros(16, device=DEVICE)
    assert fused.Launcher()._table("x", [aligned, params[0]])[1] is False
    assert fused.Launcher()._table("x", [aligned])[1] is True
    paper = paper_options(cls)
    opts = cls([params[0]], lr=0.1, fused=True, **paper), cls([params[1]], lr=0.1, **paper)
    for _ in range(3):
        for p, opt in zip(params, opts):
            p.grad = torch.sin(3 * p.detach())
            opt.step()
    torch.testing.assert_close(params[0], params[1], rtol=1e-5, atol=1e-6)


CPU_COMPILED = """
import warnings, torch
from amm.optim import AMAdamW
a, b = (torch.nn.Parameter(torch.linspace(-1, 1, 12)) for _ in range(2))
opts = AMAdamW([a], lr=0.1, fused=True), AMAdamW([b], lr=0.1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        for p, opt in zip((a, b), opts):
            p.grad = torch.cos(p.detach())
            opt.step()
torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # lr 0.1: steps of 0.1, fp32 rounding
for w in caught:
    print(w.message)
"""


@pytest.mark.slow
def test_fused_on_cpu_without_the_interpreter_runs_the_compiled_step():
    """A config with fused=True on a CPU: the compiled passes (amm.optim._compiled), equal to
    foreach, and no fallback warning (tests/test_optim_compiled.py covers the options)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-c", CPU_COMPILED], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fused=True" not in done.stdout, done.stdout


@pytest.mark.slow
def test_fused_kernels_compile_for_hopper(tmp_path):
    """Triton's compiler (not its interpreter) lowers every kernel to PTX for sm_90, without a
    GPU; in a fresh process, since this one may have Triton in interpreter mode."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    script = Path(__file__).with_name("compile_fused_kernels.py")
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled all fused kernels" in done.stdout
