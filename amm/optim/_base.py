"""Machinery shared by the AM optimizers: options, param groups, the choice of implementation,
non-finite gradients, sharded parameters, and beta (scope, all-reduce, formula).

`AdaptiveMemoryOptimizer.step()` runs every step in the same phases, in this order:

  1. gather the tensors that have a gradient, choose the implementation ("single": one tensor
     at a time, the reference; "foreach": multi-tensor ops; "fused": two passes, Triton on
     CUDA (_triton.py) or compiled by torch.compile on the CPU (_compiled.py)), and read each param group's hyper-parameters once into typed values
     (`GroupHyper`; the cores read nothing from the groups);
  2. the non-finite check, before anything is written (the fused pass 1 only reads, and gives
     the gradient norms on the way);
  3. `core.prepare()`: the optimizer's elementwise preliminaries (AM-SGD: coupled weight decay;
     AM-AdamW: the new second moment and its metric);
  4. beta: `core.sums(members)` gives per tensor [b / eta_{t-1}, cross, gap] in the optimizer's
     metric (fp32; fp64 for fp64); this class reduces them over the scope
     (`amm.optim.beta.reduce_scope`), all-reduces them once when the parameters are shards, and
     applies the one formula (`unit_betas`);
  5. `core.update(beta)`: momentum and parameters with each tensor's beta.

The core (`StepCore`) is one class per optimizer, made fresh each step from the tensors, the
typed hyper-parameters and the implementation; its three phases branch on the implementation.
Nothing in `step()` reads a device value on the host, except the non-finite check
(`nonfinite="raise"|"skip"`, one boolean per step; `nonfinite="off"` removes it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypedDict

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
    squared_norms,
    sum_dtype,
)
from amm.optim.beta import BETA_SCOPES, reduce_scope, unit_betas

if TYPE_CHECKING:
    from typing_extensions import Self

PLANE_BIASES = ("linear", "exact")
NONFINITE_POLICIES = ("raise", "skip", "off")
# Options of the whole optimizer, with their defaults (the list every AM class shares; a class
# adds its own in `options`; their types: `GroupOptions`). They live in `defaults` and every
# param group (as torch's flags do), so state_dict() records them and deepcopy/pickle keep
# them; they must agree across groups.
OPTION_DEFAULTS: dict[str, Any] = {
    "beta_scope": "global",
    "plane_bias": "linear",
    "nonfinite": "raise",
    "foreach": None,
    "fused": None,
    "maximize": False,
}
# The dtypes of the fused step (others fall back to foreach).
_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Implementation options: None in a group means no preference.
_IMPL_OPTIONS = ("foreach", "fused")
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


def _number(value: Any) -> float:
    """A hyper-parameter that may be a 1-element tensor (torch's tensor lr) as a float."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


@dataclass(frozen=True)
class GroupHyper:
    """One param group's hyper-parameters for one step, read once by `step()` (`read`): the
    cores and the beta formula take them from here, never from the group dicts."""

    lr: float
    prev_lr: float | None  # the rate of the group's previous step (None: no step yet)
    lam: float
    weight_decay: float
    beta_min: float
    beta_max: float
    restart_below: float | None
    frozen_beta: float | None

    @classmethod
    def read(cls, group: dict[str, Any]) -> Self:
        return cls(**cls.values(group))

    @classmethod
    def values(cls, group: dict[str, Any]) -> dict[str, Any]:
        """The fields from a param group (a subclass adds its own)."""
        prev, rb, fb = group.get("prev_lr"), group["restart_below"], group["frozen_beta"]
        return dict(
            lr=_number(group["lr"]),
            prev_lr=None if prev is None else _number(prev),
            lam=float(group["lam"]),
            weight_decay=float(group["weight_decay"]),
            beta_min=float(group["beta_min"]),
            beta_max=float(group["beta_max"]),
            restart_below=None if rb is None else float(rb),
            frozen_beta=None if fb is None else float(fb),
        )


# Group hyper-parameters that define the single beta of the global scope: they must agree
# across groups (lam may differ: docs/algorithm.md, section 4).
_GLOBAL_BETA_FIELDS = ("beta_min", "beta_max", "restart_below", "frozen_beta")


@dataclass
class StepTensors:
    """The tensors of one step, flattened over groups (only parameters that have a gradient)."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    where: list[tuple[int, int]] = field(default_factory=list)  # (group, index): error messages
    # ||grad||^2 per tensor, once the non-finite check (or the fused pass 1) computed it
    grad_sq: Tensor | None = None
    # the tensors are shards: per-tensor sums are partial until the all-reduce over this group
    reduce_group: Any = None

    @property
    def sharded(self) -> bool:
        return self.reduce_group is not None


@dataclass
class StepContext:
    """What a core uses of its optimizer beyond the step's tensors.

    scratch: temporaries shaped like a list of tensors (kept between steps on the CPU).
    kernels: the fused step's kernels (Triton on CUDA, compiled on the CPU), else None.
    cache: the core's run-time values, kept between steps but never saved (AM-SGD: which
        momentum buffers its kept ||d||^2 belongs to).
    options: the optimizer's options (one value for all groups), e.g. AM-AdamW's formulation.
    """

    scratch: Callable[[str, list[Tensor]], list[Tensor]]
    kernels: Any
    cache: dict[Any, Any]
    options: dict[str, Any]


class StepCore(Protocol):
    """One step of an optimizer's math on gathered tensors, in the phases `step()` runs."""

    # a tensor's first step takes the formula's beta (AM-AdamW bounded: d_0 = 0 gives
    # beta_max) instead of none (AM-SGD, AM-AdamW exact: d_0 = g_0 / m_hat_1 = g_1)
    first_step_adaptive: bool

    def grad_norms(self) -> Tensor | None:
        """||grad||^2 per tensor if the core computes them on the way (fused pass 1, which
        only reads), else None: `step()` computes them. Runs before anything is written."""
        ...

    def prepare(self) -> None:
        """Elementwise preliminaries after the non-finite check (may write state)."""
        ...

    def sums(self, members: list[int]) -> Tensor:
        """[len(members), 3]: per tensor b / eta_{t-1} (first order), cross and gap of the beta
        formula (`amm.optim.beta`), in the sums' dtype; reads only."""
        ...

    def update(self, beta: list[Beta]) -> None:
        """Momentum and parameters with each tensor's beta (None: no history, float: frozen,
        0-dim tensor: adaptive)."""
        ...


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


