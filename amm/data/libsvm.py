"""LIBSVM data sets for the convex (logistic regression) experiments.

Files are parsed with :func:`sklearn.datasets.load_svmlight_file`; this module only knows
*where* each file lives, *where* to fetch it from, and how to map its labels.

Layout: ``<data_dir>/libsvm/<name>/<file>`` with ``data_dir`` taken from the argument, else
``amm.paths.data_dir()`` (``$AMM_DATA_DIR``, ...; see ``amm/paths.py``). This is the layout of
the shared data folder, so ``AMM_DATA_DIR=/path/to/shared/data`` works without copying anything.
A missing file is downloaded once (unless ``AMM_OFFLINE=1``); when that is impossible a
:class:`DataNotFoundError` says which file was expected where and where to get it.

Labels: binary sets come as -1/+1, 0/1 or 1/2 and are mapped to {-1, +1} (smaller -> -1);
multiclass labels to 0..K-1 in sorted order. Each set's raw label values are in the registry, so
a file with unexpected labels (a wrong or damaged file) is rejected instead of silently mapped.

Any other svmlight file: :func:`load_path` (``dataset=libsvm dataset.path=FILE``, optional
``dataset.test_path=FILE``) reads a plain, ``.bz2``, ``.gz`` or ``.xz`` file; the number of
features, whether indices start at 0, and the task (two label values: binary, more:
multiclass) are detected from the data, since there is no registry entry to check against.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_breast_cancer, load_svmlight_file
from sklearn.preprocessing import StandardScaler

from amm import paths
from amm.atomic import atomic_write
from amm.paths import DATA_DIR_ENV, OFFLINE_ENV, DataNotFoundError, offline

__all__ = ["DATA_DIR_ENV", "OFFLINE_ENV", "DataNotFoundError", "load_dataset"]

#: Seconds before a download attempt gives up; short so an offline machine fails fast.
DOWNLOAD_TIMEOUT_S = 10.0

_LIBSVM = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets"
_TICK = (
    "https://raw.githubusercontent.com/X-DataInitiative/tick-datasets/"
    "9d959b6e53e17145e93e9849ff1f9f6d2de8ae51/binary/adult"
)

Task = Literal["binary", "multiclass"]
Split = Literal["train", "test"]


@dataclass(frozen=True)
class DataFile:
    """One svmlight file: its name on disk, where to fetch it, and its expected row count."""

    file: str
    url: str
    n_rows: int


@dataclass(frozen=True)
class DatasetSpec:
    """What we know about a data set before reading it (used to validate what we read)."""

    name: str
    task: Task
    num_features: int
    num_classes: int
    labels: tuple[float, ...]  # raw label values, sorted; mapped to -1/+1 or 0..K-1
    train: DataFile | None  # None: shipped with scikit-learn, nothing to fetch
    test: DataFile | None = None
    zero_based: bool = False  # feature indices start at 0 (tick's adult files)
    page: str = ""  # human-readable description page

    @property
    def has_test(self) -> bool:
        return self.test is not None


def _libsvm(
    name: str,
    n_rows: int,
    d: int,
    labels: tuple[float, ...] = (-1.0, 1.0),
    *,
    kind: str = "binary",
    test_rows: int = 0,
) -> DatasetSpec:
    """Registry entry for a file hosted on the LIBSVM page under its own name."""
    base = f"{_LIBSVM}/{kind}"
    test = DataFile(f"{name}.t", f"{base}/{name}.t", test_rows) if test_rows else None
    return DatasetSpec(
        name=name,
        task="binary" if kind == "binary" else "multiclass",
        num_features=d,
        num_classes=len(labels),
        labels=labels,
        train=DataFile(name, f"{base}/{name}", n_rows),
        test=test,
        page=f"{_LIBSVM}/{kind}.html",
    )


#: Every data set known by name. Shapes are those of the LIBSVM originals.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        _libsvm("a8a", 22_696, 123),
        _libsvm("a9a", 32_561, 123),
        _libsvm("w8a", 49_749, 300),
        _libsvm("german.numer_scale", 1_000, 24),
        _libsvm("mushrooms", 8_124, 112, (1.0, 2.0)),
        _libsvm("phishing", 11_055, 68, (0.0, 1.0)),
        _libsvm("svmguide1", 3_089, 4, (0.0, 1.0)),
        _libsvm("heart_scale", 270, 13),
        _libsvm("dna.scale", 2_000, 180, (1.0, 2.0, 3.0), kind="multiclass", test_rows=1_186),
        # a9a / a9a.t as prepared by tick-datasets: bzip2-compressed, 0-based indices.
        DatasetSpec(
            name="adult_tick",
            task="binary",
            num_features=123,
            num_classes=2,
            labels=(-1.0, 1.0),
            train=DataFile("adult.trn.bz2", f"{_TICK}/adult.trn.bz2", 32_561),
            test=DataFile("adult.tst.bz2", f"{_TICK}/adult.tst.bz2", 16_281),
            zero_based=True,
            page="https://github.com/X-DataInitiative/tick-datasets",
        ),
        # Shipped with scikit-learn: the offline default demo set.
        DatasetSpec(
            name="breast_cancer",
            task="binary",
            num_features=30,
            num_classes=2,
            labels=(0.0, 1.0),
            train=None,
            page="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    """Registry entry for ``name``; a ``ValueError`` listing the known names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the argument, else ``amm.paths.data_dir()`` (``$AMM_DATA_DIR``, ...)."""
    return paths.data_dir(data_dir)


def dataset_path(name: str, file: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``file`` of data set ``name`` lives (whether or not it exists yet)."""
    return resolve_data_dir(data_dir) / "libsvm" / name / file


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch ``url`` into ``dest`` atomically (``amm.atomic``: temp file, fsync, rename).

    A partial download never leaves a file at ``dest``, so a later run cannot mistake it for
    the real thing.
    """

    def fetch(out: IO[bytes]) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)

    atomic_write(dest, fetch)


def ensure_file(
    spec: DatasetSpec,
    entry: DataFile,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
) -> Path:
    """Path of ``entry`` on disk, downloading it first if it is missing and we may."""
    path = dataset_path(spec.name, entry.file, data_dir)
    if path.is_file():
        return path
    why = "downloads are disabled"
    if allow_download and not offline():
        try:
            download(entry.url, path)
            return path
        except (OSError, urllib.error.URLError) as err:  # URLError/timeouts are OSErrors too
            why = f"download failed: {err}"
    elif offline():
        why = f"{OFFLINE_ENV} is set"
    raise DataNotFoundError(
        f"dataset {spec.name!r}: file {entry.file!r} not found at {path} ({why}).\n"
        f"  Fetch it from {entry.url}\n"
        f"  and save it as {path},\n"
        f"  or set {DATA_DIR_ENV} to a folder that holds libsvm/{spec.name}/{entry.file}."
    )


#: Compressed files, by suffix (anything else is read as plain text).
_OPENERS = (".bz2", ".gz", ".xz")


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile is an IO[bytes]
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _iter_lines(path: Path) -> Iterator[bytes]:
    with _open(path) as fh:
        yield from fh


def _first_bad_line(path: Path, n_features: int | None, zero_based: bool) -> str:
    """Describe the first line that is not ``label idx:val ...`` (diagnostics only).

    Loading always goes through scikit-learn; this scan only runs after it failed, to tell the
    user *where* the file is broken.
    """
    lo = 0 if zero_based else 1
    try:
        for lineno, raw in enumerate(_iter_lines(path), start=1):
            line = raw.split(b"#", 1)[0].strip()
            if not line:
                continue
            label, *pairs = line.split()
            try:
                float(label)
                for pair in pairs:
                    idx, val = pair.split(b":")
                    float(val)
                    if int(idx) < lo or (n_features is not None and int(idx) >= n_features + lo):
                        raise ValueError(f"feature index {int(idx)} out of range")
            except ValueError as err:
                text = raw.decode("utf-8", "replace").rstrip()
                return f"first bad line is line {lineno} ({err}): {text[:120]!r}"
    except (OSError, EOFError, UnicodeError, lzma.LZMAError) as err:
        return f"the file cannot be read ({err})"
    return "no single bad line found"


def read_svmlight(
    path: Path,
    n_features: int | None,
    zero_based: bool = False,
    *,
    fix: str = "Delete the file and download it again.",
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Parse one svmlight file (plain, .bz2, .gz or .xz); a clear ``ValueError`` if it is
    corrupt. ``n_features=None``: as many as the largest index in the file."""
    try:
        with _open(path) as fh:
            X, y = load_svmlight_file(
                fh, n_features=n_features, zero_based=zero_based, dtype=np.float64
            )
    except (ValueError, OSError, EOFError, lzma.LZMAError) as err:
        where = _first_bad_line(path, n_features, zero_based)
        raise ValueError(f"corrupt svmlight file {path}: {err}; {where}. {fix}") from err
    return sp.csr_matrix(X), np.asarray(y, dtype=np.float64)


