"""Figure 2 (issue 14, item 5): the planes, betas and steps it draws are the real model's, and
the artifact is made by ``experiments.reproduce`` without training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from scipy.optimize import minimize_scalar

from amm.config import CONFIG_DIR, SCALES
from amm.optim import AMSGD
from experiments import figure2
from experiments.reproduce import reproduce, sweep_blocks


@pytest.fixture(scope="module")
def ill() -> figure2.Illustration:
    return figure2.illustration()


def test_am_step_is_what_the_optimizer_does(ill: figure2.Illustration) -> None:
    """AM's bias, beta and x_2 are those of AMSGD(plane_bias="exact") on the same function."""
    a, y = torch.tensor(figure2.A), torch.tensor(figure2.Y)
    x = torch.tensor([ill.x0], dtype=torch.float64, requires_grad=True)
    opt = AMSGD(
        [x],
        lr=ill.lr,
        lam=figure2.LAM,
        beta_min=figure2.BETA_MIN,
        beta_max=figure2.BETA_MAX,
        plane_bias="exact",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-y * a * x).mean() + figure2.L2 / 2 * (x * x).sum()
        loss.backward()
        return loss

    assert closure().item() == pytest.approx(ill.f(ill.x0)[0], rel=1e-14)
    opt.step(closure)
    assert x.item() == pytest.approx(ill.x1, rel=1e-14)
    opt.step(closure)
    am = ill.steps[0]
    assert opt.last_beta is not None
    assert opt.last_beta.item() == pytest.approx(am.beta, abs=1e-14)
    assert x.item() == pytest.approx(am.x2, rel=1e-13)


def test_planes_over_and_under_estimate(ill: figure2.Illustration) -> None:
    am, bundle = ill.steps
    grid = np.linspace(ill.x0 - 3, ill.x0 + 5, 2001)
    under = ill.momentum_plane(bundle, grid) - ill.f(grid)
    assert under.max() <= 1e-12  # the bundle plane is below f everywhere ...
    assert ill.momentum_plane(bundle, np.array([ill.x0]))[0] == pytest.approx(ill.f(ill.x0)[0])
    # ... AM's passes through f(x_0) above x_1: above f there and along the way travelled.
    assert ill.momentum_plane(am, np.array([ill.x1]))[0] == pytest.approx(ill.f(ill.x0)[0])
    between = np.linspace(ill.x1, am.x2, 50)
    assert np.all(ill.momentum_plane(am, between) > ill.f(between))


def test_each_step_minimises_its_proximal_model(ill: figure2.Illustration) -> None:
    for step in ill.steps:
        res = minimize_scalar(
            lambda v, s=step: float(ill.prox_objective(s, np.array([v]))[0]),
            bracket=(ill.x1 - 1, ill.x1 + 1),
            tol=1e-12,
        )
        assert res.x == pytest.approx(step.x2, abs=1e-6), step.name


def test_overestimating_plane_keeps_momentum_and_gets_closer(ill: figure2.Illustration) -> None:
    """What the figure shows at its settings (undershooting step, lr = 0.5/L)."""
    am, bundle = ill.steps
    assert am.bias > 0 > bundle.bias
    assert (am.beta, bundle.beta) == (figure2.BETA_MAX, figure2.BETA_MIN)
    gap_am, gap_bundle = (ill.f(s.x2)[0] - ill.fstar for s in (am, bundle))
    assert 0 < gap_am < gap_bundle


def test_reproduce_makes_figure2_without_runs(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert all(sweep_blocks("figure2", scale) == [] for scale in SCALES)
    out = reproduce("figure2", "smoke", [], out_dir=tmp_path / "fig2")
    assert out is not None
    assert {p.name for p in out.iterdir()} == {
        "figure2.png",
        "figure2.pdf",
        "table.md",
        "commands.txt",
        "provenance.json",
    }
    record = json.loads((out / "provenance.json").read_text())
    assert record["run_dirs"] == [] and record["commands"] == []
    assert "no training runs" in (out / "commands.txt").read_text()
    assert "| AM (over-estimating) |" in (out / "table.md").read_text()
    with pytest.raises(ValueError, match="no training runs"):
        figure2.make([tmp_path], tmp_path / "other", "smoke")
