"""Figure 2 (paper sec. 3.2): the over-estimating momentum plane against the bundle plane.

Drawn from the real model, not a sketch. The function is a 1-D L2-regularised logistic
regression on five points (``amm.data.convex.LogisticObjective``, the objective of Figure 3),
f* from the project's solver (``solve_fstar``). From ``x_0`` one gradient step at ``lr = c / L``
gives ``x_1`` and the momentum ``d = g_0``. At ``x_1`` the model is the maximum of

- the gradient plane ``f(x_1) + g_1 (x - x_1)``,
- a momentum plane ``f(x_1) + b + d (x - x_1)`` whose bias ``b`` is either
  - AM's (over-estimating): ``b = f(x_0) - f(x_1)``, the plane through ``(x_1, f(x_0))``
    (``plane_bias="exact"``), or
  - a bundle method's (under-estimating): the aggregate plane through ``(x_0, f(x_0))``, here
    the tangent at ``x_0`` (d = g_0), so ``b = f(x_0) - f(x_1) - lr d^2`` and the plane lies
    below f.

(The model weighs the two planes by (1 - beta, beta) with beta in [beta_min, beta_max], the
paper's clip; with [0, 1] it would be their maximum.) Each bias gives its beta through ``amm.optim.beta.adaptive_beta`` (the one implementation of the
formula, docs/algorithm.md section 1) and its proximal step ``x_2 = x_1 - lr d_2`` with
``d_2 = ((beta + lam) d + (1 - beta) g_1) / (1 + lam)``; tests/test_figure2.py checks that AM's
step is what ``AMSGD(plane_bias="exact")`` does and that each step minimises its proximal model.

Writes figure2.png|pdf ((a) f, the planes, the steps; (b) each bias's proximal objective and
its minimiser; (c) beta and f(x_2) - f* for every bias between and beyond the two) and
table.md. There are no training runs (``sweep.<scale>: []`` in configs/experiment/figure2.yaml):
the figure is the same at every scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from matplotlib.figure import Figure

from amm.data.convex import LogisticObjective, lambda_max_gram, solve_fstar
from amm.optim.beta import adaptive_beta
from experiments._figures import legend_unique, save_figure

# The function: 1-D logistic regression, features A, labels Y, L2 coefficient L2.
A = np.array([1.0, 2.0, -1.5, 0.5, -0.5])
Y = np.array([1.0, 1.0, -1.0, -1.0, 1.0])
L2 = 0.1
X0 = -1.0  # the starting point
LR_SCALE = 0.5  # lr = c / L: the undershooting regime, where momentum has to carry the step
LAM, BETA_MIN, BETA_MAX = 0.1, 0.0, 0.9  # the paper's AM-MGD settings
COLORS = {"AM (over-estimating)": "tab:red", "bundle (under-estimating)": "tab:blue"}


@dataclass
class Step:
    """One bias of the momentum plane and the step its model gives."""

    name: str
    bias: float  # b: the momentum plane is f(x_1) + b + d (x - x_1)
    beta: float
    x2: float


@dataclass
class Illustration:
    """The function, the first step, and the second step under each bias."""

    obj: LogisticObjective
    fstar: float
    xstar: float
    lr: float
    lam: float
    x0: float
    x1: float
    d: float  # the momentum after the first step: g_0
    g1: float
    steps: list[Step]

    def f(self, x: np.ndarray | float) -> np.ndarray:
        """f at each point of ``x`` (vectorised over the 1-D parameter)."""
        xs = np.atleast_1d(np.asarray(x, dtype=np.float64))
        return np.array([self.obj.value(np.array([v])) for v in xs])

    def grad(self, x: float) -> float:
        return float(self.obj.grad(np.array([x]))[0])

    def momentum_plane(self, step: Step, x: np.ndarray) -> np.ndarray:
        return float(self.f(self.x1)[0]) + step.bias + self.d * (x - self.x1)

    def gradient_plane(self, x: np.ndarray) -> np.ndarray:
        return float(self.f(self.x1)[0]) + self.g1 * (x - self.x1)

    def model(self, step: Step, x: np.ndarray) -> np.ndarray:
        """The model with beta clipped to [beta_min, beta_max]: the maximum over those weights of
        (1 - beta) gradient plane + beta momentum plane, which is linear in beta, so it is the
        larger of the two ends (with [0, 1] it would be max(gradient plane, momentum plane))."""
        grad, mom = self.gradient_plane(x), self.momentum_plane(step, x)
        return np.maximum(*((1 - b) * grad + b * mom for b in (BETA_MIN, BETA_MAX)))

    def prox_objective(self, step: Step, x: np.ndarray) -> np.ndarray:
        """The proximal problem of docs/algorithm.md section 1 with this bias: the model, the
        proximal term and the pull toward the momentum step."""
        u = x - self.x1
        prox = u**2 / (2 * self.lr) + self.lam * (u + self.lr * self.d) ** 2 / (2 * self.lr)
        return self.model(step, x) + prox

    def step(self, name: str, bias: float) -> Step:
        beta = beta_of(bias, self.g1, self.d, self.lr, self.lam)
        d2 = ((beta + self.lam) * self.d + (1 - beta) * self.g1) / (1 + self.lam)
        return Step(name, bias, beta, self.x1 - self.lr * d2)


def beta_of(bias: float, g: float, d: float, lr: float, lam: float) -> float:
    """beta by ``adaptive_beta`` with the eta-weighted sums it takes (one parameter group)."""

    def t(v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float64)

    beta = adaptive_beta(
        t(bias),
        t(lr * (g + lam * d) * (g - d)),
        t(lr * (g - d) ** 2),
        lam=lam,
        beta_min=BETA_MIN,
        beta_max=BETA_MAX,
    )
    return float(beta)


def illustration(x0: float = X0, lr_scale: float = LR_SCALE, lam: float = LAM) -> Illustration:
    """The model at the second iterate of AM-MGD on the 1-D problem, under both biases."""
    X = sp.csr_matrix(A.reshape(-1, 1))
    obj = LogisticObjective(X, Y, L2, num_classes=2)
    smoothness = 0.25 * lambda_max_gram(X) / len(A) + L2  # as LogisticRegressionProblem
    lr = lr_scale / smoothness
    sol = solve_fstar(obj)
    ill = Illustration(obj, sol.fstar, float(sol.w[0]), lr, lam, x0, 0.0, 0.0, 0.0, [])
    ill.d = ill.grad(x0)  # the first step has no momentum: d_1 = g_0
    ill.x1 = x0 - lr * ill.d
    ill.g1 = ill.grad(ill.x1)
    f0, f1 = float(ill.f(x0)[0]), float(ill.f(ill.x1)[0])
    ill.steps = [
        ill.step("AM (over-estimating)", f0 - f1),
        ill.step("bundle (under-estimating)", f0 - f1 - lr * ill.d**2),
    ]
    return ill


def draw(ill: Illustration) -> Figure:
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax, ax_prox, ax_beta = fig.subplots(1, 3, gridspec_kw={"width_ratios": [5, 4, 4]})
    pts = [ill.x0, ill.x1, ill.xstar, *(s.x2 for s in ill.steps)]
    lo, hi = min(pts) - 0.6, max(pts) + 0.6
    x = np.linspace(lo, hi, 400)
    fx = ill.f(x)

    # (a) f, the gradient plane, both momentum planes, and the steps.
    ax.plot(x, fx, color="black", lw=2.2, label="f (1-D logistic regression)")
    ax.plot(x, ill.gradient_plane(x), color="0.55", lw=1.2, label="gradient plane at $x_1$")
    for s in ill.steps:
        color = COLORS[s.name]
        ax.plot(x, ill.momentum_plane(s, x), color=color, lw=1.5, ls="--", label=f"{s.name} plane")
        y2 = float(ill.f(s.x2)[0])
        ax.plot([s.x2], [y2], "o", color=color, ms=8, zorder=5)
        left = s.x2 < max(t.x2 for t in ill.steps)  # labels side by side, never overlapping
        ax.annotate(
            f"$x_2$ (β={s.beta:.2f})",
            (s.x2, y2),
            xytext=(-4 if left else 4, 10),
            textcoords="offset points",
            ha="right" if left else "left",
            color=color,
            fontsize=9,
        )
    # where each plane is pinned: AM's through (x_1, f(x_0)), the bundle's through (x_0, f(x_0))
    f0 = float(ill.f(ill.x0)[0])
    ax.plot([ill.x1], [f0], "o", mfc="white", color=COLORS["AM (over-estimating)"], ms=7, zorder=5)
    ax.annotate(
        "f($x_0$) above $x_1$",
        (ill.x1, f0),
        xytext=(8, 2),
        textcoords="offset points",
        color=COLORS["AM (over-estimating)"],
        fontsize=9,
    )
    for name, xv in (("$x_0$", ill.x0), ("$x_1$", ill.x1)):
        yv = float(ill.f(xv)[0])
        ax.plot([xv], [yv], "s", color="black", ms=6, zorder=5)
        ax.annotate(name, (xv, yv), xytext=(6, 6), textcoords="offset points", fontsize=10)
    ax.annotate(
        "", (ill.x1, float(ill.f(ill.x1)[0])), (ill.x0, float(ill.f(ill.x0)[0])),
        arrowprops={"arrowstyle": "->", "color": "black", "lw": 1},
    )  # fmt: skip
    ax.plot([ill.xstar], [ill.fstar], "*", color="goldenrod", ms=13, zorder=5, label="minimiser")
    span = fx.max() - fx.min()
    ax.set(
        xlim=(lo, hi),
        ylim=(fx.min() - 0.35 * span, fx.max() + 0.1 * span),
        xlabel="x",
        ylabel="f(x)",
        title="(a) f and the model's planes at $x_1$",
    )
    ax.legend(fontsize=8, loc="upper right")

    # (b) each bias's proximal objective and its minimiser (= the heavy-ball step).
    xp = np.linspace(ill.x1 - 0.3, max(s.x2 for s in ill.steps) + 0.6, 400)
    for s in ill.steps:
        color = COLORS[s.name]
        ax_prox.plot(xp, ill.prox_objective(s, xp), color=color, lw=1.6, label=s.name)
        ax_prox.axvline(s.x2, color=color, lw=0.8, ls=":", label="its minimiser $x_2$")
        ax_prox.plot([s.x2], ill.prox_objective(s, np.array([s.x2])), "o", color=color, ms=7)
    ax_prox.axvline(ill.x1, color="black", lw=0.8, label="$x_1$")
    ax_prox.text(ill.x1, ax_prox.get_ylim()[1], " $x_1$", va="top", fontsize=9)
    ax_prox.set(
        xlabel="x",
        ylabel="model + proximal terms",
        title="(b) each model's proximal step (its minimiser)",
    )
    legend_unique(ax_prox, fontsize=8)

    # (c) beta and f(x_2) - f* for every bias from below the bundle one to above AM's.
    b_bundle, b_am = ill.steps[1].bias, ill.steps[0].bias
    margin = 0.3 * (b_am - b_bundle)
    biases = np.linspace(b_bundle - margin, b_am + margin, 301)
    sweep = [ill.step("", float(b)) for b in biases]
    gaps = ill.f(np.array([s.x2 for s in sweep])) - ill.fstar
    ax_beta.plot(biases, [s.beta for s in sweep], color="tab:purple", lw=1.8, label="β")
    ax_beta.set(xlabel="bias b of the momentum plane", ylabel="β", ylim=(-0.05, 1.0))
    ax_gap = ax_beta.twinx()
    ax_gap.plot(biases, gaps, color="tab:green", lw=1.5, ls="--", label="f($x_2$) − f*")
    ax_gap.set(ylabel="f($x_2$) − f*", ylim=(0, 1.1 * max(gaps)))
    for s in ill.steps:
        ax_beta.axvline(s.bias, color=COLORS[s.name], lw=1, ls=":", label="each model's bias")
        ax_beta.plot([s.bias], [s.beta], "o", color=COLORS[s.name], ms=7, zorder=5)
        ax_beta.text(s.bias, 0.96, f" {s.name.split()[0]}", color=COLORS[s.name], fontsize=9)
    ax_beta.axvline(0.0, color="0.7", lw=0.8, label="b = 0")
    first: dict[str, object] = {}  # one entry per label, over both y axes
    for line in [*ax_beta.get_lines(), *ax_gap.get_lines()]:
        if not str(line.get_label()).startswith("_"):
            first.setdefault(str(line.get_label()), line)
    ax_beta.legend(list(first.values()), list(first), fontsize=8, loc="center left")
    ax_beta.set_title("(c) β and the gap after the step, by bias")
    fig.suptitle(
        f"Over- vs under-estimating momentum plane: AM-MGD step 2 from $x_0$={ill.x0:g}, "
        f"lr = {LR_SCALE:g}/L, λ = {ill.lam:g}, β ∈ [{BETA_MIN:g}, {BETA_MAX:g}] "
        "(β = adaptive_beta of amm.optim)",
        fontsize=11,
    )
    return fig


def table(ill: Illustration) -> str:
    f0, f1 = (float(ill.f(v)[0]) - ill.fstar for v in (ill.x0, ill.x1))
    rows = [
        "# Figure 2: the momentum plane's bias, the β it gives, and the step",
        "",
        f"1-D logistic regression (a = {A.tolist()}, y = {Y.tolist()}, l2 = {L2:g}); "
        f"f* = {ill.fstar:.6f} at x* = {ill.xstar:.4f}; lr = {LR_SCALE:g}/L = {ill.lr:.4f}; "
        f"λ = {ill.lam:g}; β clipped to [{BETA_MIN:g}, {BETA_MAX:g}].",
        f"x_0 = {ill.x0:g} (f − f* = {f0:.4g}), x_1 = {ill.x1:.4f} (f − f* = {f1:.4g}), "
        f"d = g_0 = {ill.d:.4f}, g_1 = {ill.g1:.4f}.",
        "",
        "| momentum plane | bias b | β | x_2 | f(x_2) − f* |",
        "|---|---|---|---|---|",
    ]
    for s in ill.steps:
        gap = float(ill.f(s.x2)[0]) - ill.fstar
        rows.append(f"| {s.name} | {s.bias:.4f} | {s.beta:.3f} | {s.x2:.4f} | {gap:.4g} |")
    rows += [
        "",
        "Deterministic and analytic: no training runs, the same at every scale.",
    ]
    return "\n".join(rows) + "\n"


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    if run_dirs:
        raise ValueError(f"figure2 has no training runs, got {len(run_dirs)} run directories")
    out_dir.mkdir(parents=True, exist_ok=True)
    ill = illustration()
    fig = draw(ill)
    save_figure(fig, out_dir, "figure2")
    (out_dir / "table.md").write_text(table(ill))
