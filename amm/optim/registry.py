"""Build any optimizer of the suite by name, with param groups; the config system calls this."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from amm.optim._base import OptimizerOptions
from amm.optim.am_adamw import AMAdamW
from amm.optim.am_sgd import AMSGD
from amm.optim.oracle import OracleHeavyBall

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "am_sgd": AMSGD,
    "am_adamw": AMAdamW,
    "sgd": torch.optim.SGD,
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "oracle": OracleHeavyBall,
}


# build_optimizer's own keys (the rest go to the class)
BUILD_KEYS = frozenset({"name", "lr", "lr_scale", "weight_decay", "decay_norm_and_bias"})


def accepted_keys(name: str) -> frozenset[str] | None:
    """The ``optimizer.*`` keys optimizer ``name`` takes (None: it takes any keyword)."""
    cls = OPTIMIZERS[name]
    params = inspect.signature(cls.__init__).parameters
    named = set(params) - {"self", "params", "minimizer"}
    for p in params.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            named.discard(p.name)
            if not isinstance(getattr(cls, "options", None), dict):
                return None  # a **kwargs we cannot list
            named |= set(OptimizerOptions.__annotations__)  # ours: **options typed as these
    return BUILD_KEYS | named


def param_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False
) -> list[dict[str, Any]]:
    """Named param groups; unless `decay_norm_and_bias`, 1-D tensors (norms, biases) get no decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": named, "weight_decay": weight_decay}]
    decay = [(n, p) for n, p in named if p.ndim >= 2]
    no_decay = [(n, p) for n, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    name: str,
    *,
    lr: float | str,
    lr_scale: float = 1.0,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = False,
    info: Mapping[str, Any] | None = None,
    **options: Any,
) -> torch.optim.Optimizer:
    """`build_optimizer(model, "am_adamw", lr=1e-3, weight_decay=1e-4, lam=0.1)`.

    lr="auto" takes the problem's suggested step `info["lr"]` (e.g. 1/L for convex problems),
    times `lr_scale` (lr="auto", lr_scale=2: 2/L); a numeric lr is used as given;
    "oracle" takes its minimiser from `info["minimizer"]`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    info = dict(info or {})
    if lr == "auto":
        if "lr" not in info:
            raise ValueError(
                "optimizer.lr='auto' needs a problem that suggests a step size (info['lr'], "
                "e.g. 1/L for the convex problems); set optimizer.lr to a number instead"
            )
        if not lr_scale > 0:  # also refuses NaN
            raise ValueError(f"optimizer.lr_scale={lr_scale!r}: must be > 0 (2 means 2 x the step)")
        lr = float(info["lr"]) * float(lr_scale)
    elif isinstance(lr, str):
        raise ValueError(f"optimizer.lr={lr!r}: use a number or 'auto'")
    elif lr_scale != 1.0:  # a multiplier on a number would only hide the lr actually used
        raise ValueError(
            f"optimizer.lr_scale={lr_scale!r} multiplies the problem's suggested step "
            f"(optimizer.lr=auto); with optimizer.lr={lr!r} set the lr itself"
        )
    for key in ("betas",):  # configs give lists; torch wants tuples
        if key in options and options[key] is not None:
            options[key] = tuple(options[key])

    if isinstance(model_or_params, nn.Module):
        params: Any = param_groups(model_or_params, weight_decay, decay_norm_and_bias)
    else:
        params = list(model_or_params)
    cls: Any = OPTIMIZERS[name]  # each class's own keyword arguments
    if name == "oracle":
        if "minimizer" not in info:
            raise ValueError("optimizer 'oracle' needs the problem's minimiser (info['minimizer'])")
        if weight_decay:
            raise ValueError("optimizer 'oracle' has no weight decay; set weight_decay=0")
        flat = (
            [p for g in params for _, p in g["params"]] if isinstance(params[0], dict) else params
        )
        return cls(flat, minimizer=list(info["minimizer"]), lr=lr, **options)
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, **options)
    except TypeError as err:
        raise ValueError(f"optimizer {name!r}: {err} (check the optimizer config's keys)") from err
