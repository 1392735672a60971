"""The shape of amm.optim that docs/architecture.md promises: no import cycles (top-level or
deferred imports), leaf helpers, and the beta scope reduction as a pure function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from optim_classes import AM_OPTIMIZERS

from amm.optim import AMSGD, AMAdamW, adaptive_beta
from amm.optim.beta import reduce_scope, scope_units, unit_betas

OPTIM = Path(__file__).resolve().parents[1] / "amm" / "optim"


def _imports() -> dict[str, set[str]]:
    """amm.optim module -> the amm.optim modules it imports, anywhere in the file."""
    graph: dict[str, set[str]] = {}
    for path in OPTIM.glob("*.py"):
        name = f"amm.optim.{path.stem}" if path.stem != "__init__" else "amm.optim"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "amm.optim":
                    deps |= {f"amm.optim.{a.name}" for a in node.names}
                elif node.module.startswith("amm.optim."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("amm.optim.")}
        graph[name] = {d for d in deps if (OPTIM / f"{d.rsplit('.', 1)[1]}.py").exists()}
    return graph


def test_no_import_cycles_in_amm_optim():
    graph = _imports()
    graph.pop("amm.optim")  # the package re-exports its modules; none imports the package
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*path, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert not any("amm.optim" in deps for deps in graph.values())


def test_helpers_are_leaves():
    graph = _imports()
    assert graph["amm.optim._tensors"] == set()
    assert graph["amm.optim.beta"] == {"amm.optim._tensors"}
    # each optimizer's kernels depend only on the shared launchers (Triton's, the compiled
    # CPU one), not on the optimizers; the compiled launcher only on torch
    assert graph["amm.optim._compiled"] == set()
    for kernels in ("amm.optim.am_sgd_kernels", "amm.optim.am_adamw_kernels"):
        assert graph[kernels] == {"amm.optim._triton", "amm.optim._compiled"}


def test_every_am_optimizer_is_in_the_shared_test_list():
    assert {AMSGD, AMAdamW} <= set(AM_OPTIMIZERS)


def test_scope_units():
    assert scope_units("global", [0, 0, 2]) == [0, 0, 0]
    assert scope_units("per-group", [0, 0, 2]) == [0, 0, 1]  # groups without grads take no unit
    assert scope_units("per-tensor", [0, 0, 2]) == [0, 1, 2]
    with pytest.raises(ValueError, match="beta_scope"):
        scope_units("layer", [0])


def test_reduce_scope_sums_rows_per_unit():
    rows = torch.tensor(
        [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [100.0, 200.0, 300.0]], dtype=torch.float64
    )
    packed, units = reduce_scope(rows, "global", [0, 1, 1])
    assert units == [0, 0, 0] and packed.tolist() == [[111.0, 222.0, 333.0]]
    packed, units = reduce_scope(rows, "per-group", [0, 1, 1])
    assert units == [0, 1, 1] and packed.tolist() == [[1.0, 2.0, 3.0], [110.0, 220.0, 330.0]]
    packed, units = reduce_scope(rows, "per-tensor", [0, 1, 1])
    assert torch.equal(packed, rows)


def test_unit_betas_applies_each_units_settings():
    packed = torch.tensor([[0.0, 1.0, 4.0], [0.5, 1.0, 2.0], [0.0, -3.0, 1.0]], dtype=torch.float64)
    settings = [(0.1, 0.0, 0.9), (0.0, 0.0, 0.9), (0.1, 0.2, 0.9)]
    beta = unit_betas(packed, settings)
    assert beta.tolist() == pytest.approx([0.25, 0.75, 0.2])  # 1/4; (0.5+1)/2; clipped up
    one = unit_betas(packed[:1], settings[:1])
    assert one.tolist() == pytest.approx([0.25])
    expected = adaptive_beta(
        packed[:, 0], packed[:, 1], packed[:, 2], lam=0.1, beta_min=0.0, beta_max=0.9
    )
    assert torch.equal(unit_betas(packed, [(0.1, 0.0, 0.9)] * 3), expected)
