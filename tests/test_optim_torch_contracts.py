"""torch.optim's generic optimizer contracts, checked on the AM optimizers.

The configurations come from `OptimizerInfo` entries, torch's own description of an optimizer
for its conformance machinery (`torch.testing._internal.common_optimizers`, in the torch
wheel); `_get_optim_inputs_including_global_cliquey_kwargs` adds the foreach on/off variants
as torch does for its optimizers. The checks themselves are written here. The deliberate
rejections (per-group beta_min/beta_max/beta_scope under one beta, differentiable,
capturable, sparse gradients) are tested for their clear errors.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from optim_classes import AM_OPTIMIZERS
from torch import nn
from torch.optim import lr_scheduler as sched

pytest.importorskip("expecttest")  # torch's common_optimizers imports it
from torch.testing._internal.common_optimizers import (  # noqa: E402
    ErrorOptimizerInput,
    OptimizerErrorEnum,
    OptimizerInfo,
    OptimizerInput,
    _get_optim_inputs_including_global_cliquey_kwargs,
    get_error_inputs_for_all_optims,
)

CPU = torch.device("cpu")


# AM-AdamW's non-default formulations (docs/algorithm.md, section 3), each run through every
# contract below too
FORMULATIONS = [
    ({"bias_correction": "bounded", "lam_metric": "scalar"}, "bounded, scalar lam"),
    ({"bias_correction": "exact", "lam_metric": "preconditioned"}, "exact, preconditioned lam"),
    ({"bias_correction": "exact", "lam_metric": "scalar"}, "exact, scalar lam (before 2026-12)"),
]


def _inputs_of(cls: type) -> Callable[..., list[OptimizerInput]]:
    """`_inputs`, plus the class's own options (AM-AdamW: its formulations, alone and with
    Restart and per-tensor beta)."""

    def inputs(device: Any, dtype: Any = None) -> list[OptimizerInput]:
        configs = _inputs(device, dtype)
        if "bias_correction" in getattr(cls, "options", {}):
            for kw, desc in FORMULATIONS:
                configs += [  # fresh dicts: torch's helpers add foreach/fused to kwargs in place
                    OptimizerInput(params=None, kwargs=dict(kw), desc=desc),
                    OptimizerInput(
                        params=None,
                        kwargs={**kw, "restart_below": 0.3, "beta_scope": "per-tensor"},
                        desc=f"{desc}, restart, per-tensor",
                    ),
                ]
        return configs

    return inputs


def _inputs(device: Any, dtype: Any = None) -> list[OptimizerInput]:
    """Configurations every AM optimizer takes (a new variant gets them all)."""
    configs = [
        ({}, "default"),
        ({"lr": 0.02}, "non-default lr"),
        ({"lr": torch.tensor(0.01)}, "tensor lr"),
        ({"weight_decay": 0.1}, "weight_decay"),
        ({"weight_decay": 0.1, "maximize": True}, "maximize"),
        ({"lam": 0.3, "beta_min": 0.1}, "lam, clip"),
        ({"restart_below": 0.3}, "restart"),
        ({"beta_scope": "per-tensor"}, "per-tensor beta"),
        ({"beta_scope": "per-group"}, "per-group beta"),
        ({"frozen_beta": 0.8, "lam": 0.0}, "frozen beta"),
        ({"nonfinite": "off"}, "no non-finite check"),
    ]
    return [OptimizerInput(params=None, kwargs=kw, desc=desc) for kw, desc in configs]


def _error_inputs(device: Any, dtype: Any) -> list[ErrorOptimizerInput]:
    """torch's error inputs for every optimizer, and the AM optimizers' own."""
    p = [nn.Parameter(torch.randn(2, 2, device=device, dtype=dtype))]
    ours = [
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(lam=-0.1), ValueError, "lam"),
        (dict(beta_scope="layer"), ValueError, "beta_scope"),
        (dict(differentiable=True), NotImplementedError, "differentiable"),
        (dict(capturable=True), NotImplementedError, "capturable"),
        (dict(fused=True, foreach=True), ValueError, "fused"),
        (dict(beta_scop="global"), TypeError, "unexpected keyword.*beta_scop"),  # a typo
    ]
    errors = [
        ErrorOptimizerInput(
            OptimizerInput(params=p, kwargs=kw, desc=regex), error_type=err, error_regex=regex
        )
        for kw, err, regex in ours
    ]
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "beta_max": 0.8}, {"params": p}]
    errors.append(
        ErrorOptimizerInput(
            OptimizerInput(params=groups, kwargs={}, desc="one beta, two clips"),
            error_type=ValueError,
            error_regex="beta_max.* differs between param groups.*per-group",
        )
    )
    return get_error_inputs_for_all_optims(device, dtype) + errors


SCHEDULERS: list[Callable[[torch.optim.Optimizer], Any]] = [
    lambda o: sched.StepLR(o, step_size=3, gamma=0.5),
    lambda o: sched.MultiStepLR(o, milestones=[2, 4]),
    lambda o: sched.ConstantLR(o, factor=0.5, total_iters=3),
    lambda o: sched.LinearLR(o, start_factor=0.25, total_iters=4),
    lambda o: sched.ExponentialLR(o, gamma=0.9),
    lambda o: sched.PolynomialLR(o, total_iters=6, power=2.0),
    lambda o: sched.CosineAnnealingLR(o, T_max=5),
    lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3),
    lambda o: sched.CyclicLR(o, base_lr=0.001, max_lr=0.02, step_size_up=2, cycle_momentum=False),
    # total_steps above what torch's own tests step (test_forloop_goes_right_direction: 20)
    lambda o: sched.OneCycleLR(o, max_lr=0.02, total_steps=100, cycle_momentum=False),
    lambda o: sched.LambdaLR(o, lambda k: k / 5),  # transformers' warmup shape: from 0
    lambda o: sched.MultiplicativeLR(o, lambda k: 0.95),
    lambda o: sched.SequentialLR(
        o, [sched.ConstantLR(o, factor=0.5, total_iters=2), sched.ExponentialLR(o, 0.9)], [2]
    ),
    lambda o: sched.ChainedScheduler([sched.ConstantLR(o, 0.5, 2), sched.ExponentialLR(o, 0.9)]),
    lambda o: sched.ReduceLROnPlateau(o, patience=0, factor=0.5),
]

INFOS = [
    OptimizerInfo(
        cls,
        optim_inputs_func=_inputs_of(cls),
        optim_error_inputs_func=_error_inputs,
        scheduler_inputs=([s] for s in SCHEDULERS),
        supported_impls=("foreach", "fused"),
        supports_fused_on=("cuda",),
    )
    for cls in AM_OPTIMIZERS
]


def _configs(info: OptimizerInfo, dtype: torch.dtype = torch.float64) -> list[OptimizerInput]:
    return _get_optim_inputs_including_global_cliquey_kwargs(CPU, dtype, info)


def _problem(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[nn.Module, Callable]:
    """A model with two param groups' worth of tensors and a loss that keeps beta moving."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    x = torch.randn(8, 5, dtype=dtype)

    def loss_fn() -> torch.Tensor:
        return (model(x) - 0.3).pow(2).sum() + 0.1 * model[0].weight.sin().sum()

    return model, loss_fn


