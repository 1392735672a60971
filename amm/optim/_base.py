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
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from amm.optim._tensors import Beta, local, per_tensor, restart_mask, squared_norms, sum_dtype
from amm.optim.beta import BETA_SCOPES, reduce_scope, unit_betas

PLANE_BIASES = ("linear", "exact")
NONFINITE_POLICIES = ("raise", "skip", "off")
# Group options that define the single beta of the global scope: they must agree across groups.
_GLOBAL_BETA_OPTIONS = ("lam", "beta_min", "beta_max", "restart_below", "frozen_beta")

Impl = Literal["single", "foreach", "fused"]


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
    """

    grads_finite: Callable[[StepTensors], bool]
    betas: Callable[[StepTensors, SumsFn], list[Beta]]
    scratch: Callable[[str, list[Tensor]], list[Tensor]]
    kernels: Any


# A functional core: one step of an optimizer's math on gathered tensors; False if skipped.
StepFn = Callable[[StepTensors, list[dict[str, Any]], StepServices, Impl], bool]


def check_common_hparams(group: dict[str, Any], owner: str) -> None:
    """Raise ValueError naming the first invalid hyper-parameter of a param group."""

    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"{owner}: invalid {name}={group[name]!r}: {why}")

    lr = group["lr"]
    if isinstance(lr, Tensor) or not isinstance(lr, (int, float)) or lr < 0:
        raise bad("lr", "must be a float >= 0")
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
    return state["step"].item() > 0  # a CPU tensor: no device sync


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
    # AM-AdamW: the plane bias includes the decoupled decay term wd <g, x>
    decoupled_decay = False
    # Scalar state kept in the sums' dtype (fp32 for bf16/fp16 parameters). torch's
    # load_state_dict casts floating state to the parameter's dtype; these keys are restored.
    _sum_state_keys: tuple[str, ...] = ()

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        beta_scope: str,
        plane_bias: str,
        nonfinite: str,
        foreach: bool | None,
        process_group: Any,
        fused: bool | None = None,
    ) -> None:
        name = type(self).__name__
        if fused and foreach:
            raise ValueError(f"{name}: fused=True and foreach=True cannot be set together")
        if beta_scope not in BETA_SCOPES:
            raise ValueError(f"{name}: invalid beta_scope={beta_scope!r}; use one of {BETA_SCOPES}")
        if plane_bias not in PLANE_BIASES:
            raise ValueError(
                f"{name}: invalid plane_bias={plane_bias!r}; use one of {PLANE_BIASES}"
            )
        if plane_bias == "exact" and beta_scope != "global":
            raise ValueError(
                f"{name}: plane_bias='exact' uses the loss, a global quantity; "
                f"it needs beta_scope='global' (got {beta_scope!r})"
            )
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"{name}: invalid nonfinite={nonfinite!r}; use one of {NONFINITE_POLICIES}"
            )
        self.beta_scope = beta_scope
        self.plane_bias = plane_bias
        self.nonfinite = nonfinite
        self.foreach = foreach
        self.fused = bool(fused)
        # created here, not in step(): torch.compile would trace the creation and lose it
        self._fused_kernels: Any = self._make_kernels() if self.fused else None
        self._fused_fallbacks: set[str] = set()  # why fused steps fell back to foreach (warned)
        self.process_group = process_group
        self._last_beta: Tensor | None = None
        self._scratch_cache: dict[str, list[Tensor]] = {}
        super().__init__(params, defaults)

    def _make_kernels(self) -> Any:
        """The optimizer's fused kernels (a `amm.optim._triton.Launcher`)."""
        raise NotImplementedError(f"{type(self).__name__} has no fused implementation")

    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        """The per-element state the fused passes read and write (momentum, ...)."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["state"]
        saved_ids = [g["params"] for g in state_dict["param_groups"]]
        super().load_state_dict(state_dict)
        for group, ids in zip(self.param_groups, saved_ids):
            for p, pid in zip(group["params"], ids):
                for key in self._sum_state_keys:
                    value = saved.get(pid, {}).get(key)
                    if isinstance(value, Tensor) and p in self.state:
                        self.state[p][key] = value.to(p.device, sum_dtype(p), copy=True)

    # The trainer passes a closure (forward + backward on the current batch) when this is set.
    @property
    def needs_closure(self) -> bool:
        return self.plane_bias == "exact"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("prev_lr", None)
        group.setdefault("prev_loss", None)
        self._check_group(group)
        if self.beta_scope == "global":
            first = self.param_groups[0]
            for key in _GLOBAL_BETA_OPTIONS:
                if group[key] != first[key]:
                    raise ValueError(
                        f"{type(self).__name__}: {key} differs between param groups "
                        f"({first[key]!r} vs {group[key]!r}); with beta_scope='global' one beta "
                        "is shared by all groups, so use beta_scope='per-group' instead"
                    )

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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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

        def betas(ts: StepTensors, sums: SumsFn) -> list[Beta]:
            return self._betas(ts, sums, loss)

        services = StepServices(self._grads_finite, betas, self.scratch, self._fused_kernels)
        if not type(self).functional(ts, self.param_groups, services, impl):
            return loss  # nonfinite="skip": nothing changed
        torch._foreach_add_([st["step"] for st in ts.states], 1.0)
        for group in self.param_groups:
            group["prev_lr"] = group["lr"]
            if loss is not None:
                group["prev_loss"] = loss.detach().clone()
        return loss

    def _gather(self) -> StepTensors:
        ts = StepTensors()
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
                    self._init_state(p, state)
                ts.params.append(local(p))
                ts.grads.append(local(p.grad))
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
        local_names = [
            self._param_name(*ts.where[i]) for i in torch.nonzero(bad).flatten().tolist()
        ]
        where = ", ".join(local_names) if local_names else "a parameter shard on another rank"
        raise NonFiniteGradientError(
            f"{type(self).__name__}: non-finite gradient in {where}; the step was not applied. "
            "Lower the learning rate, use gradient clipping or AMP's GradScaler, or pass "
            "nonfinite='skip' to skip such steps."
        )

    def _betas(self, ts: StepTensors, sums: SumsFn, loss: Tensor | None) -> list[Beta]:
        """Per tensor: a frozen float, a 0-dim device tensor, or None (no history: first step)."""
        groups = self.param_groups
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
        eta_prev = per_tensor(
            [groups[g]["prev_lr"] or groups[g]["lr"] for g in gids], device, dtype
        )
        g_dot_d = rows[:, 2]
        if self.decoupled_decay:
            wd = per_tensor([groups[g]["weight_decay"] for g in gids], device, dtype)
            g_dot_d = g_dot_d + wd * rows[:, 3]
        # exact: f(x_{t-1}) - f(x_t) is added after the reduction (it is global already);
        # without a previous loss (e.g. an old checkpoint) fall back to the first-order bias
        exact = self.plane_bias == "exact" and groups[0]["prev_loss"] is not None
        plane = torch.zeros_like(g_dot_d) if exact else eta_prev * g_dot_d
        weighted = torch.stack([plane, eta * rows[:, 0], eta * rows[:, 1]], dim=1)

        packed, unit_of = reduce_scope(weighted, self.beta_scope, gids)
        if ts.reduce_group is not None:
            dist.all_reduce(packed, group=ts.reduce_group)  # the one collective of a sharded step
        if exact:
            assert loss is not None  # step() checks it
            prev_loss = groups[0]["prev_loss"].to(device=device, dtype=dtype)
            packed[:, 0] = prev_loss - loss.detach().to(device=device, dtype=dtype)

        unit_gid = {u: g for u, g in zip(unit_of, gids)}
        settings = [
            (groups[g]["lam"], groups[g]["beta_min"], groups[g]["beta_max"])
            for g in (unit_gid[u] for u in range(packed.shape[0]))
        ]
        unit_beta = unit_betas(packed, settings)
        self._last_beta = unit_beta
        per_unit = unit_beta.unbind()
        for k, i in enumerate(adaptive):
            beta[i] = per_unit[unit_of[k]]
        return beta
