"""The learning-rate schedules (``trainer.scheduler``), and what they imply for a resumed run.

``lr_factor(cfg, max_steps)`` is the multiplier of the base lr at each update: a linear warmup
over ``warmup_steps``, then one of ``SCHEDULES``. The names are defined here once: the config
schema (``amm.config.SchedulerSchema``) allows exactly these, and the run directory's fingerprint asks
``max_steps_may_change`` whether a re-run with another ``trainer.max_steps`` is the same run.
Pure Python (no torch): the trainer wraps the factor in a ``LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SCHEDULES = ("constant", "cosine", "step")
# schedules whose lr at a step depends on trainer.max_steps (cosine: progress = step / max_steps)
USES_MAX_STEPS = frozenset({"cosine"})
SCHEDULE_KEY = "trainer.scheduler.name"  # where a run's flat config (fingerprint) names it


def lr_factor(cfg: Any, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at update ``step`` (0-based): linear warmup, then the schedule.

    ``cfg``: ``trainer.scheduler`` (a ``SchedulerSchema``, or the same keys in a DictConfig).
    """
    name, warmup = cfg.name, int(cfg.warmup_steps)
    milestones, gamma, min_ratio = list(cfg.milestones), float(cfg.gamma), float(cfg.min_lr_ratio)
    if name not in SCHEDULES:  # the config schema refuses it first; this is for direct callers
        raise ValueError(f"unknown scheduler {name!r}; use constant, cosine or step")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "step":
            return gamma ** sum(step >= m for m in milestones)
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def max_steps_may_change(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two runs that differ in ``trainer.max_steps`` take the same steps (so a run may
    be extended or stopped earlier): yes unless either one's schedule depends on it."""
    return not ({old.get(SCHEDULE_KEY), new.get(SCHEDULE_KEY)} & USES_MAX_STEPS)
