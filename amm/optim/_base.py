"""Machinery shared by the AM optimizers: options, param groups, the choice of implementation,
non-finite gradients, sharded parameters, and beta (scope, all-reduce, formula).

A step chooses its implementation once: "single" (one tensor at a time, the reference),
"foreach" (multi-tensor ops) or "fused" (two Triton passes, see _triton.py). The subclass's
functional core (`am_sgd`, `am_adamw`) runs that branch; every branch has the same signature
and calls back into this class through `StepServices` for the two things that are not
elementwise: the non-finite check and the betas. A branch:
  1. prepares the effective gradients (AM-SGD: coupled weight decay) or the metric
     (AM-AdamW: the new second moment and 1 / (sqrt(v) + eps));
  2. hands `StepServices.betas` a function giving, per tensor, the sums
     [<g + lam d, g - d>, ||g - d||^2, <g, d>, <g, x>] in the metric (fp32; fp64 for fp64);
     this class reduces them over the scope (`amm.optim.beta.reduce_scope`), all-reduces them
     once when the parameters are shards, and applies the formula (`unit_betas`);
  3. updates momentum and parameters with the per-tensor beta.
Nothing in `step()` reads a device value on the host, except the non-finite check
(`nonfinite="raise"|"skip"`, one boolean per step; `nonfinite="off"` removes it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from amm.optim._tensors import (
    Beta,
    closure_loss,
    common_sum_dtype,
    local,
    per_tensor,
    restart_mask,
    squared_norms,
    sum_dtype,
)
from amm.optim.beta import BETA_SCOPES, reduce_scope, unit_betas

if TYPE_CHECKING:
    from typing_extensions import Unpack

PLANE_BIASES = ("linear", "exact")
NONFINITE_POLICIES = ("raise", "skip", "off")
# Options of the whole optimizer, with their defaults (the one list of them; their types:
# `GroupOptions`). They live in `defaults` and every param group (as torch's flags do), so
# state_dict() records them and deepcopy/pickle keep them; they must agree across groups.
OPTION_DEFAULTS: dict[str, Any] = {
    "beta_scope": "global",
    "plane_bias": "linear",
    "nonfinite": "raise",
    "foreach": None,
    "fused": None,
    "maximize": False,
}
OPTIMIZER_OPTIONS = tuple(OPTION_DEFAULTS)
# Implementation options: None in a group means no preference.
_IMPL_OPTIONS = ("foreach", "fused")
# Options that change the math: a checkpoint must have been saved with the same values.
_MATH_OPTIONS = ("beta_scope", "plane_bias", "maximize")
# Group options that define the single beta of the global scope: they must agree across groups
# (lam may differ: docs/algorithm.md, section 4).
_GLOBAL_BETA_OPTIONS = ("beta_min", "beta_max", "restart_below", "frozen_beta")
# Run-time values kept in each param group, so that state_dict() carries them (a schedule's
# previous lr and the previous loss, for the plane bias); torch's schedulers keep
# `initial_lr` there for the same reason.
_RUNTIME_GROUP_KEYS = ("prev_lr", "prev_loss")
# How many parameters a non-finite gradient error names (then the count).
_NAMES_SHOWN = 3

Impl = Literal["single", "foreach", "fused"]


class GroupOptions(TypedDict, total=False):
    """The options kept in every param group (defaults: `OPTION_DEFAULTS`)."""

    beta_scope: str
    plane_bias: str
    nonfinite: str
    foreach: bool | None
    fused: bool | None
    maximize: bool


class OptimizerOptions(GroupOptions, total=False):
    """The keyword options of the whole optimizer that every AM class takes (declared once
    here, documented in `AMSGD`; defaults: `OPTION_DEFAULTS` and
    `AdaptiveMemoryOptimizer.__init__`'s)."""

    differentiable: bool
    capturable: bool
    process_group: Any


class NonFiniteGradientError(RuntimeError):
    """A gradient holds inf or NaN; the step was not applied and no state was changed."""


@dataclass
class StepTensors:
    """The tensors of one step, flattened over groups (only parameters that have a gradient)."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    where: list[tuple[int, int]] = field(default_factory=list)  # (group, index): error messages
    # ||grad||^2 per tensor, when the non-finite check or fused pass 1 computed it
    grad_sq: Tensor | None = None
    # the tensors are shards: per-tensor sums are partial until the all-reduce over this group
    reduce_group: Any = None

    @property
    def sharded(self) -> bool:
        return self.reduce_group is not None


# Per-tensor sums for the tensors at the given positions: rows [cross, gap_sq, <g,d>, <g,x>...]
SumsFn = Callable[[list[int]], Tensor]


@dataclass
class StepServices:
    """What a functional core needs from its optimizer.

    grads_finite: the non-finite check (raises, or False: skip the step; True when disabled).
    betas: each tensor's beta (None: first step; float: frozen; 0-dim tensor: adaptive) from
        a function giving the per-tensor sums of the adaptive tensors.
    scratch: temporaries shaped like a list of tensors (kept between steps on the CPU).
    kernels: the optimizer's fused kernels (fused=True), else None.
    cache: the core's run-time values, kept between steps but never saved (AM-SGD: which
        momentum buffers its kept ||d||^2 belongs to).
    """

    grads_finite: Callable[[StepTensors], bool]
    betas: Callable[[StepTensors, SumsFn], list[Beta]]
    scratch: Callable[[str, list[Tensor]], list[Tensor]]
    kernels: Any
    cache: dict[Any, Any]

    def fused_sums(
        self, ts: StepTensors, tensors: list[list[Tensor]], hyper: Tensor, with_decay: bool
    ) -> Tensor | None:
        """Pass 1 of a fused step: the kernels' per-tensor sums, whose column 4 (||grad||^2)
        serves the non-finite check; None when that check skips the step (pass 1 only reads:
        the state is untouched)."""
        raw = self.kernels.sums(tensors, hyper, with_decay)
        ts.grad_sq = raw[:, 4]
        return raw if self.grads_finite(ts) else None


# A functional core: one step of an optimizer's math on gathered tensors; False if skipped.
StepFn = Callable[[StepTensors, list[dict[str, Any]], StepServices, Impl], bool]


def check_lr(lr: Any, owner: str) -> None:
    """torch's rules for lr: a number or a 1-element tensor, >= 0 (NaN is rejected)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{owner}: Tensor lr must be 1-element (got shape {list(lr.shape)})")
        value = float(lr.detach().reshape(()).item())
    elif isinstance(lr, (int, float)) and not isinstance(lr, bool):
        value = float(lr)
    else:
        raise ValueError(f"{owner}: invalid lr={lr!r}: must be a float >= 0 or a 1-element Tensor")
    if not value >= 0.0:  # also NaN
        raise ValueError(f"{owner}: invalid lr={lr!r}: must be a float >= 0")


