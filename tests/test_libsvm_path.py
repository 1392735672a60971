"""Any svmlight file from the command line (issue 14, item 3): ``dataset=libsvm dataset.path=FILE``.

Real files from the shared data folder; compressed copies are written to ``tmp_path``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file
from suite_helpers import run_amm, subprocess_env, summary

from amm.data.convex import LogisticRegressionProblem
from amm.data.libsvm import DataNotFoundError, load_dataset, load_path
from experiments.reproduce import main as reproduce_main

COMPRESSORS = {"": None, ".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}


def copy_as(src: Path, dest: Path) -> Path:
    """``src`` written to ``dest``, compressed by ``dest``'s suffix (.bz2/.gz/.xz) or plain."""
    opener = COMPRESSORS.get(dest.suffix)
    if opener is None:
        shutil.copyfile(src, dest)
    else:
        with opener(dest, "wb") as out:
            out.write(src.read_bytes())
    return dest


@pytest.fixture
def heart(shared_data: Path) -> Path:
    return shared_data / "libsvm" / "heart_scale" / "heart_scale"


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_any_compression_reads_as_the_registered_set(
    heart: Path, shared_data: Path, tmp_path: Path, suffix: str
) -> None:
    path = copy_as(heart, tmp_path / f"heart_scale{suffix}")
    spec, (X, y), test = load_path(path)
    X_ref, y_ref = load_dataset("heart_scale", data_dir=shared_data)
    assert test is None
    assert (spec.name, spec.task, spec.num_features, spec.labels) == (
        "heart_scale",
        "binary",
        13,
        (-1.0, 1.0),
    )
    assert (X != X_ref).nnz == 0 and np.array_equal(y, y_ref)


def test_zero_one_labels_and_multiclass_with_test_file(shared_data: Path) -> None:
    _, (_, y), _ = load_path(shared_data / "libsvm" / "svmguide1" / "svmguide1")  # 0/1 labels
    assert set(np.unique(y)) == {-1.0, 1.0}
    dna = shared_data / "libsvm" / "dna.scale"
    spec, (X, y), test = load_path(dna / "dna.scale", dna / "dna.scale.t")
    assert (spec.task, spec.num_classes, spec.num_features) == ("multiclass", 3, 180)
    assert test is not None
    for (a, b), split in zip([(X, y), test], ["train", "test"], strict=True):
        ref_X, ref_y = load_dataset("dna.scale", split, data_dir=shared_data)
        assert (a != ref_X).nnz == 0 and np.array_equal(b, ref_y)


def test_zero_based_indices_are_detected(heart: Path, tmp_path: Path) -> None:
    spec, (X, y), _ = load_path(heart)
    raw_y = np.where(y > 0, 1, -1)
    dump_svmlight_file(X, raw_y, str(tmp_path / "zero_based"), zero_based=True)
    spec0, (X0, y0), _ = load_path(tmp_path / "zero_based")
    assert spec0.zero_based and not spec.zero_based
    assert X0.shape == X.shape and (X0 != X).nnz == 0 and np.array_equal(y0, y)


@pytest.mark.parametrize("suffix", ["", ".xz"])
def test_malformed_line_is_named(heart: Path, tmp_path: Path, suffix: str) -> None:
    lines = heart.read_text().splitlines()
    lines[6] = "+1 1:0.5 3:abc"
    src = tmp_path / "broken_src"
    src.write_text("\n".join(lines) + "\n")
    path = copy_as(src, tmp_path / f"broken{suffix}")
    with pytest.raises(ValueError, match="corrupt svmlight file") as err:
        load_path(path)
    assert str(path) in str(err.value) and "line 7" in str(err.value)


def test_bad_inputs_are_clear_errors(heart: Path, tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"dataset.path=.*no such file"):
        load_path(tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match=r"dataset.test_path=.*no such file"):
        load_path(heart, tmp_path / "missing.t")
    one_class = tmp_path / "one_class"
    one_class.write_text("1 1:0.5\n1 2:0.3\n")
    with pytest.raises(ValueError, match="at least two classes"):
        load_path(one_class)
    test = tmp_path / "other_labels.t"
    test.write_text("3 1:0.5\n")
    with pytest.raises(ValueError, match=r"unexpected label values \[3.0\]"):
        load_path(heart, test)
    with pytest.raises(ValueError, match="test_path needs dataset.path"):
        LogisticRegressionProblem(test_path=test, compute_fstar=False)


def test_problem_from_path_matches_the_named_set(
    heart: Path, shared_data: Path, tmp_path: Path
) -> None:
    path = copy_as(heart, tmp_path / "heart_scale.gz")
    by_path = LogisticRegressionProblem(path=path, cache_dir=tmp_path / "cache")
    by_name = LogisticRegressionProblem("heart_scale", shared_data, cache_dir=tmp_path / "cache")
    assert by_path.source_files() == [path]
    assert by_path.info["path"] == str(path) and by_path.info["dataset"] == "heart_scale"
    for key in ("fstar", "lr", "l2", "num_features", "n_train", "fstar_grad_norm"):
        assert by_path.info[key] == by_name.info[key], key


