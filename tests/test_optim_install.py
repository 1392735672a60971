"""`pip install amm` is the optimizers: the wheel requires torch and nothing else (the
reproduction suite's dependencies are in the `suite` extra), and amm.optim works in a clean
virtual environment that has only torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

SMOKE = """
import sys
from importlib.util import find_spec
import torch
from amm.optim import AMSGD, AMAdamW
for name in ("hydra", "omegaconf", "wandb", "sklearn", "matplotlib", "transformers"):
    assert find_spec(name) is None, name + " was installed with the optimizers"
model = torch.nn.Linear(4, 1)
for cls in (AMSGD, AMAdamW):
    opt = cls(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    assert opt.last_beta is not None
print("optimizers ok")
"""


def _build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (building in the checkout would leave build/)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("amm", "experiments"):
        if (REPO / package).is_dir():
            shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("*.pyc"))
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*cmd, "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("amm-*.whl")
    with zipfile.ZipFile(wheel) as zf:  # the library alone: no top-level `experiments`
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert all(t == "amm" or t.endswith(".dist-info") for t in tops), tops
    return wheel


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        lines = zf.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


@pytest.mark.slow
def test_wheel_requires_only_torch(tmp_path):
    requirements = _requirements(_build_wheel(tmp_path))
    required = [r for r in requirements if "extra ==" not in r]
    assert len(required) == 1 and required[0].startswith("torch"), required
    suite = [r for r in requirements if 'extra == "suite"' in r]
    assert any(r.startswith("hydra-core") for r in suite), requirements


@pytest.mark.slow
def test_optimizers_work_in_a_clean_venv_with_only_torch(tmp_path):
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    torch_version = torch.__version__.split("+")[0]
    for target in (f"torch=={torch_version}", str(wheel)):
        done = subprocess.run(
            [python, "-m", "pip", "install", "-q", target],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(
        [python, "-c", SMOKE], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optimizers ok" in done.stdout


def test_the_wheel_holds_the_library_only() -> None:
    """`pip install amm` installs the package `amm` alone: no top-level `experiments` (the
    paper runs from a clone), as setuptools finds packages with pyproject.toml's settings."""
    import tomllib
    from setuptools import find_packages

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = find_packages(where=str(REPO), **find["find"])
    assert "amm" in packages and "amm.optim" in packages
    assert all(p == "amm" or p.startswith("amm.") for p in packages), packages


def test_the_library_does_not_import_the_paper() -> None:
    """No module of amm/ imports `experiments`, neither by an import statement nor by name
    (importlib.import_module / __import__ with a string): the paper registers nothing there."""
    import ast

    found = []
    for path in sorted((REPO / "amm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and node.args:
                first = node.args[0]
                if isinstance(first, ast.JoinedStr) and first.values:
                    first = first.values[0]  # f"experiments.{name}"
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    func = ast.unparse(node.func)
                    if func.endswith(("import_module", "__import__")):
                        names = [first.value]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "experiments"]
    assert not found, found
