"""Where data and caches live, and whether the network may be used: the one place that says so.

The Hydra config ``configs/paths/default.yaml`` (``cfg.paths``) takes its defaults from here, and
every data module asks here (``data_dir``, ``cache_dir``, ``offline``), so an environment
variable's name and the default ``~/.cache/amm`` are written once:

- ``AMM_DATA_DIR``: the data root (LIBSVM files, MNIST, CIFAR, the C4 sample, the tokenizer);
  unset: ``../shared/data`` next to the checkout if it exists, else ``~/.cache/amm``;
- ``AMM_CACHE_DIR``: computed things (f* of the convex problems, generated smoke stand-ins);
- ``AMM_IMAGENET_DIR``: the ImageNet ``ImageFolder`` tree (default ``~/data/imagenet``);
- ``AMM_OFFLINE=1``: never try the network; a missing file is an error at once.

``python -m amm.run paths.data_dir=/data paths.offline=true`` overrides them for one run
(``apply`` hands the config's values to the data modules and their loader workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "AMM_DATA_DIR"
CACHE_DIR_ENV = "AMM_CACHE_DIR"
IMAGENET_DIR_ENV = "AMM_IMAGENET_DIR"
OFFLINE_ENV = "AMM_OFFLINE"
DEFAULT_ROOT = Path("~/.cache/amm")  # data root and cache when the environment sets none
# A shared data folder next to the checkout (as on the project's machines; the Makefile used to
# point AMM_DATA_DIR there): the data root when AMM_DATA_DIR is not set.
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_IMAGENET_DIR = Path("~/data/imagenet")
_TRUE = {"1", "true", "yes", "on"}


class DataNotFoundError(FileNotFoundError):
    """A data file is missing and could not be downloaded."""


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``explicit``, else ``$AMM_DATA_DIR``, else ``../shared/data`` next to the
    checkout when it holds ``libsvm/``, else ``~/.cache/amm``."""
    if explicit or os.environ.get(DATA_DIR_ENV):
        return Path(explicit or os.environ[DATA_DIR_ENV]).expanduser()
    return SHARED_DATA if (SHARED_DATA / "libsvm").is_dir() else DEFAULT_ROOT.expanduser()


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``explicit``, else ``$AMM_CACHE_DIR``, else ``~/.cache/amm``."""
    return Path(explicit or os.environ.get(CACHE_DIR_ENV) or DEFAULT_ROOT).expanduser()


def imagenet_dir() -> Path:
    """``$AMM_IMAGENET_DIR``, else ``~/data/imagenet``."""
    return Path(os.environ.get(IMAGENET_DIR_ENV) or DEFAULT_IMAGENET_DIR).expanduser()


def offline() -> bool:
    """``AMM_OFFLINE`` set to 1/true/yes/on: fail at once instead of trying the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def default(name: str) -> Any:
    """The value ``configs/paths/default.yaml`` shows for ``name`` (resolver ``amm.path``)."""
    values = {
        "data_dir": lambda: str(data_dir()),
        "cache_dir": lambda: str(cache_dir()),
        "imagenet_dir": lambda: str(imagenet_dir()),
        "offline": offline,
    }
    if name not in values:
        raise ValueError(f"unknown path {name!r}; use one of {sorted(values)}")
    return values[name]()


def apply(paths: Any) -> None:
    """Make a run's ``cfg.paths`` what ``cache_dir()`` and ``offline()`` return in this process
    (and in the data loader workers it starts). Values equal to the environment's change nothing."""
    if bool(paths.offline) != offline():
        os.environ[OFFLINE_ENV] = "1" if paths.offline else "0"
    if Path(str(paths.cache_dir)).expanduser() != cache_dir():
        os.environ[CACHE_DIR_ENV] = str(paths.cache_dir)