def _groups(model: nn.Module) -> list[dict[str, Any]]:
    return [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}]


def _train(opt: torch.optim.Optimizer, loss_fn: Callable, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def _kwargs(config: OptimizerInput) -> dict[str, Any]:
    return copy.deepcopy(config.kwargs)  # a tensor lr must not be shared between optimizers


def _id(info: OptimizerInfo) -> str:
    return info.name


def _assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer, **tol: Any) -> None:
    for p, q in zip(
        (p for g in a.param_groups for p in g["params"]),
        (q for g in b.param_groups for q in g["params"]),
    ):
        torch.testing.assert_close(p, q, **tol)
        sa, sb = a.state[p], b.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], **tol, msg=f"state[{key!r}]")


# ---------------------------------------------------------------- state_dict, copies


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_state_dict_round_trip_continues_exactly(info):
    for config in _configs(info):
        model, loss_fn = _problem()
        opt = info.optim_cls(_groups(model), **_kwargs(config))
        _train(opt, loss_fn, 3)
        twin, twin_loss = _problem()
        twin.load_state_dict(model.state_dict())
        resumed = info.optim_cls(_groups(twin), **_kwargs(config))
        saved = copy.deepcopy(opt.state_dict())
        resumed.load_state_dict(saved)
        _train(opt, loss_fn, 3)
        _train(resumed, twin_loss, 3)
        _assert_same_state(opt, resumed, rtol=0, atol=0)


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_state_dict_with_plain_number_step_and_a_dtype_cast(info):
    """Older checkpoints and other libraries store `step` as a number; a checkpoint may be
    loaded into parameters of another dtype (torch casts floating state to it)."""
    model, loss_fn = _problem(torch.float32)
    opt = info.optim_cls(_groups(model), lr=0.01)
    _train(opt, loss_fn, 2)
    state = copy.deepcopy(opt.state_dict())
    for st in state["state"].values():
        st["step"] = float(st["step"])
    twin, twin_loss = _problem(torch.float64)
    resumed = info.optim_cls(_groups(twin), lr=0.01)
    resumed.load_state_dict(state)
    for st in resumed.state.values():
        assert st["step"].device.type == "cpu" and st["step"].dtype == torch.float32
        assert all(v.dtype == torch.float64 for k, v in st.items() if k != "step")
    _train(resumed, twin_loss, 2)
    assert all(float(st["step"]) == 4 for st in resumed.state.values())