def check_options(group: dict[str, Any], owner: str) -> None:
    """Raise ValueError naming the first invalid optimizer option (see OPTIMIZER_OPTIONS)."""
    if group["fused"] and group["foreach"]:
        raise ValueError(f"{owner}: fused=True and foreach=True cannot be set together")
    scope, bias, nonfinite = group["beta_scope"], group["plane_bias"], group["nonfinite"]
    if scope not in BETA_SCOPES:
        raise ValueError(f"{owner}: invalid beta_scope={scope!r}; use one of {BETA_SCOPES}")
    if bias not in PLANE_BIASES:
        raise ValueError(f"{owner}: invalid plane_bias={bias!r}; use one of {PLANE_BIASES}")
    if bias == "exact" and scope != "global":
        raise ValueError(
            f"{owner}: plane_bias='exact' uses the loss, a global quantity; "
            f"it needs beta_scope='global' (got {scope!r})"
        )
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"{owner}: invalid nonfinite={nonfinite!r}; use one of {NONFINITE_POLICIES}"
        )


def check_common_hparams(group: dict[str, Any], owner: str) -> None:
    """Raise ValueError naming the first invalid hyper-parameter of a param group."""

    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"{owner}: invalid {name}={group[name]!r}: {why}")

    check_lr(group["lr"], owner)
    if group["weight_decay"] < 0:
        raise bad("weight_decay", "must be >= 0")
    if group["lam"] < 0:
        raise bad("lam", "must be >= 0 (the paper uses 0.1)")
    if not 0.0 <= group["beta_max"] <= 1.0:
        raise bad("beta_max", "must be in [0, 1] (the paper uses 0.9)")
    if not 0.0 <= group["beta_min"] <= group["beta_max"]:
        raise bad("beta_min", f"must be in [0, beta_max={group['beta_max']}]")
    rb = group["restart_below"]
    if rb is not None and not 0.0 <= rb <= 1.0:
        raise bad("restart_below", "must be None or in [0, 1]")
    fb = group["frozen_beta"]
    if fb is not None and not 0.0 <= fb <= 1.0:
        raise bad("frozen_beta", "must be None or in [0, 1]")