def test_amm_run_with_a_path_and_its_fingerprint(heart: Path, tmp_path: Path) -> None:
    """End to end: a run on a file given by path; changing the file's content is refused."""
    data = copy_as(heart, tmp_path / "my_set.bz2")
    run_dir = tmp_path / "run"
    args = ["dataset=libsvm", f"dataset.path={data}", "trainer.max_steps=5", "logger.mode=disabled"]
    env = subprocess_env(tmp_path)
    run_amm(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env)
    result = summary(run_dir)
    assert result["step"] == 5 and result["objective_gap"] > 0
    assert result["fstar"] == pytest.approx(result["loss"] - result["objective_gap"])
    assert 0 < result["fstar_grad_norm"] < 1e-8  # how exact f* is, recorded with the run
    assert str(data.resolve()) in (run_dir / "fingerprint.json").read_text()

    # Same path, other content (half the rows): the run is not resumed silently.
    lines = heart.read_text().splitlines()
    copy_as_src = tmp_path / "half"
    copy_as_src.write_text("\n".join(lines[:135]) + "\n")
    copy_as(copy_as_src, data)
    proc = run_amm(
        *args, "trainer.max_steps=8", f"hydra.run.dir={run_dir}", cwd=tmp_path, env=env, check=False
    )
    assert proc.returncode != 0
    assert "my_set.bz2: changed since the run read it" in proc.stdout + proc.stderr


def test_fstar_stopped_short_is_a_warning_and_recorded(
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14: a solver capped at one Newton iteration per attempt warns, records the gradient
    norm it reached next to f*, and the run goes on; the cap lifted, f* is solved again."""
    from amm.data import convex

    kwargs = {"data_dir": shared_data, "cache_dir": tmp_path / "cache"}
    exact = LogisticRegressionProblem("heart_scale", **kwargs).info
    (tmp_path / "cache").rename(tmp_path / "exact-cache")
    monkeypatch.setattr(convex, "FSTAR_MAX_ITER", 1)
    short = LogisticRegressionProblem("heart_scale", **kwargs)
    assert short.fstar_result is not None and not short.fstar_result.converged
    assert "f* solver stopped short" in caplog.text
    assert short.info["fstar_grad_norm"] > 1e-6 > exact["fstar_grad_norm"]
    assert short.info["fstar"] > exact["fstar"]  # a point of f above the minimum
    again = LogisticRegressionProblem("heart_scale", **kwargs)  # same settings: from the cache
    assert again.fstar_result is not None and again.fstar_result.cached
    assert again.info["fstar"] == short.info["fstar"]
    monkeypatch.setattr(convex, "FSTAR_MAX_ITER", 2000)
    solved = LogisticRegressionProblem("heart_scale", **kwargs)  # the short entry is not reused
    assert solved.fstar_result is not None and not solved.fstar_result.cached
    assert solved.info["fstar"] == pytest.approx(exact["fstar"], rel=1e-14)


def dry_run_dirs(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """The run directories ``experiments.reproduce --dry-run`` lists (it runs nothing)."""
    reproduce_main([*args, "--dry-run"])
    out = capsys.readouterr().out
    return [line.strip() for line in out.splitlines() if line.startswith("  runs/")]


def test_figure3_sweep_runs_a_file_given_by_path_once_per_setting(
    heart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """dataset.path replaces the sweep blocks' list of built-in sets (dataset.name): without
    that, figure3 reduced ran the same file once per set name, 7 identical runs each."""
    monkeypatch.chdir(tmp_path)
    data = copy_as(heart, tmp_path / "my_heart.xz")
    named = dry_run_dirs(capsys, "figure3", "--scale", "reduced")
    by_path = dry_run_dirs(capsys, "figure3", "--scale", "reduced", f"dataset.path={data}")
    # 7 sets x (AM-MGD at 5 step sizes + Adam + MGD at 6 momenta x 5 step sizes)
    assert len(named) == 7 * (5 + 1 + 6 * 5) and len(set(named)) == len(named)
    assert len(by_path) == 5 + 1 + 6 * 5 and len(set(by_path)) == len(by_path)
    assert all("dataset.path=" in d and "my_heart.xz" in d for d in by_path)
    assert not any("dataset.name" in d for d in by_path)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # about 20 s: figure3's smoke sweep in subprocesses
def test_figure3_sweep_on_a_file_given_by_path(heart: Path, tmp_path: Path) -> None:
    data = copy_as(heart, tmp_path / "my_heart.xz")
    cmd = [sys.executable, "-m", "experiments.reproduce", "figure3", "--scale", "smoke"]
    # the path replaces the sweep's list of sets (so the file runs once); the figure names the
    # set by its file
    cmd += [f"dataset.path={data}"]
    env = subprocess_env(tmp_path)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "results" / "figure3" / "smoke" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| my_heart |") for r in rows)
    assert not any("breast_cancer" in r or "unused" in r for r in rows)
    fingerprints = list((tmp_path / "runs" / "figure3" / "smoke").glob("*/fingerprint.json"))
    assert fingerprints and all(str(data.resolve()) in f.read_text() for f in fingerprints)
