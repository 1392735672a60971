"""Deterministic convex problems: LIBSVM loading, objectives, constants, f*, sharding, errors."""

from __future__ import annotations

import bz2
import io
import json
import time
import urllib.error
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from sklearn.datasets import load_svmlight_file
from sklearn.linear_model import LogisticRegression

from amm.data import libsvm
from amm.data.convex import (
    LogisticObjective,
    LogisticRegressionProblem,
    QuadraticProblem,
    cached_fstar,
    lambda_max_gram,
)
from amm.data.libsvm import DATASETS, DataNotFoundError, load_dataset
from amm.models.convex import LinearClassifier, QuadraticModel

# (rows, features, {mapped label: count}) as documented in each PROVENANCE.md.
DOCUMENTED = {
    "a8a": (22_696, 123, {-1: 17_190, 1: 5_506}),
    "a9a": (32_561, 123, {-1: 24_720, 1: 7_841}),
    "w8a": (49_749, 300, {-1: 48_270, 1: 1_479}),
    "german.numer_scale": (1_000, 24, {-1: 700, 1: 300}),
    "mushrooms": (8_124, 112, {-1: 3_916, 1: 4_208}),  # raw labels 1/2
    "phishing": (11_055, 68, {-1: 4_898, 1: 6_157}),  # raw labels 0/1
    "svmguide1": (3_089, 4, {-1: 1_089, 1: 2_000}),  # raw labels 0/1
    "heart_scale": (270, 13, {-1: 150, 1: 120}),
    "dna.scale": (2_000, 180, {0: 464, 1: 485, 2: 1_051}),  # raw labels 1/2/3
    "adult_tick": (32_561, 123, {-1: 24_720, 1: 7_841}),
}