def check_choice(group: dict[str, Any], key: str, choices: tuple[str, ...], owner: str) -> None:
    if group[key] not in choices:
        raise ValueError(f"{owner}: invalid {key}={group[key]!r}; use one of {choices}")


def check_options(group: dict[str, Any], owner: str) -> None:
    """Raise ValueError naming the first invalid shared option (see OPTION_DEFAULTS)."""
    if group["fused"] and group["foreach"]:
        raise ValueError(f"{owner}: fused=True and foreach=True cannot be set together")
    check_choice(group, "beta_scope", BETA_SCOPES, owner)
    check_choice(group, "plane_bias", PLANE_BIASES, owner)
    if group["plane_bias"] == "exact" and group["beta_scope"] != "global":
        raise ValueError(
            f"{owner}: plane_bias='exact' uses the loss, a global quantity; "
            f"it needs beta_scope='global' (got {group['beta_scope']!r})"
        )
    check_choice(group, "nonfinite", NONFINITE_POLICIES, owner)


def check_common_hparams(group: dict[str, Any], owner: str, beta_max: tuple[str, Any]) -> None:
    """Raise ValueError naming the first invalid hyper-parameter of a param group (or of the
    defaults, before torch reads the params). `beta_max`: its name and value in this class
    (AM-AdamW keeps it as betas[0])."""

    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"{owner}: invalid {name}={group[name]!r}: {why}")

    check_lr(group["lr"], owner)
    if group["weight_decay"] < 0:
        raise bad("weight_decay", "must be >= 0")
    if group["lam"] < 0:
        raise bad("lam", "must be >= 0 (the paper uses 0.1)")
    name, top = beta_max
    if not 0.0 <= top <= 1.0:
        raise ValueError(f"{owner}: invalid {name}={top!r}: must be in [0, 1] (the paper uses 0.9)")
    if not 0.0 <= group["beta_min"] <= top:
        raise bad("beta_min", f"must be in [0, {name}={top}]")
    rb = group["restart_below"]
    if rb is not None and not 0.0 <= rb <= 1.0:
        raise bad("restart_below", "must be None or in [0, 1]")
    fb = group["frozen_beta"]
    if fb is not None and not 0.0 <= fb <= 1.0:
        raise bad("frozen_beta", "must be None or in [0, 1]")


