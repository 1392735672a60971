"""Heavy ball with the oracle momentum of the paper's appendix B.4 (needs the minimiser x*).

Minimising ||x_{t+1} - x*||^2 over beta for x_{t+1} = x_t - eta (g_t + beta (d_t - g_t)) gives

    beta*_t = clip( <x_t - x* - eta g_t, d_t - g_t> / (eta ||d_t - g_t||^2), 0, 1 ).

Only for quadratic experiments (Figure 1), where x* is known; lam = 0, one global beta.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from amm.optim._tensors import closure_loss


class OracleHeavyBall(Optimizer):
    """Heavy ball d_{t+1} = beta* d_t + (1 - beta*) g_t, x_{t+1} = x_t - lr d_{t+1}."""

    needs_closure = False

    def __init__(self, params: Any, minimizer: list[Tensor], lr: float = 1e-3) -> None:
        if not lr > 0:
            raise ValueError(f"OracleHeavyBall: invalid lr={lr!r}: must be > 0")
        super().__init__(params, dict(lr=lr))
        flat = [p for group in self.param_groups for p in group["params"]]
        if len(minimizer) != len(flat) or any(m.shape != p.shape for m, p in zip(minimizer, flat)):
            raise ValueError(
                "OracleHeavyBall: minimizer must be a list with one tensor per parameter, "
                f"shaped like them: got {[tuple(m.shape) for m in minimizer]} for "
                f"{[tuple(p.shape) for p in flat]}"
            )
        self.minimizer = {p: m.detach().to(p) for p, m in zip(flat, minimizer)}
        self._last_beta: Tensor | None = None

    @property
    def last_beta(self) -> Tensor | None:
        return self._last_beta

    def beta_stats(self) -> dict[str, Tensor]:
        return {} if self._last_beta is None else {"beta": self._last_beta.reshape(())}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure_loss(closure)
        items = [
            (p, p.grad, group["lr"], self.state[p])
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not items:
            return loss
        if "momentum_buffer" not in items[0][3]:  # first step: d_0 = g_0
            for p, g, lr, state in items:
                state["momentum_buffer"] = g.clone()
                p.add_(g, alpha=-lr)
            return loss
        numerator: Tensor = sum(  # type: ignore[assignment]
            torch.sum((p - self.minimizer[p] - lr * g) * (st["momentum_buffer"] - g))
            for p, g, lr, st in items
        )
        denominator: Tensor = sum(
            lr * torch.sum((st["momentum_buffer"] - g) ** 2) for p, g, lr, st in items
        )
        beta = torch.where(
            denominator > 0, (numerator / denominator).clamp(0.0, 1.0), torch.ones_like(numerator)
        )
        self._last_beta = beta.reshape(1)
        for p, g, lr, st in items:
            d = st["momentum_buffer"]
            d.mul_(beta).add_(g * (1 - beta))
            p.add_(d, alpha=-lr)
        return loss