def label_counts(y: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(y, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def flat_grad(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.zero_grad()
    loss, _ = model(batch)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def set_weight(model: LinearClassifier, w: np.ndarray) -> None:
    with torch.no_grad():
        model.linear.weight.copy_(torch.from_numpy(w).reshape(model.linear.weight.shape))


def full_batch(problem: LogisticRegressionProblem) -> dict[str, torch.Tensor]:
    (batch,) = list(problem.train_batches(0))
    return batch


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every download fail at once (as offline), recording the URLs asked for."""
    asked: list[str] = []

    def fail(url: str, timeout: float) -> None:
        asked.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(libsvm.urllib.request, "urlopen", fail)
    monkeypatch.delenv(libsvm.OFFLINE_ENV, raising=False)
    return asked


@pytest.fixture()
def problem_kwargs(shared_data: Path, tmp_path: Path) -> dict[str, object]:
    return {"data_dir": shared_data, "cache_dir": tmp_path / "cache"}


# --------------------------------------------------------------------------- loading


def test_registry_covers_shared_data(shared_data: Path) -> None:
    on_disk = {p.name for p in (shared_data / "libsvm").iterdir() if p.is_dir()}
    assert on_disk <= set(DATASETS), on_disk - set(DATASETS)
    assert set(DOCUMENTED) == on_disk
    for name in on_disk:
        spec = DATASETS[name]
        for entry in (spec.train, spec.test):
            if entry is not None:
                assert (shared_data / "libsvm" / name / entry.file).is_file(), entry.file
                assert entry.url.startswith("https://"), entry.url


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_shared_sets_load_with_documented_shape_and_labels(name: str, shared_data: Path) -> None:
    rows, features, counts = DOCUMENTED[name]
    X, y = load_dataset(name, data_dir=shared_data, allow_download=False)
    assert X.shape == (rows, features)
    assert X.dtype == np.float64
    assert label_counts(y) == counts
    if DATASETS[name].task == "binary":
        assert y.dtype == np.float64
    else:
        assert y.dtype == np.int64


def test_data_dir_from_env(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(libsvm.DATA_DIR_ENV, str(shared_data))
    X, _ = load_dataset("heart_scale", allow_download=False)
    assert X.shape == (270, 13)


def test_adult_tick_equals_a9a(shared_data: Path) -> None:
    Xa, ya = load_dataset("a9a", data_dir=shared_data, allow_download=False)
    Xt, yt = load_dataset("adult_tick", data_dir=shared_data, allow_download=False)
    assert (Xa != Xt).nnz == 0  # 0-based indices were read as such
    np.testing.assert_array_equal(ya, yt)
    X_test, y_test = load_dataset("adult_tick", "test", data_dir=shared_data)
    assert X_test.shape == (16_281, 123)
    assert label_counts(y_test) == {-1: 12_435, 1: 3_846}


def test_dna_scale_is_multiclass_with_test_split(problem_kwargs: dict[str, object]) -> None:
    X_test, y_test = load_dataset("dna.scale", "test", data_dir=problem_kwargs["data_dir"])
    assert X_test.shape == (1_186, 180)
    assert label_counts(y_test) == {0: 303, 1: 280, 2: 603}
    problem = LogisticRegressionProblem("dna.scale", **problem_kwargs)
    assert problem.info["num_classes"] == 3 and problem.info["task"] == "multiclass"
    (batch,) = problem.eval_batches()
    assert batch["x"].shape == (1_186, 180) and batch["y"].dtype == torch.long
    model = LinearClassifier(problem.info)
    assert model.linear.weight.shape == (3, 180)
    loss, metrics = model(batch)
    assert loss.item() == pytest.approx(np.log(3), abs=1e-12)  # uniform prediction at w = 0
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_breast_cancer_loads_without_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.setenv(libsvm.DATA_DIR_ENV, str(tmp_path / "empty"))
    X, y = load_dataset("breast_cancer")
    assert X.shape == (569, 30)
    assert label_counts(y) == {-1: 212, 1: 357}
    dense = X.toarray()
    np.testing.assert_allclose(dense.mean(axis=0), 0.0, atol=1e-12)  # standardised
    np.testing.assert_allclose(dense.std(axis=0), 1.0, atol=1e-12)
    problem = LogisticRegressionProblem(cache_dir=tmp_path / "cache")  # the default data set
    assert problem.info["dataset"] == "breast_cancer"
    assert problem.eval_batches() is None
    assert no_network == [] and not (tmp_path / "empty").exists()


# --------------------------------------------------------------------------- objective


def test_binary_objective_and_gradient_match_numpy(
    shared_data: Path, problem_kwargs: dict[str, object]
) -> None:
    X, raw = load_svmlight_file(str(shared_data / "libsvm/heart_scale/heart_scale"), n_features=13)
    A, y = X.toarray(), np.where(raw > 0, 1.0, -1.0)
    l2 = 0.05
    problem = LogisticRegressionProblem("heart_scale", l2=l2, **problem_kwargs)
    model = LinearClassifier(problem.info)
    w = np.random.default_rng(0).standard_normal(13)
    set_weight(model, w)
    batch = full_batch(problem)
    loss, metrics = model(batch)

    margins = y * (A @ w)
    expected = np.mean(np.logaddexp(0.0, -margins)) + 0.5 * l2 * w @ w
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(np.sign(A @ w) == y))
    expected_grad = -A.T @ (y / (1.0 + np.exp(margins))) / len(y) + l2 * w
    np.testing.assert_allclose(flat_grad(model, batch).numpy(), expected_grad, rtol=1e-12)


def test_multiclass_objective_matches_numpy(problem_kwargs: dict[str, object]) -> None:
    problem = LogisticRegressionProblem("dna.scale", l2=0.01, **problem_kwargs)
    X, y = load_dataset("dna.scale", data_dir=problem_kwargs["data_dir"])
    A = X.toarray()
    model = LinearClassifier(problem.info)
    W = 0.3 * np.random.default_rng(1).standard_normal((3, 180))
    set_weight(model, W)
    loss, metrics = model(full_batch(problem))

    Z = A @ W.T
    m = Z.max(axis=1, keepdims=True)
    log_probs = Z - m - np.log(np.exp(Z - m).sum(axis=1, keepdims=True))
    expected = -np.mean(log_probs[np.arange(len(y)), y]) + 0.005 * np.sum(W**2)
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(Z.argmax(axis=1) == y))


def test_float32_problem_and_model(problem_kwargs: dict[str, object]) -> None:
    problem = LogisticRegressionProblem("heart_scale", dtype="float32", **problem_kwargs)
    batch = full_batch(problem)
    assert batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.float32
    model = LinearClassifier(problem.info)
    assert model.linear.weight.dtype == torch.float32
    assert not model.linear.weight.any()  # zero init
    loss, _ = model(batch)
    assert loss.item() == pytest.approx(np.log(2), rel=1e-6)
    assert isinstance(problem.info["fstar"], float)  # f* is still solved in float64


# --------------------------------------------------------------------------- constants


def hvp_quadratic_forms(model: LinearClassifier, batch: dict, directions: torch.Tensor) -> list:
    """v^T H v / ||v||^2 of the model's objective at its current weight, via autograd."""
    w0 = model.linear.weight.detach().clone()

    def f(w: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {"linear.weight": w}, (batch,))[0]

    out = []
    for v in directions:
        v = v.reshape(w0.shape)
        _, hv = torch.autograd.functional.hvp(f, w0, v)
        out.append(float((v * hv).sum() / (v * v).sum()))
    return out


@pytest.mark.parametrize(
    "name", ["heart_scale", "german.numer_scale", pytest.param("dna.scale", marks=pytest.mark.slow)]
)
def test_smoothness_bound_holds(name: str, problem_kwargs: dict[str, object]) -> None:
    problem = LogisticRegressionProblem(name, compute_fstar=False, **problem_kwargs)
    L = problem.info["smoothness"]
    assert problem.info["lr"] == pytest.approx(1.0 / L)
    model = LinearClassifier(problem.info)
    batch = full_batch(problem)
    gen = torch.Generator().manual_seed(0)
    size = model.linear.weight.numel()
    for scale in (0.0, 0.5, 3.0):  # w = 0 and random points
        w = scale * torch.randn(size, generator=gen, dtype=torch.float64)
        set_weight(model, w.numpy())
        directions = torch.randn(16, size, generator=gen, dtype=torch.float64)
        forms = hvp_quadratic_forms(model, batch, directions)
        assert max(forms) <= L * (1 + 1e-12), (scale, max(forms), L)
        assert min(forms) >= problem.l2 * (1 - 1e-12)  # strongly convex with modulus l2


def test_binary_smoothness_is_tight_at_zero(problem_kwargs: dict[str, object]) -> None:
    """At w = 0 every sigmoid weight is exactly 1/4, so lambda_max(H(0)) equals L."""
    problem = LogisticRegressionProblem("german.numer_scale", **problem_kwargs)
    X, _ = load_dataset("german.numer_scale", data_dir=problem_kwargs["data_dir"])
    n = X.shape[0]
    hessian = 0.25 * (X.T @ X).toarray() / n + problem.l2 * np.eye(X.shape[1])
    assert np.linalg.eigvalsh(hessian)[-1] == pytest.approx(problem.info["smoothness"], rel=1e-12)
    # the default coefficient follows opt_methods: l2 = L0 / n with L0 the unregularised L
    assert problem.l2 == pytest.approx((problem.info["smoothness"] - problem.l2) / n, rel=1e-12)


def test_lambda_max_gram_sparse_path_matches_dense() -> None:
    import scipy.sparse as sp

    X = sp.random(300, 2100, density=0.01, random_state=0, format="csr")  # d > 2048: Lanczos
    dense = np.linalg.svd(X.toarray(), compute_uv=False)[0] ** 2
    assert lambda_max_gram(X) == pytest.approx(dense, rel=1e-8)


# --------------------------------------------------------------------------- f*


@pytest.mark.parametrize("name", ["heart_scale", "german.numer_scale", "dna.scale"])
def test_fstar_is_minimum_and_cached(name: str, problem_kwargs: dict[str, object]) -> None:
    problem = LogisticRegressionProblem(name, **problem_kwargs)
    result, info = problem.fstar_result, problem.info
    k = info["num_classes"]
    assert not result.cached
    assert info["fstar"] == result.fstar < np.log(k)  # f(0) = log 2 (binary) or log K
    assert result.grad_norm <= 1e-9

    # The torch model agrees: objective at w* is f*, and its gradient there vanishes.
    model = LinearClassifier(info)
    set_weight(model, result.w)
    batch = full_batch(problem)
    assert model(batch)[0].item() == pytest.approx(result.fstar, rel=1e-13)
    assert flat_grad(model, batch).norm().item() <= 1e-8

    # An independent solver cannot do better.
    X, y = load_dataset(name, data_dir=problem_kwargs["data_dir"])
    n = X.shape[0]
    clf = LogisticRegression(C=1.0 / (n * info["l2"]), fit_intercept=False, tol=1e-12)
    clf.set_params(max_iter=10_000).fit(X, y)
    w_sk = clf.coef_ if k > 2 else clf.coef_.ravel()
    f_sk = problem.objective.value(w_sk.ravel())
    assert result.fstar <= f_sk + 1e-13
    assert f_sk - result.fstar <= 1e-10

    # Second call: read from <cache_dir>/fstar, fast, same value.
    start = time.perf_counter()
    again = cached_fstar(name, problem.objective, problem_kwargs["cache_dir"])
    assert again.cached and time.perf_counter() - start < 0.5
    assert again.fstar == result.fstar
    assert len(list((problem_kwargs["cache_dir"] / "fstar").glob("*.json"))) == 1


def test_fstar_cache_is_keyed_and_validated(problem_kwargs: dict[str, object]) -> None:
    cache = problem_kwargs["cache_dir"]
    first = LogisticRegressionProblem("heart_scale", **problem_kwargs)
    other_l2 = LogisticRegressionProblem("heart_scale", l2=1e-2, **problem_kwargs)
    assert not other_l2.fstar_result.cached and other_l2.info["fstar"] != first.info["fstar"]
    files = sorted((cache / "fstar").glob("heart_scale-*.json"))
    assert len(files) == 2

    # A tampered entry is detected (f(w) no longer matches) and recomputed.
    for path in files:
        entry = json.loads(path.read_text())
        entry["fstar"] -= 0.1
        path.write_text(json.dumps(entry))
    again = LogisticRegressionProblem("heart_scale", **problem_kwargs)
    assert not again.fstar_result.cached
    assert again.info["fstar"] == pytest.approx(first.info["fstar"], rel=1e-12)

    # Unreadable JSON is ignored, not fatal.
    for path in files:
        path.write_text("{not json")
    assert LogisticRegressionProblem("heart_scale", **problem_kwargs).info["fstar"] > 0


def test_unwritable_cache_only_warns(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    problem = LogisticRegressionProblem("heart_scale", data_dir=shared_data, cache_dir=blocker)
    assert problem.fstar_result.grad_norm <= 1e-9
    assert "could not write f* cache" in caplog.text


def test_fstar_solver_warns_and_goes_on_when_tolerance_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14: an unreachable target is a warning and a recorded gradient norm, not an error."""
    import scipy.sparse as sp

    from amm.data.convex import solve_fstar

    X = sp.csr_matrix(np.random.default_rng(0).standard_normal((20, 3)))
    obj = LogisticObjective(X, np.where(np.arange(20) % 2, 1.0, -1.0), 1e-3, 2)
    result = solve_fstar(obj, rtol=0.0)
    assert not result.converged and result.target == 0.0
    assert 0 < result.grad_norm < 1e-6  # the best point it reached, with its gradient norm
    assert result.grad_norm == pytest.approx(float(np.linalg.norm(obj.grad(result.w))))
    assert "f* solver stopped short" in caplog.text


# --------------------------------------------------------------------------- sharding


@pytest.mark.parametrize(("name", "world_size"), [("heart_scale", 2), ("dna.scale", 2)])
def test_sharded_gradients_average_to_full_gradient(
    name: str, world_size: int, problem_kwargs: dict[str, object]
) -> None:
    problem = LogisticRegressionProblem(name, compute_fstar=False, **problem_kwargs)
    model = LinearClassifier(problem.info)
    rng = np.random.default_rng(2)
    set_weight(model, rng.standard_normal(model.linear.weight.numel()))
    full = full_batch(problem)
    full_loss = model(full)[0].item()
    full_grad = flat_grad(model, full)

    shards = [list(problem.train_batches(0, r, world_size)) for r in range(world_size)]
    assert all(len(s) == 1 for s in shards)
    shards = [s[0] for s in shards]
    torch.testing.assert_close(torch.cat([s["x"] for s in shards]), full["x"], rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([s["y"] for s in shards]), full["y"], rtol=0, atol=0)
    mean_grad = torch.stack([flat_grad(model, s) for s in shards]).mean(dim=0)
    torch.testing.assert_close(mean_grad, full_grad, rtol=0, atol=1e-12)
    mean_loss = np.mean([model(s)[0].item() for s in shards])
    assert mean_loss == pytest.approx(full_loss, abs=1e-12)


def test_uneven_shards_are_exact(problem_kwargs: dict[str, object]) -> None:
    problem = LogisticRegressionProblem("heart_scale", compute_fstar=False, **problem_kwargs)
    model = LinearClassifier(problem.info)
    set_weight(model, np.linspace(-1, 1, 13))
    shards = [next(iter(problem.train_batches(0, r, 4))) for r in range(4)]  # 270 = 68+68+67+67
    assert [len(s["y"]) for s in shards] == [68, 68, 67, 67]
    mean_grad = torch.stack([flat_grad(model, s) for s in shards]).mean(dim=0)
    torch.testing.assert_close(mean_grad, flat_grad(model, full_batch(problem)), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="rank"):
        next(iter(problem.train_batches(0, 4, 4)))


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as err:
        load_dataset("nope")
    for name in ("a9a", "dna.scale", "breast_cancer"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="heart_scale"):
        LogisticRegressionProblem("nope")


def test_missing_file_offline_raises_with_url_and_path(
    tmp_path: Path, no_network: list[str]
) -> None:
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("a9a", data_dir=tmp_path)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    expected_path = tmp_path / "libsvm" / "a9a" / "a9a"
    url = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/a9a"
    assert str(expected_path) in message and url in message
    assert libsvm.DATA_DIR_ENV in message and "download failed" in message
    assert isinstance(err.value, FileNotFoundError)
    assert no_network == [url]
    assert not any((tmp_path / "libsvm" / "a9a").iterdir())  # no partial file left behind


def test_offline_env_skips_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.setenv(libsvm.OFFLINE_ENV, "1")
    with pytest.raises(DataNotFoundError, match=libsvm.OFFLINE_ENV):
        load_dataset("dna.scale", "test", data_dir=tmp_path)
    assert no_network == []


def test_download_writes_file_atomically(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = (shared_data / "libsvm/heart_scale/heart_scale").read_bytes()
    seen: list[tuple[str, float]] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        seen.append((url, timeout))
        return io.BytesIO(content)

    monkeypatch.setattr(libsvm.urllib.request, "urlopen", fake_urlopen)
    X, y = load_dataset("heart_scale", data_dir=tmp_path)
    assert X.shape == (270, 13) and label_counts(y) == {-1: 150, 1: 120}
    assert seen[0][0].endswith("/binary/heart_scale") and seen[0][1] <= 30
    assert [p.name for p in (tmp_path / "libsvm/heart_scale").iterdir()] == ["heart_scale"]


def test_corrupt_file_names_file_and_line(tmp_path: Path, no_network: list[str]) -> None:
    path = tmp_path / "libsvm" / "heart_scale" / "heart_scale"
    path.parent.mkdir(parents=True)
    path.write_text("+1 1:0.5 2:1\n-1 1:0.25\n+1 1:0.1 3:abc\n")
    with pytest.raises(ValueError, match="corrupt svmlight file") as err:
        load_dataset("heart_scale", data_dir=tmp_path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and "3:abc" in message
    assert "Delete" in message


def test_corrupt_bz2_and_truncated_files(tmp_path: Path, no_network: list[str]) -> None:
    folder = tmp_path / "libsvm" / "adult_tick"
    folder.mkdir(parents=True)
    (folder / "adult.trn.bz2").write_bytes(b"definitely not bzip2")
    with pytest.raises(ValueError, match="adult.trn.bz2"):
        load_dataset("adult_tick", data_dir=tmp_path)
    (folder / "adult.trn.bz2").write_bytes(bz2.compress(b"-1 0:1 5:1\n+1 3:1\n"))
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("adult_tick", data_dir=tmp_path)


def test_unexpected_labels_are_rejected(tmp_path: Path, no_network: list[str]) -> None:
    path = tmp_path / "libsvm" / "mushrooms" / "mushrooms"
    path.parent.mkdir(parents=True)
    path.write_text("1 1:1\n3 2:1\n")  # mushrooms labels are 1/2
    with pytest.raises(ValueError, match="unexpected label values"):
        load_dataset("mushrooms", data_dir=tmp_path)


# --------------------------------------------------------------------------- quadratic


def test_quadratic_problem_spectrum_and_minimizer() -> None:
    problem = QuadraticProblem(dim=50, mu=1e-3, L=2.0, seed=3)
    A = problem.A.numpy()
    np.testing.assert_array_equal(A, A.T)
    eig = np.linalg.eigvalsh(A)
    assert eig[0] == pytest.approx(1e-3, rel=1e-9) and eig[-1] == pytest.approx(2.0, rel=1e-12)
    assert np.all((eig >= 1e-3 * (1 - 1e-9)) & (eig <= 2.0 * (1 + 1e-12)))
    info = problem.info
    assert info["lr"] == 0.5 and info["fstar"] == 0.0 and info["num_features"] == 50
    assert info["smoothness"] == 2.0 and info["strong_convexity"] == 1e-3
    assert problem.eval_batches() is None

    model = QuadraticModel(info)
    assert [p.shape for p in model.parameters()] == [m.shape for m in info["minimizer"]]
    (batch,) = list(problem.train_batches(0))
    loss, metrics = model(batch)
    xs = problem.xstar.numpy()
    assert loss.item() == pytest.approx(0.5 * xs @ A @ xs, rel=1e-13) and metrics == {}
    np.testing.assert_allclose(flat_grad(model, batch).numpy(), -A @ xs, rtol=1e-12)
    with torch.no_grad():
        model.x.copy_(info["minimizer"][0])
    assert model(batch)[0].item() == 0.0


def test_quadratic_is_seeded_and_descends() -> None:
    a, b, c = (
        QuadraticProblem(dim=20, seed=1),
        QuadraticProblem(dim=20, seed=1),
        QuadraticProblem(dim=20, seed=2),
    )
    assert torch.equal(a.A, b.A) and torch.equal(a.xstar, b.xstar)
    assert not torch.equal(a.A, c.A)
    model = QuadraticModel(a.info, init="random", seed=0)
    assert torch.equal(model.x, QuadraticModel(a.info, init="random", seed=0).x)
    (batch,) = list(a.train_batches(0, rank=1, world_size=2))  # same batch on every rank
    losses = []
    for _ in range(5):  # gradient descent with the suggested step 1/L
        model.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            model.x -= a.info["lr"] * model.x.grad
    assert all(x > y for x, y in zip(losses, losses[1:], strict=False))
    with pytest.raises(ValueError):
        QuadraticProblem(dim=5, mu=2.0, L=1.0)
    with pytest.raises(ValueError):
        QuadraticModel(a.info, init="ones")


def test_hydra_instantiation_contract(problem_kwargs: dict[str, object]) -> None:
    """docs/architecture.md section 2: instantiate(cfg.dataset), instantiate(cfg.model, info)."""
    data = hydra.utils.instantiate(
        {"_target_": "amm.data.convex.QuadraticProblem", "dim": 8, "seed": 0}
    )
    model = hydra.utils.instantiate(
        {"_target_": "amm.models.convex.QuadraticModel", "init": "zeros"}, info=data.info
    )
    loss, _ = model(next(iter(data.train_batches(0))))
    assert loss.ndim == 0
    data = hydra.utils.instantiate(
        {
            "_target_": "amm.data.convex.LogisticRegressionProblem",
            "name": "heart_scale",
            "data_dir": str(problem_kwargs["data_dir"]),
            "cache_dir": str(problem_kwargs["cache_dir"]),
        }
    )
    model = hydra.utils.instantiate(
        {"_target_": "amm.models.convex.LinearClassifier"}, info=data.info
    )
    loss, metrics = model(next(iter(data.train_batches(0))))
    assert loss.item() >= data.info["fstar"] and "accuracy" in metrics
