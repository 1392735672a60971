"""The AM optimizer classes that the generic optimizer tests run over: every class of the
registry built on `AdaptiveMemoryOptimizer`, so a new variant (one module and one registry
line) is covered by them automatically."""

from __future__ import annotations

import inspect
from typing import Any

from amm.optim import OPTIMIZERS, AdaptiveMemoryOptimizer

AM_OPTIMIZERS = [cls for cls in OPTIMIZERS.values() if issubclass(cls, AdaptiveMemoryOptimizer)]


def paper_options(cls: type) -> dict[str, Any]:
    """The paper's values where a class's defaults are torch's (AMAdamW: beta2 = 0.99)."""
    return {"betas": (0.9, 0.99)} if "betas" in inspect.signature(cls).parameters else {}