@pytest.mark.parametrize("info", INFOS, ids=_id)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_keep_every_option_and_continue_identically(info, how):
    for config in _configs(info):
        model, loss_fn = _problem()
        opt = info.optim_cls(_groups(model), **_kwargs(config))
        _train(opt, loss_fn, 2)
        if how == "deepcopy":
            twin_model, twin_opt = copy.deepcopy((model, opt))
        else:
            twin_model, twin_opt = pickle.loads(pickle.dumps((model, opt)))
        public = {k for k in vars(opt) if not k.startswith("_")}
        assert public == {k for k in vars(twin_opt) if not k.startswith("_")}
        for key in ("beta_scope", "plane_bias", "nonfinite", "foreach", "fused", "maximize"):
            assert getattr(twin_opt, key) == getattr(opt, key), key
        x = torch.randn(8, 5, dtype=torch.float64)
        for m, o in ((model, opt), (twin_model, twin_opt)):
            for _ in range(2):
                o.zero_grad()
                (m(x) - 0.3).pow(2).sum().backward()
                o.step()
        _assert_same_state(opt, twin_opt, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_state_dict_records_the_options(info):
    opt = info.optim_cls(nn.Linear(2, 2).parameters(), beta_scope="per-tensor", maximize=True)
    group = opt.state_dict()["param_groups"][0]
    assert group["beta_scope"] == "per-tensor" and group["maximize"] is True
    other = info.optim_cls(nn.Linear(2, 2).parameters())
    with pytest.raises(ValueError, match="beta_scope='per-tensor'"):
        other.load_state_dict(opt.state_dict())  # a different method: said, not silent


# ---------------------------------------------------------------- the math against torch's


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_complex_params_step_as_their_real_view(info):
    for config in _configs(info, torch.complex128):
        torch.manual_seed(0)
        z = nn.Parameter(torch.randn(3, 2, dtype=torch.complex128))
        r = nn.Parameter(torch.view_as_real(z.detach()).clone())
        oz = info.optim_cls([z], **_kwargs(config))
        orr = info.optim_cls([r], **_kwargs(config))
        target = torch.randn(3, 2, dtype=torch.complex128)
        for _ in range(4):
            for p, o in ((z, oz), (r, orr)):
                o.zero_grad()
                value = p if p.is_complex() else torch.view_as_complex(p)
                ((value - target).abs().pow(2).sum() + value.real.sin().sum()).backward()
                o.step()
        torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_tensor_lr_is_the_same_as_a_float_lr(info):
    runs = []
    # an fp64 tensor: the scheduler's arithmetic on it is then the float's
    for lr in (0.02, torch.tensor(0.02, dtype=torch.float64)):
        model, loss_fn = _problem()
        opt = info.optim_cls(_groups(model), lr=lr)
        scheduler = sched.ExponentialLR(opt, gamma=0.8)
        for _ in range(4):
            _train(opt, loss_fn, 1)
            scheduler.step()
        runs.append(opt)
    _assert_same_state(*runs, rtol=0, atol=0)


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_maximize_is_minimize_of_the_negation(info):
    runs = []
    for maximize in (False, True):
        model, loss_fn = _problem()
        opt = info.optim_cls(_groups(model), lr=0.02, weight_decay=0.01, maximize=maximize)
        _train(opt, (lambda f: (lambda: -f()) if maximize else f)(loss_fn), 5)
        runs.append(opt)
    _assert_same_state(*runs, rtol=0, atol=0)


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_foreach_matches_the_single_tensor_loop_on_the_full_state(info):
    for config in _configs(info):
        kwargs = {k: v for k, v in _kwargs(config).items() if k != "foreach"}
        runs = []
        for foreach in (False, True):
            model, loss_fn = _problem()
            opt = info.optim_cls(_groups(model), foreach=foreach, **copy.deepcopy(kwargs))
            _train(opt, loss_fn, 6)
            runs.append(opt)
        _assert_same_state(*runs, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- using it like torch.optim


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_every_torch_lr_scheduler_drives_it(info):
    for (make,) in info.scheduler_inputs:
        for lr in (0.02, torch.tensor(0.02)):
            model, loss_fn = _problem()
            opt = info.optim_cls(_groups(model), lr=lr)
            scheduler = make(opt)
            losses = []
            for _ in range(12):
                losses += _train(opt, loss_fn, 1)
                if isinstance(scheduler, sched.ReduceLROnPlateau):
                    scheduler.step(losses[-1])
                else:
                    scheduler.step()
            assert all(torch.isfinite(torch.tensor(losses)))
            assert losses[-1] < losses[0], type(scheduler).__name__


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_hooks_run_around_step_and_state_dict(info):
    model, loss_fn = _problem()
    opt = info.optim_cls(_groups(model), lr=0.01)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    _train(opt, loss_fn, 1)
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "sd_pre", "sd_post", "load_pre", "load_post"]


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_add_param_group_after_steps(info):
    model, loss_fn = _problem()
    opt = info.optim_cls([{"params": list(model[0].parameters())}], lr=0.01)
    _train(opt, loss_fn, 2)
    frozen_before = [p.detach().clone() for p in model[2].parameters()]
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.02})
    assert opt.param_groups[1]["beta_scope"] == opt.param_groups[0]["beta_scope"]
    _train(opt, loss_fn, 2)
    assert all(not torch.equal(p, q) for p, q in zip(model[2].parameters(), frozen_before))
    with pytest.raises(ValueError, match="beta_scope differs"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "beta_scope": "per-tensor"})


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_zero_grads_and_missing_grads_leave_params_alone(info):
    for config in _configs(info):
        kwargs = {**_kwargs(config), "weight_decay": 0.0}
        p = nn.Parameter(torch.randn(5, 1, dtype=torch.float64))
        untouched = nn.Parameter(torch.randn(3, dtype=torch.float64))
        before = (p.detach().clone(), untouched.detach().clone())
        opt = info.optim_cls([p, untouched], **kwargs)
        for _ in range(3):
            p.grad = torch.zeros_like(p)
            opt.step()
        assert torch.equal(p, before[0]) and torch.equal(untouched, before[1])
        assert untouched not in opt.state  # no gradient: no state


@pytest.mark.parametrize("info", INFOS, ids=_id)
def test_error_inputs_raise_clear_errors(info):
    for error in info.optim_error_inputs_func(device=CPU, dtype=torch.float32):
        config = error.optimizer_error_input
        assert error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
        params = config.params
        if params is None:
            params = [nn.Parameter(torch.randn(2, 2))]
        expected = pytest.warns if issubclass(error.error_type, Warning) else pytest.raises
        with expected(error.error_type, match=error.error_regex):
            info.optim_cls(params, **config.kwargs)
