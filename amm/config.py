"""Where the Hydra configs live, and the OmegaConf resolvers they use.

Importing this module registers the resolvers, so every entry point (``amm.run``,
``amm.reproduce``, tests that compose configs) gets them by importing it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from amm import paths

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SCALES = ("smoke", "reduced", "paper")
# Longest run-directory name we create; longer names are shortened with a hash (filesystems
# refuse names over 255 bytes, and long sweeps over many keys get there).
_MAX_DIRNAME = 120


def require_config_dir(config_dir: Path = CONFIG_DIR) -> None:
    """The suite's commands read the Hydra configs of a clone of the repository; a plain
    `pip install` ships the library (amm.optim, ...) without them: say so, and what to do."""
    if not (config_dir / "config.yaml").is_file():
        raise SystemExit(
            f"amm: no Hydra configs at {config_dir}. The training and reproduction commands run "
            "from a clone of the amm repository, installed in place: git clone <amm repository>; "
            "cd amm; make demo (or pip install -e .). The optimizers alone need no configs: "
            "from amm.optim import AMAdamW."
        )


def by_scale(smoke: Any, reduced: Any, paper: Any, *, _root_: DictConfig) -> Any:
    """``${by_scale:a,b,c}``: the value for the selected ``scale`` option."""
    return {"smoke": smoke, "reduced": reduced, "paper": paper}[_root_.scale.name]


def run_dirname(text: str | None) -> str:
    """A run directory name from Hydra's ``override_dirname`` (or an experiment choice).

    Empty or missing -> ``default``; ``/`` (paths in override values) -> ``_`` so one run is one
    directory; very long names -> a prefix plus a hash, still a pure function of the input.
    """
    if not text:
        return "default"
    name = str(text).replace("/", "_")
    if len(name) > _MAX_DIRNAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: _MAX_DIRNAME - 13]}-{digest}"
    return name


OmegaConf.register_new_resolver("by_scale", by_scale, replace=True)
OmegaConf.register_new_resolver("run_dirname", run_dirname, replace=True)
OmegaConf.register_new_resolver("amm.path", paths.default, replace=True)
