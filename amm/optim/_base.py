"""Machinery shared by AM-SGD and AM-AdamW: param groups, the scope of beta, the plane bias,
learning-rate ratios, non-finite gradients and sharded parameters.

A step has three phases; subclasses implement the math of each (single-tensor, foreach, and
fused: with `fused=True` phases 1-2 are one read-only Triton pass and 3 another, see fused.py):
  1. prepare: effective gradients (AM-SGD: coupled weight decay) and the metric
     (AM-AdamW: the new second moment and the denominator sqrt(v) + eps);
  2. sums: per tensor, [<g + lam d, g - d>, ||g - d||^2, <g, d>, <g, x>] in the metric, in fp32
     (fp64 for fp64 parameters);
  3. update: the heavy-ball step with the per-tensor beta.
Between 2 and 3 this class reduces the sums over the scope (global, per group, per tensor),
all-reduces them once when the parameters are shards, and calls `adaptive_beta`.
Nothing in `step()` reads a device value on the host, except the non-finite check
(`nonfinite="raise"|"skip"`, one boolean per step; `nonfinite="off"` removes it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from amm.optim.beta import adaptive_beta

BETA_SCOPES = ("global", "per-group", "per-tensor")
PLANE_BIASES = ("linear", "exact")
NONFINITE_POLICIES = ("raise", "skip", "off")
# Group options that define the single beta of the global scope: they must agree across groups.
_GLOBAL_BETA_OPTIONS = ("lam", "beta_min", "beta_max", "restart_below", "frozen_beta")


class NonFiniteGradientError(RuntimeError):
    """A gradient holds inf or NaN; the step was not applied and no state was changed."""


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: in-place ops update the DTensor), else `t`."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "device_mesh") else t


def sum_dtype(t: Tensor) -> torch.dtype:
    """Reductions run in fp32, or fp64 for fp64 parameters (deterministic convex problems)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass
class StepTensors:
    """The tensors of one step, flattened over groups (only parameters that have a gradient)."""

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    group_ids: list[int] = field(default_factory=list)
    where: list[tuple[int, int]] = field(default_factory=list)  # (group, index): error messages
    # ||grad||^2 per tensor, when the non-finite check computed it (AM-SGD reuses it)
    grad_sq: Tensor | None = None
    # the tensors are shards: per-tensor sums are partial until the all-reduce
    sharded: bool = False


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


def common_sum_dtype(tensors: list[Tensor]) -> torch.dtype:
    """The dtype of a list's sums: fp64 if any tensor is fp64, else fp32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def squared_norms(tensors: list[Tensor]) -> Tensor:
    """||t||^2 per tensor, in fp32 (fp64 for fp64 tensors): one read of each tensor."""
    dtype = common_sum_dtype(tensors)
    if all(t.dtype == dtype for t in tensors):  # the usual case: no casts
        flat = [t.reshape(-1) for t in tensors]
        return torch.stack([torch.dot(f, f) for f in flat])
    if all(t.dtype in (torch.float32, torch.float64) for t in tensors):
        # a BLAS dot reads the tensor once and is faster than a norm kernel on the CPU
        return torch.stack([torch.dot(t.reshape(-1), t.reshape(-1)).to(dtype) for t in tensors])
    return torch.stack(torch._foreach_norm(tensors, dtype=dtype)).to(dtype).square()


def small_tensor(values: list[Any], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A few host values on the device without a host sync: a plain copy from pageable memory
    would wait for the stream, so accelerators get a non-blocking copy from pinned memory."""
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def per_tensor(values: list[float], device: torch.device, dtype: torch.dtype) -> Tensor | float:
    """Per-tensor hyper-parameters: one float when they agree (the usual case), else a vector."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return small_tensor(values, device, dtype)


def beta_vector(
    beta: list[Tensor | float | None], fill: list[float], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Per-tensor betas as one device vector; None (first step) takes `fill`. No host sync."""
    first = beta[0]
    if isinstance(first, Tensor) and all(b is first for b in beta):  # global scope
        return first.to(dtype).reshape(1).expand(len(beta))
    return torch.stack(
        [
            b.to(dtype)
            if isinstance(b, Tensor)
            else torch.full((), float(f if b is None else b), dtype=dtype, device=device)
            for b, f in zip(beta, fill)
        ]
    )


