"""Models built from a data module's info (see docs/architecture.md section 2).

``Model`` is the contract the trainer relies on: an ``nn.Module`` built by
``hydra.utils.instantiate(cfg.model, info=data.info)`` whose ``forward(batch)`` returns
``(loss, metrics)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from torch import Tensor
from torch.nn import Parameter


class Model(Protocol):
    """``model(batch) -> (loss, metrics)``: ``loss`` the scalar objective that is optimised
    (with any L2 term that defines the problem), ``metrics`` floats or 0-dim tensors."""

    def __call__(self, batch: Any) -> tuple[Tensor, dict[str, Any]]: ...

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]: ...
