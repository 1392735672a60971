"""Deterministic convex problems of the paper (Sec. 3.1, Sec. 4.1, App. E.1) as data modules.

Both problems follow docs/architecture.md section 2: ``info`` (facts for the model, optimizer
and trainer), ``train_batches(epoch)`` (exactly one full batch per epoch) and
``eval_batches()``. The objective itself is computed by the models in
:mod:`amm.models.convex`; the numpy code here only serves to compute ``f*`` and ``L``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import minimize
from scipy.sparse.linalg import LinearOperator, eigsh
from scipy.special import expit, log_expit, logsumexp, softmax
from scipy.stats import ortho_group

from amm import paths
from amm.atomic import atomic_write_json
from amm.data.libsvm import ensure_file, get_spec, load_dataset, load_path

log = logging.getLogger(__name__)

#: Target for ||grad f(w*)||_2, relative to ||grad f(0)|| (where the solver starts): an absolute
#: target fails on sets whose gradient cannot be computed that accurately in float64. By strong
#: convexity f(w*) - f* <= ||grad f(w*)||^2 / (2 l2); ``info["fstar_grad_norm"]`` reports it.
FSTAR_GRAD_RTOL = 1e-8
#: Newton-CG iterations per attempt (3 attempts, each from the last iterate).
FSTAR_MAX_ITER = 2000
_FSTAR_CACHE_VERSION = 1  # bump when the objective or the solver changes meaning

Batch = dict[str, torch.Tensor]


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float64"`` / ``"float32"`` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    out = getattr(torch, str(dtype), None)
    if not isinstance(out, torch.dtype) or not out.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype name, got {dtype!r}")
    return out


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: the argument, else ``amm.paths.cache_dir()`` (``$AMM_CACHE_DIR``, ...)."""
    return paths.cache_dir(cache_dir)


def lambda_max_gram(X: sp.spmatrix | np.ndarray) -> float:
    """Largest eigenvalue of ``X^T X`` (= squared largest singular value of ``X``).

    Exact dense ``eigvalsh`` on the d x d Gram matrix for moderate d, Lanczos otherwise.
    """
    d = X.shape[1]
    if d <= 2048:
        gram = X.T @ X
        gram = gram.toarray() if sp.issparse(gram) else np.asarray(gram)
        return float(np.linalg.eigvalsh(gram)[-1])
    op = LinearOperator((d, d), matvec=lambda v: X.T @ (X @ v), dtype=np.float64)
    return float(eigsh(op, k=1, which="LA", return_eigenvectors=False, tol=1e-10)[0])


