"""Adaptive Memory momentum optimizers: drop-in `torch.optim` classes.

from amm.optim import AMAdamW
optimizer = AMAdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
"""

from amm.optim._base import AdaptiveMemoryOptimizer, NonFiniteGradientError
from amm.optim.am_adamw import AMAdamW
from amm.optim.am_sgd import AMSGD
from amm.optim.beta import adaptive_beta
from amm.optim.oracle import OracleHeavyBall
from amm.optim.registry import OPTIMIZERS, build_optimizer, param_groups

AMMGD = AMSGD  # the paper's name

__all__ = [
    "AMAdamW",
    "AdaptiveMemoryOptimizer",
    "AMMGD",
    "AMSGD",
    "OPTIMIZERS",
    "NonFiniteGradientError",
    "OracleHeavyBall",
    "adaptive_beta",
    "build_optimizer",
    "param_groups",
]