class AdaptiveMemoryOptimizer(Optimizer):
    """Base class; see the module docstring. Not used directly."""

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
        self._fused_kernels: Any = None
        self._fused_fallbacks: set[str] = set()  # why fused steps fell back to foreach (warned)
        if self.fused:
            from amm.optim.fused import FusedKernels

            self._fused_kernels = FusedKernels()
        self.process_group = process_group
        self._last_beta: Tensor | None = None
        self._scratch_cache: dict[str, list[Tensor]] = {}
        super().__init__(params, defaults)

    # Scalar state kept in the sums' dtype (fp32 for bf16/fp16 parameters). torch's
    # load_state_dict casts floating state to the parameter's dtype; these keys are restored.
    _sum_state_keys: tuple[str, ...] = ()

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

    # ---- subclass hooks ------------------------------------------------------------------
    def _init_state(self, param: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _has_history(self, state: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _prepare(self, ts: StepTensors, foreach: bool) -> Any:
        raise NotImplementedError

    def _sums(self, ts: StepTensors, prep: Any, idx: list[int], foreach: bool) -> Tensor:
        raise NotImplementedError

    def _update(
        self, ts: StepTensors, prep: Any, beta: list[Tensor | float | None], foreach: bool
    ) -> None:
        raise NotImplementedError

    def _uses_decoupled_decay(self) -> bool:
        return False

    def _state_tensors(self, state: dict[str, Any]) -> tuple[Tensor, ...]:
        """The per-element state the fused passes read and write (momentum, ...)."""
        raise NotImplementedError

    def _prepare_fused(self, ts: StepTensors) -> Any:
        """Fused pass 1: the per-tensor sums, reading only; sets ts.grad_sq."""
        raise NotImplementedError

    # ---- the step ----------------------------------------------------------------------------
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
                ts.params.append(_local(p))
                ts.grads.append(_local(p.grad))
                ts.states.append(state)
                ts.group_ids.append(gi)
                ts.where.append((gi, pi))
        return ts

    def _param_name(self, gi: int, pi: int) -> str:
        group = self.param_groups[gi]
        names = group.get("param_names")
        name = names[pi] if names else f"param_groups[{gi}]['params'][{pi}]"
        return f"{name} (shape {list(group['params'][pi].shape)})"

    def _use_foreach(self, ts: StepTensors) -> bool:
        if self.foreach is not None:
            return self.foreach
        return not torch.jit.is_scripting()

    def _use_fused(self, ts: StepTensors) -> bool:
        """fused=True where the kernels run (CUDA with Triton, dense fp32/bf16/fp16 tensors);
        elsewhere (CPU, no Triton, fp64, ...) the foreach step, with a warning once per reason."""
        if not self.fused:
            return False
        from amm.optim.fused import unsupported_reason

        per_tensor = [
            (p, g, *(_local(t) for t in self._state_tensors(st)))
            for p, g, st in zip(ts.params, ts.grads, ts.states)
        ]
        reason = unsupported_reason(per_tensor)
        if reason is None:
            return True
        if reason not in self._fused_fallbacks:  # say it once, not every step
            self._fused_fallbacks.add(reason)
            warnings.warn(
                f"{type(self).__name__}(fused=True): {reason}; these steps use the foreach "
                "implementation (the same math)",
                stacklevel=4,
            )
        return False

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

    def _grads_finite(self, ts: StepTensors, reduce_group: Any) -> bool:
        """One boolean read on the host; raises or tells the caller to skip the step."""
        if ts.grad_sq is None:  # the fused pass 1 computes it on the way
            ts.grad_sq = squared_norms(ts.grads)
        bad = ~torch.isfinite(ts.grad_sq)
        any_bad = bad.any().float()
        if reduce_group is not None:
            dist.all_reduce(any_bad, group=reduce_group)
        if not bool(any_bad):
            return True
        if self.nonfinite == "skip":
            return False
        local = [self._param_name(*ts.where[i]) for i in torch.nonzero(bad).flatten().tolist()]
        where = ", ".join(local) if local else "a parameter shard on another rank"
        raise NonFiniteGradientError(
            f"{type(self).__name__}: non-finite gradient in {where}; the step was not applied. "
            "Lower the learning rate, use gradient clipping or AMP's GradScaler, or pass "
            "nonfinite='skip' to skip such steps."
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: C901 - one readable sequence
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
        foreach = self._use_foreach(ts)
        reduce_group = self._reduce_group(ts)
        ts.sharded = reduce_group is not None
        check = self.nonfinite != "off"
        if self._use_fused(ts):
            # pass 1 only reads, so checking after it still leaves the state untouched
            prep = self._prepare_fused(ts)
            if check and not self._grads_finite(ts, reduce_group):
                return loss
        else:
            if check and not self._grads_finite(ts, reduce_group):
                return loss
            prep = self._prepare(ts, foreach)
        beta = self._compute_beta(ts, prep, foreach, loss, reduce_group)
        self._update(ts, prep, beta, foreach)

        for group in self.param_groups:
            group["prev_lr"] = group["lr"]
            if loss is not None:
                group["prev_loss"] = loss.detach().clone()
        return loss

    def _compute_beta(
        self,
        ts: StepTensors,
        prep: Any,
        foreach: bool,
        loss: Tensor | None,
        reduce_group: Any,
    ) -> list[Tensor | float | None]:
        """Per tensor: a frozen float, a 0-dim device tensor, or None (no history: first step)."""
        groups = self.param_groups
        history = [i for i, st in enumerate(ts.states) if self._has_history(st)]
        beta: list[Tensor | float | None] = [None] * len(ts.params)
        frozen = [groups[g]["frozen_beta"] for g in ts.group_ids]
        adaptive = [i for i in history if frozen[i] is None]
        for i in history:
            if frozen[i] is not None:
                beta[i] = float(frozen[i])
        if not adaptive:
            return beta

        rows = self._sums(ts, prep, adaptive, foreach)  # [n, 4]: cross, gap_sq, <g,d>, <g,x>
        device, dtype = rows.device, rows.dtype
        gids = [ts.group_ids[i] for i in adaptive]
        eta = per_tensor([groups[g]["lr"] for g in gids], device, dtype)
        eta_prev = per_tensor(
            [groups[g]["prev_lr"] or groups[g]["lr"] for g in gids], device, dtype
        )
        g_dot_d = rows[:, 2]
        if self._uses_decoupled_decay():
            wd = per_tensor([groups[g]["weight_decay"] for g in gids], device, dtype)
            g_dot_d = g_dot_d + wd * rows[:, 3]
        # exact: f(x_{t-1}) - f(x_t) is added after the reduction (it is global already);
        # without a previous loss (e.g. an old checkpoint) fall back to the first-order bias
        exact = self.plane_bias == "exact" and groups[0]["prev_loss"] is not None
        plane = torch.zeros_like(g_dot_d) if exact else eta_prev * g_dot_d
        weighted = torch.stack([plane, eta * rows[:, 0], eta * rows[:, 1]], dim=1)

        if self.beta_scope == "global":
            unit_of = [0] * len(adaptive)
            packed = weighted.sum(0, keepdim=True)
        else:
            if self.beta_scope == "per-group":
                present = sorted(set(gids))
                unit_of = [present.index(g) for g in gids]
            else:
                unit_of = list(range(len(adaptive)))
            index = small_tensor(unit_of, device, torch.long)
            packed = torch.zeros(max(unit_of) + 1, 3, dtype=dtype, device=device)
            packed.index_add_(0, index, weighted)
        if reduce_group is not None:
            dist.all_reduce(packed, group=reduce_group)  # the one collective of a sharded step
        if exact:
            prev_loss = groups[0]["prev_loss"].to(device=device, dtype=dtype)
            packed[:, 0] = prev_loss - loss.detach().to(device=device, dtype=dtype)

        # One vectorised call per distinct (lam, beta_min, beta_max); usually there is one.
        unit_gid = {u: g for u, g in zip(unit_of, gids)}
        settings: dict[tuple[float, float, float], list[int]] = {}
        for u in range(packed.shape[0]):
            g = groups[unit_gid[u]]
            settings.setdefault((g["lam"], g["beta_min"], g["beta_max"]), []).append(u)
        if len(settings) == 1:
            (lam, beta_min, beta_max), _ = settings.popitem()
            unit_beta = adaptive_beta(
                packed[:, 0],
                packed[:, 1],
                packed[:, 2],
                lam=lam,
                beta_min=beta_min,
                beta_max=beta_max,
            )
        else:
            unit_beta = torch.empty(packed.shape[0], dtype=dtype, device=device)
            for (lam, beta_min, beta_max), members in settings.items():
                sel = small_tensor(members, device, torch.long)
                p = packed.index_select(0, sel)
                unit_beta.index_copy_(
                    0,
                    sel,
                    adaptive_beta(
                        p[:, 0], p[:, 1], p[:, 2], lam=lam, beta_min=beta_min, beta_max=beta_max
                    ),
                )
        self._last_beta = unit_beta
        per_unit = unit_beta.unbind()
        for k, i in enumerate(adaptive):
            beta[i] = per_unit[unit_of[k]]
        return beta
