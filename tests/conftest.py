"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder ``<repo>/../shared/data`` (read-only), else skip."""
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if not (path / "libsvm").is_dir():
        pytest.skip(f"shared data folder not found at {path} (expected {path / 'libsvm'})")
    return path