def map_labels(y: np.ndarray, spec: DatasetSpec, path: object) -> np.ndarray:
    """Binary: smaller label -> -1, larger -> +1 (float64). Multiclass: 0..K-1 (int64)."""
    classes = np.asarray(spec.labels)
    unexpected = np.setdiff1d(y, classes)
    if unexpected.size:
        raise ValueError(
            f"{path}: unexpected label values {unexpected[:5].tolist()} "
            f"(dataset {spec.name!r} has labels {list(spec.labels)})"
        )
    if spec.task == "binary":
        return np.where(y == classes[1], 1.0, -1.0)
    return np.searchsorted(classes, y).astype(np.int64)


def _load_breast_cancer() -> tuple[sp.csr_matrix, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    # Raw feature scales differ by ~1e4; standardising keeps the problem well conditioned.
    X = StandardScaler().fit_transform(X)
    return sp.csr_matrix(X), map_labels(y.astype(np.float64), DATASETS["breast_cancer"], "sklearn")


def load_dataset(
    name: str,
    split: Split = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool = True,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Load one split of a registered data set.

    Returns ``(X, y)``: ``X`` a float64 CSR matrix of shape ``(n, num_features)``; ``y`` float64
    in {-1, +1} for binary sets, int64 in 0..K-1 for multiclass sets.
    """
    spec = get_spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.train is None:
        if split != "train":
            raise ValueError(f"dataset {name!r} has no {split!r} split")
        return _load_breast_cancer()
    entry = spec.train if split == "train" else spec.test
    if entry is None:
        raise ValueError(f"dataset {name!r} has no {split!r} split")

    path = ensure_file(spec, entry, data_dir, allow_download=allow_download)
    X, y = read_svmlight(path, spec.num_features, spec.zero_based)
    y = map_labels(y, spec, path)
    if X.shape[0] != entry.n_rows:
        raise ValueError(
            f"{path} has {X.shape[0]} rows but {name} {split} should have {entry.n_rows}: "
            f"the file is probably truncated. Delete it and download it again from {entry.url}."
        )
    return X, y


def _uses_index_zero(path: Path) -> bool:
    """Whether any line of ``path`` has feature index 0 (then indices are 0-based)."""
    for raw in _iter_lines(path):
        for pair in raw.split(b"#", 1)[0].split()[1:]:
            if pair.split(b":", 1)[0] == b"0":
                return True
    return False


def spec_from_labels(name: str, y: np.ndarray, num_features: int, path: object) -> DatasetSpec:
    """A registry-like entry for a file given by path: task and labels from its label values."""
    labels = tuple(float(v) for v in np.unique(y))
    if len(labels) < 2:
        raise ValueError(
            f"{path}: all {y.size} rows have the label {labels[0] if labels else None}; "
            "logistic regression needs at least two classes"
        )
    return DatasetSpec(
        name=name,
        task="binary" if len(labels) == 2 else "multiclass",
        num_features=num_features,
        num_classes=len(labels),
        labels=labels,
        train=None,
    )


def path_name(path: str | os.PathLike[str]) -> str:
    """A data set's name from its file: the file name less a compression suffix."""
    p = Path(path)
    return p.stem if p.suffix in _OPENERS else p.name


def load_path(
    path: str | os.PathLike[str], test_path: str | os.PathLike[str] | None = None
) -> tuple[DatasetSpec, tuple[sp.csr_matrix, np.ndarray], tuple[sp.csr_matrix, np.ndarray] | None]:
    """Read an svmlight file given by path (and its test file), with labels mapped.

    Returns ``(spec, (X, y), (X_test, y_test) or None)``. The features are the largest index
    in either file; indices are 0-based if either file uses index 0 (else 1-based, the LIBSVM
    convention). Labels are mapped as for registered sets, from the training file's values; a
    test label the training file does not have is an error.
    """
    train = Path(path).expanduser()
    test = Path(test_path).expanduser() if test_path is not None else None
    for key, file in (("dataset.path", train), ("dataset.test_path", test)):
        if file is not None and not file.is_file():
            raise DataNotFoundError(f"{key}={file}: no such file")
    files = [f for f in (train, test) if f is not None]
    fix = "Check the file (svmlight format: `label index:value ...`, one row per line)."
    try:
        zero_based = any(_uses_index_zero(f) for f in files)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise ValueError(f"cannot read svmlight file {files}: {err}. {fix}") from err
    parsed = [read_svmlight(f, None, zero_based, fix=fix) for f in files]
    num_features = max(X.shape[1] for X, _ in parsed)
    for X, _ in parsed:
        X.resize((X.shape[0], num_features))  # a test file may not use the last features
    spec = spec_from_labels(path_name(train), parsed[0][1], num_features, train)
    spec = replace(spec, zero_based=zero_based)
    out = [(X, map_labels(y, spec, f)) for (X, y), f in zip(parsed, files, strict=True)]
    return spec, out[0], out[1] if test is not None else None
