"""Models for the deterministic convex problems in :mod:`amm.data.convex`.

Each ``forward(batch)`` returns ``(loss, metrics)`` where ``loss`` is exactly the problem's
objective (L2 term included), as docs/architecture.md section 2 requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from amm.data.convex import torch_dtype


class LinearClassifier(nn.Module):
    """Linear model without bias, initialised to zero: L2-regularised logistic regression.

    Binary (``y`` in {-1, +1}): ``mean softplus(-y * x.w)``; multiclass (``y`` in 0..K-1):
    softmax cross-entropy with weights (K, d). Plus ``l2/2 ||W||^2``. The data term is
    multiplied by ``batch["loss_scale"]`` (1 for a full batch), which makes the per-rank
    gradients of a row-sharded batch average to the full-data gradient.
    """

    def __init__(self, info: Mapping[str, Any]) -> None:
        super().__init__()
        self.binary = info["num_classes"] == 2
        self.l2 = float(info.get("l2", 0.0))
        out = 1 if self.binary else int(info["num_classes"])
        dtype = torch_dtype(info.get("dtype", "float64"))
        self.linear = nn.Linear(int(info["num_features"]), out, bias=False, dtype=dtype)
        nn.init.zeros_(self.linear.weight)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch["x"], batch["y"]
        logits = self.linear(x)
        if self.binary:
            z = logits.squeeze(-1)
            data = F.softplus(-y * z).mean()
            correct = (z > 0) == (y > 0)
        else:
            data = F.cross_entropy(logits, y)
            correct = logits.argmax(dim=-1) == y
        scale = batch.get("loss_scale")
        if scale is not None:
            data = data * scale
        loss = data + 0.5 * self.l2 * self.linear.weight.pow(2).sum()
        return loss, {"accuracy": correct.to(logits.dtype).mean().detach()}


class QuadraticModel(nn.Module):
    """The iterate ``x`` of a :class:`~amm.data.convex.QuadraticProblem` as one parameter.

    ``init="zeros"`` starts at the origin; ``"random"`` at a seeded standard normal point.
    """

    def __init__(
        self, info: Mapping[str, Any], init: Literal["zeros", "random"] = "zeros", seed: int = 0
    ) -> None:
        super().__init__()
        dim, dtype = int(info["num_features"]), torch_dtype(info.get("dtype", "float64"))
        if init == "zeros":
            x = torch.zeros(dim, dtype=dtype)
        elif init == "random":
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(dim, generator=gen, dtype=dtype)
        else:
            raise ValueError(f"init must be 'zeros' or 'random', got {init!r}")
        self.x = nn.Parameter(x)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        r = self.x - batch["xstar"]
        return 0.5 * r @ (batch["A"] @ r), {}
