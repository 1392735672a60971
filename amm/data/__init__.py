"""Data modules: problems and data sets (see docs/architecture.md section 2).

``DataModule`` is the contract the trainer relies on; every class a dataset config instantiates
(``amm.data.convex``, ``amm.data.vision``, ``amm.data.c4``) satisfies it, which mypy checks where
the trainer uses one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol


class DataModule(Protocol):
    """A problem or data set, as built by ``hydra.utils.instantiate(cfg.dataset)``."""

    #: facts the model, optimizer and trainer need: ``num_features``, ``num_classes``,
    #: ``n_train``; deterministic problems also ``lr`` (1/L), ``fstar``, ``minimizer`` and
    #: ``fstar_grad_norm`` (how exact f* is); language data ``eval_unigram_entropy`` (a
    #: reference loss). The trainer copies f*, its gradient norm and the entropy into summary.json.
    info: dict[str, Any]

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterable[Any]:
        """One epoch of this rank's training batches, a deterministic function of ``epoch``."""
        ...

    def eval_batches(self) -> Iterable[Any] | None:
        """Evaluation batches, or None."""
        ...

    def source_files(self) -> list[Path]:
        """The files the data was read from (their sizes and hashes are part of a run's
        fingerprint: a changed file is noticed on resume). Empty for generated data."""
        ...