def has_history(state: dict[str, Any]) -> bool:
    """The tensor has taken a step, so it has a momentum to weigh."""
    return state["step"].item() > 0  # a CPU tensor (load_state_dict keeps it there): no sync


def real(t: Tensor) -> Tensor:
    """Complex tensors as real tensors of (re, im) pairs: the steps and the beta formula then
    use the real inner product Re <a, b> (docs/algorithm.md, section 5), as torch does."""
    return torch.view_as_real(t) if t.is_complex() else t


def restarts(beta: Tensor, betas: list[Beta], hyper: Sequence[GroupHyper]) -> Tensor | None:
    """The Restart variant for each tensor of `beta` (with its group's `hyper`): where an
    adaptive beta falls below `restart_below`. None when no tensor can restart."""
    thresholds = [
        h.restart_below if isinstance(b, Tensor) and h.restart_below is not None else None
        for h, b in zip(hyper, betas)
    ]
    if all(t is None for t in thresholds):
        return None
    thr = [-float("inf") if t is None else t for t in thresholds]
    return beta < per_tensor(thr, beta.device, beta.dtype)


class AdaptiveMemoryOptimizer(Optimizer):
    """Base class; see the module docstring. A subclass sets `core` (its `StepCore` class),
    `hyper` (its `GroupHyper` class), and implements `_init_state` and `_state_tensors`."""

    core: ClassVar[Callable[..., StepCore]]
    hyper: ClassVar[type[GroupHyper]] = GroupHyper
    # The options of the whole optimizer and their defaults (a subclass may add its own).
    options: ClassVar[dict[str, Any]] = OPTION_DEFAULTS
    # Options that change the math: a checkpoint must have been saved with the same values.
    math_options: ClassVar[tuple[str, ...]] = ("beta_scope", "plane_bias", "maximize")
    # What a checkpoint without an option meant (saved before the option existed); else the
    # default.
    legacy_options: ClassVar[dict[str, Any]] = {}
    # AM-SGD: weight decay is part of the gradient, so the exact plane bias includes wd/2 ||x||^2
    coupled_decay: ClassVar[bool] = False
    # Where this class keeps beta_max (its name in error messages): AM-AdamW's is betas[0].
    beta_max_key: ClassVar[str] = "beta_max"
    # Scalar (0-dim) state kept in the sums' dtype (fp32 for bf16/fp16 parameters). torch's
    # load_state_dict casts floating state to the parameter's dtype; these keys are restored.
    _sum_state_keys: ClassVar[tuple[str, ...]] = ()
    _fused_kernels: Any  # the optimizer's fused kernels (fused=True), else None

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        differentiable: bool = False,
        capturable: bool = False,
        process_group: Any = None,
        **group_options: Any,
    ) -> None:
        name = type(self).__name__
        unknown = sorted(set(group_options) - set(self.options))
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
        options: dict[str, Any] = {**self.options, **group_options}
        options["maximize"] = bool(options["maximize"])
        # every hyper-parameter and option is checked before torch reads the params, as torch
        # does (a bad value is a ValueError naming it, whatever `params` is)
        self._check_group({**defaults, **options})
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
        # steps that nonfinite="skip" left undone in this process: a caller compares it before
        # and after step() to count them, instead of reading every gradient again
        self.nonfinite_skips = 0

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
        for group in [self.defaults, *self.param_groups]:  # pickled before an option existed
            self._upgrade_group(group)
        for group in self.param_groups:
            for key in _RUNTIME_GROUP_KEYS:
                group.setdefault(key, None)
        if self.param_groups and self.fused and self._fused_kernels is None:
            self._fused_kernels = self._make_kernels()

    def _upgrade_group(self, group: dict[str, Any]) -> None:
        """A group saved before some option existed: the value it was saved with."""
        for key, default in self.options.items():
            group.setdefault(key, self.legacy_options.get(key, default))

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

    def _compiled_passes(self) -> Any:
        """The same passes for the CPU (a `amm.optim._compiled.CompiledPasses`)."""
        raise NotImplementedError(f"{type(self).__name__} has no fused implementation")

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        """The per-element state the fused passes read and write (momentum, ...)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, and: the checkpoint's math options (`math_options`: beta
        scope, plane bias, maximize, and a class's own, e.g. AM-AdamW's formulation) must match
        this optimizer's (a clear error, not a silently different method); its implementation
        options (nonfinite, foreach, fused) give way to this optimizer's, which belong to the
        machine and run that loads it."""
        name = type(self).__name__
        for saved_group in state_dict["param_groups"]:
            for key in self.math_options:
                saved = saved_group.get(key, self.legacy_options.get(key))
                if saved is not None and saved != self._option(key):
                    raise ValueError(
                        f"{name}.load_state_dict: the checkpoint was saved with "
                        f"{key}={saved!r}, this optimizer has {key}={self._option(key)!r}; "
                        f"construct it with {key}={saved!r} to continue that run"
                    )
        mine = {key: self._option(key) for key in self.options}
        saved = state_dict["state"]
        saved_ids = [g["params"] for g in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            self._upgrade_group(group)
            group.update(mine)
        for group, ids in zip(self.param_groups, saved_ids):
            for p, pid in zip(group["params"], ids):
                if p not in self.state:
                    continue
                state = self.state[p]
                for key in self._sum_state_keys:
                    value = saved.get(pid, {}).get(key)
                    if isinstance(value, Tensor) and value.dim() == 0:  # per-element: p's dtype
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
        self._check_across_groups(group)

    def _check_across_groups(self, group: dict[str, Any]) -> None:
        name, first = type(self).__name__, self.param_groups[0]
        for key in self.options:
            if key in _IMPL_OPTIONS and group[key] is None:
                continue
            mine = self._option(key) if key in _IMPL_OPTIONS else first[key]
            if group[key] != mine:
                raise ValueError(
                    f"{name}: {key} differs between param groups ({mine!r} vs "
                    f"{group[key]!r}); it is an option of the whole optimizer: set it once"
                )
        if first["beta_scope"] == "global":
            ours, theirs = self.hyper.read(first), self.hyper.read(group)
            for key in _GLOBAL_BETA_FIELDS:
                a, b = getattr(ours, key), getattr(theirs, key)
                if a != b:
                    shown = self.beta_max_key if key == "beta_max" else key
                    raise ValueError(
                        f"{name}: {shown} differs between param groups ({a!r} vs {b!r}); "
                        "with beta_scope='global' one beta is shared by all groups, so use "
                        "beta_scope='per-group' instead"
                    )

    def _check_all_groups(self) -> None:
        for group in self.param_groups:
            self._check_group(group)
            self._check_across_groups(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Every hyper-parameter and option of a param group (or of the defaults)."""
        name = type(self).__name__
        check_common_hparams(group, name, (self.beta_max_key, self._beta_max(group)))
        check_options(group, name)

    def _beta_max(self, group: dict[str, Any]) -> Any:
        return group["beta_max"]

    # ---- what a trainer reads -------------------------------------------------------------
    @property
    def last_beta(self) -> Tensor | None:
        """Beta of the last adaptive step, on the device: shape [1] (global), [groups] or
        [tensors]; None before the first adaptive step."""
        return self._last_beta

    def beta_stats(self) -> dict[str, Tensor]:
        """0-dim device tensors to log (no host sync here): beta, plus min/max for scoped
        betas. Empty until a step has computed an adaptive beta: AM-SGD's first step has no
        momentum to weigh (d_0 = g_0), so its first beta comes with the second step; AM-AdamW
        (bounded correction) has one from the first step (beta_max); frozen betas never
        report one."""
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
        impl, kernels = self._choose_impl(ts)  # the one decision of this step
        hyper = [self.hyper.read(g) for g in self.param_groups]  # read once, typed
        context = StepContext(
            self.scratch,
            kernels,
            self._core_cache,
            {key: self._option(key) for key in self.options},
        )
        core = type(self).core(ts, hyper, impl, context)
        if not self._grads_finite(ts, core.grad_norms()):
            self.nonfinite_skips += 1
            return loss  # nonfinite="skip": nothing changed
        core.prepare()
        objective = self._objective(ts, hyper, loss)
        core.update(self._betas(ts, hyper, core, objective))
        torch._foreach_add_([st["step"] for st in ts.states], 1.0)
        for group, used in zip(self.param_groups, hyper):
            group["prev_lr"] = used.lr
            if objective is not None:
                group["prev_loss"] = objective.clone()
        return loss

    def _objective(
        self, ts: StepTensors, hyper: list[GroupHyper], loss: Tensor | None
    ) -> Tensor | None:
        """The value of the function the gradient belongs to, for the exact plane bias (None
        for the linear one): the loss, negated with maximize, plus the coupled weight decay
        sum_g wd_g / 2 ||x_g||^2 (AM-SGD; docs/algorithm.md, section 2)."""
        if self.plane_bias != "exact" or loss is None:
            return None
        value = loss.detach().reshape(())
        value = -value if self.maximize else value
        if not self.coupled_decay or all(h.weight_decay == 0 for h in hyper):
            return value
        decayed = [i for i, gid in enumerate(ts.group_ids) if hyper[gid].weight_decay != 0]
        if decayed:
            sq = squared_norms([ts.params[i] for i in decayed])
            wd = per_tensor(
                [hyper[ts.group_ids[i]].weight_decay for i in decayed], sq.device, sq.dtype
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
                    self._init_state(real(p), state)
                grad = real(local(p.grad))
                ts.params.append(real(local(p)))
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

    def _choose_impl(self, ts: StepTensors) -> tuple[Impl, Any]:
        """The implementation of this step and, for "fused", its kernels. fused=True: on CUDA
        the Triton kernels (dense fp32/bf16/fp16 tensors), on the CPU the same passes compiled
        by torch.compile (`amm.optim._compiled`; the Triton kernels under TRITON_INTERPRET=1,
        for their tests); where neither runs (fp64, no C++ compiler, ...) foreach, with a
        warning once per reason. foreach=None means foreach (outside TorchScript)."""
        if self.fused:
            reason, kernels = self._fused_kernels_for(ts)
            if reason is None:
                return "fused", kernels
            if reason not in self._fused_fallbacks:  # say it once, not every step
                self._fused_fallbacks.add(reason)
                warnings.warn(
                    f"{type(self).__name__}(fused=True): {reason}; these steps use the foreach "
                    "implementation (the same math)",
                    stacklevel=4,
                )
            return "foreach", None
        if self.foreach is not None:
            return ("foreach" if self.foreach else "single"), None
        return ("single" if torch.jit.is_scripting() else "foreach"), None

    def _fused_kernels_for(self, ts: StepTensors) -> tuple[str | None, Any]:
        """(why the fused step cannot run, None) or (None, the kernels for these tensors)."""
        from amm.optim import _triton

        if ts.params[0].device.type == "cpu" and not _triton.interpreting():
            from amm.optim._compiled import unavailable_reason

            dtypes = {p.dtype for p in ts.params}
            other = sorted(str(d) for d in dtypes - set(_FUSED_DTYPES))
            if other:
                return f"dtype {other[0]} is not supported (float32, bfloat16, float16 are)", None
            return unavailable_reason(), self._compiled_passes()
        reason = _triton.unsupported_reason(
            [
                (p, g, *(local(t) for t in self._state_tensors(st)))
                for p, g, st in zip(ts.params, ts.grads, ts.states)
            ]
        )
        return reason, self._fused_kernels

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

    def _grads_finite(self, ts: StepTensors, grad_sq: Tensor | None) -> bool:
        """One boolean read on the host; raises or tells the caller to skip the step.
        `grad_sq`: ||grad||^2 per tensor if the core computed them, else computed here."""
        if self.nonfinite == "off":
            return True
        ts.grad_sq = squared_norms(ts.grads) if grad_sq is None else grad_sq
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
        hyper: list[GroupHyper],
        core: StepCore,
        objective: Tensor | None,
    ) -> list[Beta]:
        """Per tensor: a frozen float, a 0-dim device tensor, or None (no history, for cores
        whose first step has no beta). `objective`: the function value for the exact plane bias
        (see `_objective`)."""
        beta: list[Beta] = [None] * len(ts.params)
        adaptive, moved = [], []
        for i, (st, gid) in enumerate(zip(ts.states, ts.group_ids)):
            history = has_history(st)
            if not (history or core.first_step_adaptive):
                continue
            frozen = hyper[gid].frozen_beta
            if frozen is not None:
                beta[i] = frozen
            else:
                adaptive.append(i)
                moved.append(history)
        if not adaptive:
            return beta

        rows = core.sums(adaptive)  # [n, 3]: b / eta_{t-1}, cross, gap
        device, dtype = rows.device, rows.dtype
        hs = [hyper[ts.group_ids[i]] for i in adaptive]
        eta = per_tensor([h.lr for h in hs], device, dtype)
        # the previous step's rate, 0 included (a warmup from 0 did not move x: b = 0); a group
        # without one (e.g. an old checkpoint) takes its current rate; a tensor that has not
        # moved yet has no previous step at all: b = 0
        eta_prev = per_tensor(
            [(h.lr if h.prev_lr is None else h.prev_lr) if m else 0.0 for h, m in zip(hs, moved)],
            device,
            dtype,
        )
        # exact: f(x_{t-1}) - f(x_t) is added after the reduction (it is global already);
        # without a previous loss (the first step, an old checkpoint) the first-order bias
        prev_loss = self.param_groups[0]["prev_loss"]
        exact = self.plane_bias == "exact" and prev_loss is not None
        plane = torch.zeros_like(rows[:, 0]) if exact else eta_prev * rows[:, 0]
        lams = [h.lam for h in hs]
        mixed_lam = self.beta_scope == "global" and len(set(lams)) > 1
        if mixed_lam:  # one dual over groups with their own lam: weights eta_g / (1 + lam_g)
            eta = eta / (1 + per_tensor(lams, device, dtype))
        weighted = torch.stack([plane, eta * rows[:, 1], eta * rows[:, 2]], dim=1)

        gids = [ts.group_ids[i] for i in adaptive]
        packed, unit_of = reduce_scope(weighted, self.beta_scope, gids)
        if ts.reduce_group is not None:
            dist.all_reduce(packed, group=ts.reduce_group)  # the one collective of a sharded step
        if exact:
            assert objective is not None  # step() checks that there is a loss
            prev = prev_loss.to(device=device, dtype=dtype)
            packed[:, 0] = prev - objective.to(device=device, dtype=dtype)

        unit_hyper = {u: h for u, h in zip(unit_of, hs)}
        settings = [
            (0.0 if mixed_lam else h.lam, h.beta_min, h.beta_max)
            for h in (unit_hyper[u] for u in range(packed.shape[0]))
        ]
        unit_beta = unit_betas(packed, settings)
        self._last_beta = unit_beta
        per_unit = unit_beta.unbind()
        for k, i in enumerate(adaptive):
            beta[i] = per_unit[unit_of[k]]
        return beta
