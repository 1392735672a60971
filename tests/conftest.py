"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Without a GPU, Triton runs only in its interpreter, and it must be chosen before Triton is
# imported: the fused optimizer kernels (tests/test_optim_fused.py) then run on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder ``<repo>/../shared/data`` (read-only), else skip."""
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if not (path / "libsvm").is_dir():
        pytest.skip(f"shared data folder not found at {path} (expected {path / 'libsvm'})")
    return path


C4_SAMPLE = "c4_en_sample/c4-sample.00000-of-00001.json.gz"
C4_TOKENIZER = "tokenizer_llama2_32k/tokenizer.model"


@pytest.fixture(scope="session")
def c4_files(shared_data: Path) -> dict[str, str]:
    """The shared C4 sample and LLaMA tokenizer as ``C4Data`` arguments, else skip."""
    sample, tokenizer = shared_data / C4_SAMPLE, shared_data / C4_TOKENIZER
    if not (sample.is_file() and tokenizer.is_file()):
        pytest.skip(f"C4 sample or tokenizer missing in {shared_data}")
    return {"data_files": str(sample), "tokenizer": str(tokenizer)}


@pytest.fixture(scope="session", autouse=True)
def _shared_data_dir_by_default() -> Iterator[None]:
    """Set ``AMM_DATA_DIR`` to the shared folder when unset, as ``make test`` does (Makefile).

    Experiments whose smoke runs read real files (the C4 sample) then also run under a plain
    ``pytest``; an explicitly set ``AMM_DATA_DIR`` is left alone.
    """
    path = (REPO_ROOT.parent / "shared" / "data").resolve()
    if os.environ.get("AMM_DATA_DIR") or not (path / "libsvm").is_dir():
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AMM_DATA_DIR", str(path))
        yield


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads, and a fresh per-test cache (stand-in data sets, tokenized C4) in tmp_path."""
    monkeypatch.setenv("AMM_OFFLINE", "1")
    monkeypatch.setenv("AMM_CACHE_DIR", str(tmp_path / "amm-cache"))
