"""The AM optimizer classes that the generic optimizer tests run over: every class of the
registry built on `AdaptiveMemoryOptimizer`, so a new variant (one module and one registry
line) is covered by them automatically."""

from __future__ import annotations

from amm.optim import OPTIMIZERS
from amm.optim._base import AdaptiveMemoryOptimizer

AM_OPTIMIZERS = [cls for cls in OPTIMIZERS.values() if issubclass(cls, AdaptiveMemoryOptimizer)]