class LogisticObjective:
    """f(w) = mean_i loss_i(w) + l2/2 ||w||^2 in float64 numpy (value, gradient, Hessian-vector).

    Binary (y in {-1, +1}): loss_i = log(1 + exp(-y_i x_i.w)), w of shape (d,).
    Multiclass (y in 0..K-1): softmax cross-entropy, W of shape (K, d) like ``nn.Linear.weight``.
    Vectors passed in and out are flat (``W.ravel()``), as scipy's solvers want.
    """

    def __init__(self, X: sp.csr_matrix, y: np.ndarray, l2: float, num_classes: int) -> None:
        self.X, self.y, self.l2 = X, y, float(l2)
        self.n, self.d = X.shape
        self.binary = num_classes == 2
        self.k = 1 if self.binary else num_classes
        if not self.binary:
            self.onehot = np.eye(num_classes)[y]

    @property
    def size(self) -> int:
        return self.k * self.d

    def _logits(self, w: np.ndarray) -> np.ndarray:
        if self.binary:
            return self.X @ w
        return self.X @ w.reshape(self.k, self.d).T  # (n, K)

    def value(self, w: np.ndarray) -> float:
        z = self._logits(w)
        if self.binary:
            data = -np.mean(log_expit(self.y * z))
        else:
            data = np.mean(logsumexp(z, axis=1) - z[np.arange(self.n), self.y])
        return float(data + 0.5 * self.l2 * (w @ w))

    def grad(self, w: np.ndarray) -> np.ndarray:
        z = self._logits(w)
        if self.binary:
            r = -self.y * expit(-self.y * z)  # d loss_i / d z_i
            return self.X.T @ r / self.n + self.l2 * w
        r = softmax(z, axis=1) - self.onehot  # (n, K)
        return (self.X.T @ r).T.ravel() / self.n + self.l2 * w

    def hessp(self, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        z = self._logits(w)
        if self.binary:
            s = expit(z)
            return self.X.T @ (s * (1.0 - s) * (self.X @ v)) / self.n + self.l2 * v
        p = softmax(z, axis=1)
        u = self.X @ v.reshape(self.k, self.d).T  # (n, K): directional change of the logits
        hu = p * u - p * np.sum(p * u, axis=1, keepdims=True)  # (diag(p) - p p^T) u, per row
        return (self.X.T @ hu).T.ravel() / self.n + self.l2 * v


@dataclass
class FStar:
    """Result of the f* computation (``cached``: read from disk instead of solved).

    ``target`` is the gradient norm asked for; ``grad_norm > target`` means the solver stopped
    short (a warning was logged) and ``fstar`` is only within ``grad_norm**2 / (2 l2)``.
    """

    fstar: float
    grad_norm: float
    w: np.ndarray
    iterations: int
    cached: bool
    target: float = 0.0

    @property
    def converged(self) -> bool:
        return self.grad_norm <= self.target


def fstar_target(obj: LogisticObjective, rtol: float = FSTAR_GRAD_RTOL) -> float:
    """The gradient norm f* is solved to: ``rtol * ||grad f(0)||``."""
    return rtol * float(np.linalg.norm(obj.grad(np.zeros(obj.size))))


def solve_fstar(
    obj: LogisticObjective, rtol: float = FSTAR_GRAD_RTOL, max_iter: int | None = None
) -> FStar:
    """Minimise ``obj`` with exact Hessian-vector products (scipy trust-region Newton-CG).

    Newton-CG converges quadratically near w*, so ||grad|| reaches ~1e-12 in a few dozen
    iterations where L-BFGS often stalls around 1e-8 because of round-off in f. The target is
    ``||grad|| <= rtol * ||grad f(0)||``; if three attempts (``max_iter`` iterations each,
    default ``FSTAR_MAX_ITER``) do not reach it, a warning says how far it got, and the best
    point is returned with its gradient norm (``FStar.grad_norm``) instead of failing the run.
    """
    target = fstar_target(obj, rtol)
    w = np.zeros(obj.size)
    iterations = 0
    best: tuple[float, np.ndarray] | None = None
    message = ""
    for _ in range(3):  # restart from the last iterate if a run stops early (rarely needed)
        res = minimize(
            obj.value,
            w,
            jac=obj.grad,
            hessp=obj.hessp,
            method="trust-ncg",
            options={"gtol": target / 10, "maxiter": max_iter or FSTAR_MAX_ITER},
        )
        w, iterations, message = res.x, iterations + int(res.nit), str(res.message)
        grad_norm = float(np.linalg.norm(obj.grad(w)))
        if best is None or grad_norm < best[0]:
            best = (grad_norm, w)
        if grad_norm <= target:
            break
    assert best is not None
    grad_norm, w = best
    if grad_norm > target:
        log.warning(
            "f* solver stopped short of ||grad|| <= %.3g (%.0e x ||grad f(0)||): got %.3g after "
            "%d iterations (%s); going on with f* within %.3g (= ||grad||^2 / (2 l2)), recorded "
            "as fstar_grad_norm",
            target,
            rtol,
            grad_norm,
            iterations,
            message,
            grad_norm**2 / (2 * obj.l2) if obj.l2 > 0 else math.inf,
        )
    return FStar(obj.value(w), grad_norm, w, iterations, cached=False, target=target)


def _data_digest(X: sp.csr_matrix, y: np.ndarray) -> str:
    h = hashlib.sha256()
    X = X.copy()
    X.sort_indices()
    for arr in (X.indptr.astype(np.int64), X.indices.astype(np.int64), X.data, y):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _solver_settings() -> dict[str, float]:
    """What a stopped-short result depends on besides the data (read at call time)."""
    return {"rtol": FSTAR_GRAD_RTOL, "max_iter": FSTAR_MAX_ITER}


def cached_fstar(
    name: str, obj: LogisticObjective, cache_dir: str | os.PathLike[str] | None = None
) -> FStar:
    """``solve_fstar`` with a JSON cache under ``<cache_dir>/fstar/``.

    The key holds the data set, l2 (exact, as float.hex), shape and a sha256 of the data, so a
    changed file or coefficient never reuses a stale value. A cache hit is re-checked with one
    gradient evaluation (cheap) and recomputed if it does not hold: its gradient norm must be
    within the target, or, for a solver that stopped short with today's ``FSTAR_GRAD_RTOL`` and
    ``FSTAR_MAX_ITER``, no larger than it reached then.
    """
    key = {
        "version": _FSTAR_CACHE_VERSION,
        "dataset": name,
        "l2": float(obj.l2).hex(),
        "shape": [obj.n, obj.d],
        "num_outputs": obj.k,
        "data_sha256": _data_digest(obj.X, obj.y),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = resolve_cache_dir(cache_dir) / "fstar" / f"{name}-{digest}.json"
    try:
        entry = json.loads(path.read_text())
        if entry["key"] == key:
            w = np.asarray(entry["w"], dtype=np.float64)
            value, grad_norm = obj.value(w), float(np.linalg.norm(obj.grad(w)))
            target = fstar_target(obj)
            # a point short of the target is reused only from a solver with today's settings
            short_ok = entry.get("solver") == _solver_settings()
            holds = grad_norm <= target or (
                short_ok and grad_norm <= float(entry["grad_norm"]) * (1 + 1e-6)
            )
            if holds and math.isclose(value, entry["fstar"], rel_tol=1e-12):
                iterations = int(entry["iterations"])
                return FStar(entry["fstar"], grad_norm, w, iterations, cached=True, target=target)
        log.warning("ignoring stale f* cache entry %s", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable f* cache entry %s: %s", path, err)

    result = solve_fstar(obj)
    entry = {
        "key": key,
        "solver": _solver_settings(),
        "fstar": result.fstar,
        "grad_norm": result.grad_norm,
        "iterations": result.iterations,
        "w": result.w.tolist(),
    }
    _write_cache(path, entry)
    return result


def _write_cache(path: Path, entry: dict[str, Any]) -> None:
    """Atomic, so concurrent runs never read half a file; failures only warn."""
    try:
        atomic_write_json(path, entry)
    except OSError as err:  # a read-only cache only costs a recomputation next time
        log.warning("could not write f* cache %s: %s", path, err)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``: contiguous, disjoint, sizes differ by <= 1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size > n:
        raise ValueError(f"world_size={world_size} exceeds the number of rows ({n})")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class LogisticRegressionProblem:
    """Full-batch L2-regularised logistic regression on a LIBSVM set (paper Sec. 4.1, App. E.1).

    f(w) = mean_i loss_i(w) + l2/2 ||w||^2, no bias term (as in konstmish/opt_methods, the
    codebase the paper used). Binary sets use the logistic loss with labels in {-1, +1};
    multiclass sets (dna.scale) softmax cross-entropy with weights of shape (K, d).

    Constants, following opt_methods (``LogisticRegression.smoothness`` in
    ``optmethods/loss/logistic_regression.py`` and the choice ``l2 = L / n`` in
    ``notebooks/logistic_regression.ipynb``):

    - ``L0 = lambda_max(X^T X) / (4 n)`` for the unregularised binary loss: its Hessian is
      ``X^T D X / n`` with ``D = diag(s (1 - s))`` and ``s (1 - s) <= 1/4``.
      Multiclass: ``L0 = lambda_max(X^T X) / (2 n)``, because the logit Hessian of softmax
      cross-entropy, ``diag(p) - p p^T``, has eigenvalues <= max_i 2 p_i (1 - p_i) <= 1/2
      (Gershgorin), and the data Hessian is ``sum_i (diag(p_i) - p_i p_i^T) (x) x_i x_i^T / n``.
    - ``l2 = L0 / n`` by default (condition number about n); pass ``l2`` to override.
    - ``L = L0 + l2`` (``info["smoothness"]``) and the suggested step ``info["lr"] = 1 / L``
      (App. E.1: the step comes from the smoothness estimate and is shared by all optimizers).

    ``f*`` is computed in float64 to ``||grad|| <= 1e-8 ||grad f(0)||`` and cached on disk (see
    :func:`cached_fstar`); ``info["fstar_grad_norm"]`` is the gradient norm it reached (a
    warning is logged if that is short of the target). Under ``world_size > 1`` each rank gets a disjoint shard of rows with
    ``loss_scale = world_size * n_shard / n``, so the average of the per-rank gradients (what
    DDP computes) and the average of the per-rank losses both equal the full-data ones exactly.
    """

    def __init__(
        self,
        name: str = "breast_cancer",
        data_dir: str | os.PathLike[str] | None = None,
        l2: float | None = None,
        dtype: str | torch.dtype = "float64",
        cache_dir: str | os.PathLike[str] | None = None,
        compute_fstar: bool = True,
        allow_download: bool = True,
        path: str | os.PathLike[str] | None = None,
        test_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.dtype = torch_dtype(dtype)
        test: tuple[sp.csr_matrix, np.ndarray] | None = None
        if path is not None:  # any svmlight file: `name` is not used, the file names the set
            spec, (X, y), test = load_path(path, test_path)
            self._files = [Path(f).expanduser() for f in (path, test_path) if f is not None]
        elif test_path is not None:
            raise ValueError("dataset.test_path needs dataset.path (the training file)")
        else:
            spec = get_spec(name)
            X, y = load_dataset(name, "train", data_dir, allow_download=allow_download)
            self._files = [
                ensure_file(spec, entry, data_dir, allow_download=allow_download)
                for entry in (spec.train, spec.test)
                if entry is not None
            ]
            if spec.has_test:
                test = load_dataset(name, "test", data_dir, allow_download=allow_download)
        self.name, self.spec = spec.name, spec
        n, d = X.shape
        k = spec.num_classes
        curvature = 0.25 if spec.task == "binary" else 0.5
        l0 = curvature * lambda_max_gram(X) / n
        self.l2 = float(l0 / n if l2 is None else l2)
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        smoothness = l0 + self.l2

        self.objective = LogisticObjective(X, y, self.l2, k)
        self.fstar_result: FStar | None = None
        if compute_fstar:
            if self.l2 == 0:
                raise ValueError("f* needs l2 > 0 (the problem may have no minimiser otherwise)")
            self.fstar_result = cached_fstar(spec.name, self.objective, cache_dir)

        self.info: dict[str, Any] = {
            "dataset": spec.name,
            "task": spec.task,
            "num_features": d,
            "num_classes": k,
            "n_train": n,
            "l2": self.l2,
            "smoothness": smoothness,
            "lr": 1.0 / smoothness,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if path is not None:
            self.info["path"] = str(path)
        if self.fstar_result is not None:
            self.info["fstar"] = self.fstar_result.fstar
            # how close f* is: f(w) - f* <= ||grad||^2 / (2 l2) by strong convexity
            self.info["fstar_grad_norm"] = self.fstar_result.grad_norm

        self._x, self._y = self._tensors(X, y)
        self._eval: list[Batch] | None = None
        if test is not None:
            Xt, yt = test
            xt, ytt = self._tensors(Xt, yt)
            self._eval = [{"x": xt, "y": ytt, "loss_scale": torch.ones((), dtype=self.dtype)}]
            self.info["n_test"] = Xt.shape[0]
        self._shards: dict[tuple[int, int], Batch] = {}

    def _tensors(self, X: sp.csr_matrix, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Dense: the largest set (w8a) is 49,749 x 300, and dense matmuls are fastest on GPUs.
        x = torch.from_numpy(X.toarray()).to(self.dtype)
        labels = torch.from_numpy(y)
        return x, labels.to(self.dtype) if self.spec.task == "binary" else labels.long()

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Yield the one full batch (this rank's shard of it when ``world_size > 1``)."""
        key = (rank, world_size)
        if key not in self._shards:
            n = self._x.shape[0]
            start, stop = shard_bounds(n, rank, world_size)
            scale = world_size * (stop - start) / n
            self._shards[key] = {
                "x": self._x[start:stop],
                "y": self._y[start:stop],
                "loss_scale": torch.tensor(scale, dtype=self.dtype),
            }
        yield self._shards[key]

    def eval_batches(self) -> list[Batch] | None:
        """The test split as one batch (dna.scale.t, adult.tst), or ``None`` when there is none."""
        return self._eval

    def source_files(self) -> list[Path]:
        """The svmlight files read (none for breast cancer, which ships with scikit-learn)."""
        return list(self._files)


class QuadraticProblem:
    """f(x) = 1/2 (x - x*)^T A (x - x*), the motivating example of paper Sec. 3.1 (f* = 0).

    ``A = Q diag(lam) Q^T`` with ``Q`` a seeded Haar-random orthogonal matrix and ``lam``
    log-uniform in ``[mu, L]`` with both ends included, so the smoothness and strong-convexity
    constants are exactly ``L`` and ``mu``. ``x*`` is a seeded standard normal vector.

    There are no rows to shard: under ``world_size > 1`` every rank gets the whole problem, so
    the DDP gradient average is the exact gradient.
    """

    def __init__(
        self,
        dim: int = 100,
        mu: float = 1e-3,
        L: float = 1.0,
        seed: int = 0,
        dtype: str | torch.dtype = "float64",
    ) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2 (mu and L are both eigenvalues), got {dim}")
        if not 0 < mu <= L:
            raise ValueError(f"need 0 < mu <= L, got mu={mu}, L={L}")
        self.dtype = torch_dtype(dtype)
        rng = np.random.default_rng(seed)
        inner = np.exp(rng.uniform(math.log(mu), math.log(L), size=dim - 2))
        self.eigenvalues = np.sort(np.concatenate([[mu, L], inner]))
        q = ortho_group.rvs(dim, random_state=rng)
        a = (q * self.eigenvalues) @ q.T
        a = 0.5 * (a + a.T)  # exactly symmetric
        xstar = rng.standard_normal(dim)

        self.A = torch.from_numpy(a).to(self.dtype)
        self.xstar = torch.from_numpy(xstar).to(self.dtype)
        self.info: dict[str, Any] = {
            "task": "quadratic",
            "num_features": dim,
            "num_classes": None,
            "n_train": 1,
            "smoothness": float(L),
            "strong_convexity": float(mu),
            "lr": 1.0 / L,
            "fstar": 0.0,
            "minimizer": [self.xstar],
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        self._batch: Batch = {"A": self.A, "xstar": self.xstar}

    def train_batches(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """Yield the one batch (the same on every rank)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")
        yield self._batch

    def source_files(self) -> list[Path]:
        return []  # generated from the config's seed

    def eval_batches(self) -> None:
        """No held-out data for a quadratic."""
        return None