def has_history(state: dict[str, Any]) -> bool:
    """The tensor has taken a step, so it has a momentum to weigh."""
    return state["step"].item() > 0  # a CPU tensor (load_state_dict keeps it there): no sync


def _number(value: Any) -> float:
    """A hyper-parameter that may be a 1-element tensor (torch's tensor lr) as a float."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _real(t: Tensor) -> Tensor:
    """Complex tensors as real tensors of (re, im) pairs: the steps and the beta formula then
    use the real inner product Re <a, b> (docs/algorithm.md, section 5), as torch does."""
    return torch.view_as_real(t) if t.is_complex() else t


def restarts(
    beta: Tensor, betas: list[Beta], groups: list[dict[str, Any]], gids: list[int]
) -> Tensor | None:
    """The Restart variant (momentum <- gradient) for each tensor of `beta`: where an adaptive
    beta falls below its group's `restart_below`. None when no tensor can restart."""
    thresholds = [
        groups[g]["restart_below"] if isinstance(b, Tensor) else None for g, b in zip(gids, betas)
    ]
    return restart_mask(beta, thresholds)


class AdaptiveMemoryOptimizer(Optimizer):
    """Base class; see the module docstring. Subclasses set `functional` (their core), and
    implement `_init_state` and `_state_tensors`."""

    functional: StepFn
    _fused_kernels: Any  # the optimizer's fused kernels (fused=True), else None
    # AM-AdamW: the plane bias includes the decoupled decay term wd <g, x>
    decoupled_decay = False
    # AM-SGD: weight decay is part of the gradient, so the exact plane bias includes wd/2 ||x||^2
    coupled_decay = False
    # Scalar state kept in the sums' dtype (fp32 for bf16/fp16 parameters). torch's
    # load_state_dict casts floating state to the parameter's dtype; these keys are restored.
    _sum_state_keys: tuple[str, ...] = ()

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        differentiable: bool = False,
        capturable: bool = False,
        process_group: Any = None,
        **group_options: Unpack[GroupOptions],
    ) -> None:
        name = type(self).__name__
        unknown = sorted(set(group_options) - set(OPTION_DEFAULTS))
        if unknown:  # **group_options takes any name: refuse the unknown ones, as Python would
            raise TypeError(f"{name}.__init__() got unexpected keyword arguments {unknown}")
        if differentiable:
            raise NotImplementedError(
                f"{name}: differentiable=True is not supported (beta comes from reductions "
                "of the state under no_grad); use differentiable=False"
            )
        if capturable:
            raise NotImplementedError(
                f"{name}: capturable=True is not supported: the step reads its bookkeeping "
                "(step counts, learning rates) on the host, so it cannot be captured in a "
                "CUDA graph; use capturable=False"
            )
        check_lr(defaults["lr"], name)  # before torch reads the params, as torch does
        options: dict[str, Any] = {**OPTION_DEFAULTS, **group_options}
        options["maximize"] = bool(options["maximize"])
        check_options(options, name)
        self.process_group = process_group
        self._init_runtime()
        super().__init__(params, {**defaults, **options})
        # created here, not in step(): torch.compile would trace the creation and lose it
        if self.fused:
            self._fused_kernels = self._make_kernels()

    def _init_runtime(self) -> None:
        """Values that live only in this process: caches, warnings given, the last beta."""
        self._fused_kernels = None
        self._fused_fallbacks: set[str] = set()  # why fused steps fell back to foreach (warned)
        self._last_beta: Tensor | None = None
        self._scratch_cache: dict[str, list[Tensor]] = {}
        self._core_cache: dict[Any, Any] = {}

    # torch's Optimizer pickles only defaults, state and param_groups (the options are in
    # them); the process group (the environment, like a DTensor's mesh) is kept as well.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["process_group"] = self.process_group
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("process_group", None)
        if "_scratch_cache" not in self.__dict__:
            self._init_runtime()
        for group in self.param_groups:  # checkpoints from before the options were saved
            for key in OPTIMIZER_OPTIONS:
                group.setdefault(key, self.defaults[key])
            for key in _RUNTIME_GROUP_KEYS:
                group.setdefault(key, None)
        if self.param_groups and self.fused and self._fused_kernels is None:
            self._fused_kernels = self._make_kernels()

    # ---- the options (one value for all groups) --------------------------------------------
    def _option(self, key: str) -> Any:
        groups = self.__dict__.get("param_groups")
        if not groups:
            return self.defaults[key]
        if key in _IMPL_OPTIONS:  # None: no preference; the groups that set it agree
            return next((g[key] for g in groups if g[key] is not None), None)
        return groups[0][key]

    @property
    def beta_scope(self) -> str:
        return str(self._option("beta_scope"))

    @property
    def plane_bias(self) -> str:
        return str(self._option("plane_bias"))

    @property
    def nonfinite(self) -> str:
        return str(self._option("nonfinite"))

    @property
    def foreach(self) -> bool | None:
        value = self._option("foreach")
        return None if value is None else bool(value)

    @property
    def fused(self) -> bool:
        return bool(self._option("fused"))

    @property
    def maximize(self) -> bool:
        return bool(self._option("maximize"))

    def _make_kernels(self) -> Any:
        """The optimizer's fused kernels (a `amm.optim._triton.Launcher`)."""
        raise NotImplementedError(f"{type(self).__name__} has no fused implementation")

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        """The per-element state the fused passes read and write (momentum, ...)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, and: the checkpoint's math options (beta_scope, plane_bias,
        maximize) must match this optimizer's (a clear error, not a silently different
        method); its implementation options (nonfinite, foreach, fused) give way to this
        optimizer's, which belong to the machine and run that loads it."""
        name = type(self).__name__
        for saved_group in state_dict["param_groups"]:
            for key in _MATH_OPTIONS:
                if key in saved_group and saved_group[key] != self._option(key):
                    raise ValueError(
                        f"{name}.load_state_dict: the checkpoint was saved with "
                        f"{key}={saved_group[key]!r}, this optimizer has "
                        f"{key}={self._option(key)!r}; construct it with the checkpoint's "
                        f"{key} to continue that run"
                    )
        mine = {key: self._option(key) for key in OPTIMIZER_OPTIONS}
        saved = state_dict["state"]
        saved_ids = [g["params"] for g in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.update(mine)
        for group, ids in zip(self.param_groups, saved_ids):
            for p, pid in zip(group["params"], ids):
                if p not in self.state:
                    continue
                state = self.state[p]
                for key in self._sum_state_keys:
                    value = saved.get(pid, {}).get(key)
                    if isinstance(value, Tensor):
                        state[key] = value.to(p.device, sum_dtype(p), copy=True)
                # the step count is a CPU float tensor (read on the host without a sync); older
                # checkpoints and other libraries write a plain number, and torch moves it to
                # the parameter's device for groups with fused=True
                if "step" in state:
                    step = state["step"]
                    step = step.item() if isinstance(step, Tensor) else step
                    state["step"] = torch.tensor(float(step))
                self._loaded_state(p, state)
        self._check_all_groups()

    def _loaded_state(self, param: Tensor, state: dict[str, Any]) -> None:
        """A subclass's fix-ups of one parameter's state after load_state_dict."""

    # The trainer passes a closure (forward + backward on the current batch) when this is set.
    @property
    def needs_closure(self) -> bool:
        return self.plane_bias == "exact"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            check_lr(param_group["lr"], type(self).__name__)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for key in _RUNTIME_GROUP_KEYS:
            group.setdefault(key, None)
        self._check_group(group)
        check_options(group, type(self).__name__)
        self._check_across_groups(group)

    def _check_across_groups(self, group: dict[str, Any]) -> None:
        name, first = type(self).__name__, self.param_groups[0]
        for key in OPTIMIZER_OPTIONS:
            if key in _IMPL_OPTIONS and group[key] is None:
                continue
            mine = self._option(key) if key in _IMPL_OPTIONS else first[key]
            if group[key] != mine:
                raise ValueError(
                    f"{name}: {key} differs between param groups ({mine!r} vs "
                    f"{group[key]!r}); it is an option of the whole optimizer: set it once"
                )
        if first["beta_scope"] == "global":
            for key in _GLOBAL_BETA_OPTIONS:
                if group[key] != first[key]:
                    raise ValueError(
                        f"{name}: {key} differs between param groups "
                        f"({first[key]!r} vs {group[key]!r}); with beta_scope='global' one beta "
                        "is shared by all groups, so use beta_scope='per-group' instead"
                    )

    def _check_all_groups(self) -> None:
        for group in self.param_groups:
            self._check_group(group)
            check_options(group, type(self).__name__)
            self._check_across_groups(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_common_hparams(group, type(self).__name__)

    # ---- what a trainer reads -------------------------------------------------------------
    @property
    def last_beta(self) -> Tensor | None:
        """Beta of the last adaptive step, on the device: shape [1] (global), [groups] or
        [tensors]; None before the first adaptive step."""
        return self._last_beta

    def beta_stats(self) -> dict[str, Tensor]:
        """0-dim device tensors to log (no host sync here): beta, plus min/max for scoped betas."""
        beta = self._last_beta
        if beta is None:
            return {}
        if beta.numel() == 1:
            return {"beta": beta.reshape(())}
        return {"beta": beta.mean(), "beta_min": beta.min(), "beta_max": beta.max()}

    def scratch(self, name: str, like: list[Tensor]) -> list[Tensor]:
        """Temporaries shaped like `like`. On the CPU they are kept between steps, because fresh
        large allocations there cost page faults (as much as the arithmetic); on accelerators the
        caching allocator already reuses memory, so they are allocated per step and freed."""
        if not like or like[0].device.type != "cpu":
            return [torch.empty_like(t) for t in like]
        cached = self._scratch_cache.get(name)
        if (
            cached is None
            or len(cached) != len(like)
            or any(c.shape != t.shape or c.dtype != t.dtype for c, t in zip(cached, like))
        ):
            cached = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]
            self._scratch_cache[name] = cached
        return cached

    # ---- the step ----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure_loss(closure)
        if self.plane_bias == "exact" and loss is None:
            raise ValueError(
                f"{type(self).__name__}(plane_bias='exact') needs the loss: call "
                "optimizer.step(closure) with a closure that recomputes the loss and gradients"
            )
        ts = self._gather()
        if not ts.params:
            return loss
        ts.reduce_group = self._reduce_group(ts)
        impl = self._choose_impl(ts)  # the one decision of this step
        # the cores read plain numbers: a tensor lr (torch allows one) is read once here
        groups = [{**g, "lr": _number(g["lr"])} for g in self.param_groups]
        objective = self._objective(ts, groups, loss)

        def betas(ts: StepTensors, sums: SumsFn) -> list[Beta]:
            return self._betas(ts, groups, sums, objective)

        services = StepServices(
            self._grads_finite, betas, self.scratch, self._fused_kernels, self._core_cache
        )
        if not type(self).functional(ts, groups, services, impl):
            return loss  # nonfinite="skip": nothing changed
        torch._foreach_add_([st["step"] for st in ts.states], 1.0)
        for group, used in zip(self.param_groups, groups):
            group["prev_lr"] = used["lr"]
            if objective is not None:
                group["prev_loss"] = objective.clone()
        return loss

    def _objective(
        self, ts: StepTensors, groups: list[dict[str, Any]], loss: Tensor | None
    ) -> Tensor | None:
        """The value of the function the gradient belongs to, for the exact plane bias (None
        for the linear one): the loss, negated with maximize, plus the coupled weight decay
        sum_g wd_g / 2 ||x_g||^2 (AM-SGD; docs/algorithm.md, section 2)."""
        if self.plane_bias != "exact" or loss is None:
            return None
        value = loss.detach().reshape(())
        value = -value if self.maximize else value
        if not self.coupled_decay or all(g["weight_decay"] == 0 for g in groups):
            return value
        decayed = [i for i, gid in enumerate(ts.group_ids) if groups[gid]["weight_decay"] != 0]
        if decayed:
            sq = squared_norms([ts.params[i] for i in decayed])
            wd = per_tensor(
                [groups[ts.group_ids[i]]["weight_decay"] for i in decayed], sq.device, sq.dtype
            )
            reg = (wd / 2 * sq).sum().to(common_sum_dtype(ts.params))
        else:  # the decayed groups have no gradients here (another rank may have some)
            reg = torch.zeros((), dtype=common_sum_dtype(ts.params), device=value.device)
        if ts.reduce_group is not None:  # shards: the norms are partial
            dist.all_reduce(reg, group=ts.reduce_group)
        return value.to(reg.dtype) + reg.to(value.device)

    def _gather(self) -> StepTensors:
        ts = StepTensors()
        maximize = self.maximize
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    name = self._param_name(gi, pi)
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients "
                        f"(parameter {name}); use dense gradients, e.g. nn.Embedding(sparse=False)"
                    )
                state = self.state[p]
                if not state:
                    self._init_state(_real(p), state)
                grad = _real(local(p.grad))
                ts.params.append(_real(local(p)))
                ts.grads.append(-grad if maximize else grad)
                ts.states.append(state)
                ts.group_ids.append(gi)
                ts.where.append((gi, pi))
        return ts

    def _param_name(self, gi: int, pi: int) -> str:
        group = self.param_groups[gi]
        names = group.get("param_names")
        name = names[pi] if names else f"param_groups[{gi}]['params'][{pi}]"
        return f"{name} (shape {list(group['params'][pi].shape)})"

    def _choose_impl(self, ts: StepTensors) -> Impl:
        """fused=True where the kernels run (CUDA with Triton, dense fp32/bf16/fp16 tensors);
        elsewhere (CPU, no Triton, fp64, ...) foreach, with a warning once per reason.
        foreach=None means foreach (outside TorchScript)."""
        if self.fused:
            from amm.optim._triton import unsupported_reason

            reason = unsupported_reason(
                [
                    (p, g, *(local(t) for t in self._state_tensors(st)))
                    for p, g, st in zip(ts.params, ts.grads, ts.states)
                ]
            )
            if reason is None:
                return "fused"
            if reason not in self._fused_fallbacks:  # say it once, not every step
                self._fused_fallbacks.add(reason)
                warnings.warn(
                    f"{type(self).__name__}(fused=True): {reason}; these steps use the foreach "
                    "implementation (the same math)",
                    stacklevel=4,
                )
            return "foreach"
        if self.foreach is not None:
            return "foreach" if self.foreach else "single"
        return "single" if torch.jit.is_scripting() else "foreach"

    def _reduce_group(self, ts: StepTensors) -> Any:
        if self.process_group is not None:
            return self.process_group
        for p in ts.params:
            mesh = getattr(p, "device_mesh", None)
            if mesh is not None:
                return mesh.get_group()
        for group in self.param_groups:
            for p in group["params"]:
                mesh = getattr(p, "device_mesh", None)
                if mesh is not None:
                    return mesh.get_group()
        return None

    def _grads_finite(self, ts: StepTensors) -> bool:
        """One boolean read on the host; raises or tells the caller to skip the step."""
        if self.nonfinite == "off":
            return True
        if ts.grad_sq is None:  # the fused pass 1 computes it on the way
            ts.grad_sq = squared_norms(ts.grads)
        bad = ~torch.isfinite(ts.grad_sq)
        any_bad = bad.any().float()
        if ts.reduce_group is not None:
            dist.all_reduce(any_bad, group=ts.reduce_group)
        if not bool(any_bad):
            return True
        if self.nonfinite == "skip":
            return False
        positions = torch.nonzero(bad).flatten().tolist()
        names = [self._param_name(*ts.where[i]) for i in positions[:_NAMES_SHOWN]]
        if not names:
            where = "a parameter shard on another rank"
        elif len(positions) > len(names):
            where = f"{len(positions)} parameters, among them {', '.join(names)}"
        else:
            where = ", ".join(names)
        raise NonFiniteGradientError(
            f"{type(self).__name__}: non-finite gradient in {where}; the step was not applied. "
            "Lower the learning rate, use gradient clipping or AMP's GradScaler, or pass "
            "nonfinite='skip' to skip such steps."
        )

    def _betas(
        self,
        ts: StepTensors,
        groups: list[dict[str, Any]],
        sums: SumsFn,
        objective: Tensor | None,
    ) -> list[Beta]:
        """Per tensor: a frozen float, a 0-dim device tensor, or None (no history: first step).
        `objective`: the function value for the exact plane bias (see `_objective`)."""
        history = [i for i, st in enumerate(ts.states) if has_history(st)]
        beta: list[Beta] = [None] * len(ts.params)
        frozen = [groups[g]["frozen_beta"] for g in ts.group_ids]
        adaptive = [i for i in history if frozen[i] is None]
        for i in history:
            if frozen[i] is not None:
                beta[i] = float(frozen[i])
        if not adaptive:
            return beta

        rows = sums(adaptive)  # [n, >= 4]: cross, gap_sq, <g,d>, <g,x>
        device, dtype = rows.device, rows.dtype
        gids = [ts.group_ids[i] for i in adaptive]
        eta = per_tensor([groups[g]["lr"] for g in gids], device, dtype)
        # the previous step's rate, 0 included (a warmup from 0 did not move x: b = 0); only a
        # group without one (no step yet) takes its current rate
        prev = [groups[g]["prev_lr"] for g in gids]
        eta_prev = per_tensor(
            [groups[g]["lr"] if p is None else _number(p) for g, p in zip(gids, prev)],
            device,
            dtype,
        )
        g_dot_d = rows[:, 2]
        if self.decoupled_decay:
            wd = per_tensor([groups[g]["weight_decay"] for g in gids], device, dtype)
            g_dot_d = g_dot_d + wd * rows[:, 3]
        # exact: f(x_{t-1}) - f(x_t) is added after the reduction (it is global already);
        # without a previous loss (e.g. an old checkpoint) fall back to the first-order bias
        exact = self.plane_bias == "exact" and groups[0]["prev_loss"] is not None
        plane = torch.zeros_like(g_dot_d) if exact else eta_prev * g_dot_d
        lams = [groups[g]["lam"] for g in gids]
        mixed_lam = self.beta_scope == "global" and len(set(lams)) > 1
        if mixed_lam:  # one dual over groups with their own lam: weights eta_g / (1 + lam_g)
            eta = eta / (1 + per_tensor(lams, device, dtype))
        weighted = torch.stack([plane, eta * rows[:, 0], eta * rows[:, 1]], dim=1)

        packed, unit_of = reduce_scope(weighted, self.beta_scope, gids)
        if ts.reduce_group is not None:
            dist.all_reduce(packed, group=ts.reduce_group)  # the one collective of a sharded step
        if exact:
            assert objective is not None  # step() checks that there is a loss
            prev_loss = groups[0]["prev_loss"].to(device=device, dtype=dtype)
            packed[:, 0] = prev_loss - objective.to(device=device, dtype=dtype)

        unit_gid = {u: g for u, g in zip(unit_of, gids)}
        settings = [
            (0.0 if mixed_lam else groups[g]["lam"], groups[g]["beta_min"], groups[g]["beta_max"])
            for g in (unit_gid[u] for u in range(packed.shape[0]))
        ]
        unit_beta = unit_betas(packed, settings)
        self._last_beta = unit_beta
        per_unit = unit_beta.unbind()
        for k, i in enumerate(adaptive):
            beta[i] = per_unit[unit_of[k]]
        return beta
