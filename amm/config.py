"""Where the Hydra configs live, and the OmegaConf resolvers they use.

Importing this module registers the resolvers, so every entry point (``amm.run``,
``amm.reproduce``, tests that compose configs) gets them by importing it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from amm import paths

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
SCALES = ("smoke", "reduced", "paper")
# Longest run-directory name we create; longer names are shortened with a hash (filesystems
# refuse names over 255 bytes, and long sweeps over many keys get there).
_MAX_DIRNAME = 120
# Keys that do not change a run's results: left out of its directory name (configs/config.yaml,
# hydra.job.config.override_dirname.exclude_keys, which must list the same) and of its
# fingerprint (amm/rundir.py). A key also covers the keys below it.
NON_RESULT_KEYS = (
    "trainer.progress",
    "trainer.num_threads",
    "trainer.on_mismatch",
    "method",
    "seeds",  # how many seeds amm.reproduce runs (each run's own is trainer.seed)
    "sweep",  # the experiment's list of runs: editing it (a set added) changes no run
    "logger",
    "paths",
)


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


# ---- validation of a composed config, before any work --------------------------------------


class ConfigError(ValueError):
    """A config value the suite cannot run with; the message names the key and what is allowed."""


@dataclass
class SchedulerSchema:
    name: str = "constant"
    warmup_steps: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0


@dataclass
class TrainerSchema:
    """The types of ``cfg.trainer`` (configs/trainer/default.yaml says what each key means)."""

    max_steps: int = 1
    eval_every: int = 0
    log_every: int = 1
    checkpoint_every: int = 0
    grad_clip: float | None = None
    accumulate_grad_batches: int = 1
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    dtype: str | None = None
    precision: str | None = None
    device: str = "auto"
    distributed: str = "ddp"
    seed: int = 0
    num_threads: int | None = None
    compile: bool = False
    progress: bool = True
    on_mismatch: str = "refuse"
    max_nonfinite_in_row: int = 10


# key -> (check, what is allowed), applied after the types
_RULES: dict[str, tuple[Any, str]] = {
    "max_steps": (lambda v: v >= 1, "an integer >= 1"),
    "eval_every": (lambda v: v >= 0, "an integer >= 0 (0: evaluate at the end only)"),
    "log_every": (lambda v: v >= 1, "an integer >= 1"),
    "checkpoint_every": (lambda v: v >= 0, "an integer >= 0 (0: checkpoint at the end only)"),
    "grad_clip": (lambda v: v is None or v > 0, "null or a number > 0"),
    "accumulate_grad_batches": (lambda v: v >= 1, "an integer >= 1 (1: no accumulation)"),
    "dtype": (
        lambda v: v in (None, "float32", "float64", "bfloat16", "float16"),
        "null, float32, float64, bfloat16 or float16",
    ),
    "precision": (lambda v: v in (None, "bf16"), "null or bf16"),
    "device": (
        lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"),
        "auto, cpu, cuda or cuda:<index>",
    ),
    "distributed": (lambda v: v in ("ddp", "fsdp"), "ddp or fsdp"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "num_threads": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "on_mismatch": (lambda v: v in ("refuse", "restart"), "refuse or restart"),
    "max_nonfinite_in_row": (lambda v: v >= 1, "an integer >= 1"),
    "compile": (lambda v: isinstance(v, bool), "true or false"),
    "progress": (lambda v: isinstance(v, bool), "true or false"),
    "scheduler.name": (lambda v: v in ("constant", "cosine", "step"), "constant, cosine or step"),
    "scheduler.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "scheduler.milestones": (lambda v: all(m >= 0 for m in v), "a list of integers >= 0"),
    "scheduler.gamma": (lambda v: v > 0, "a number > 0"),
    "scheduler.min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}


def validate(cfg: DictConfig, config_dir: Path = CONFIG_DIR) -> None:
    """Check a composed config before anything is built: ``cfg.trainer`` against
    ``TrainerSchema`` and its rules, and ``cfg.optimizer``'s values against the types of the
    defaults in ``configs/optimizer/<name>.yaml``. Raises ``ConfigError`` naming the key."""
    trainer: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    for key, value in _flat(trainer).items():
        if not _has_field(TrainerSchema, key):
            known = ", ".join(f.name for f in fields(TrainerSchema))
            raise ConfigError(f"trainer.{key}: not a trainer setting; the settings are {known}")
        kind = _field_type(key)
        if isinstance(value, float) and kind == "int" and not value.is_integer():
            raise ConfigError(f"trainer.{key}={value!r}: must be {_RULES[key][1]}")
        if kind == "bool" and not isinstance(value, bool):  # OmegaConf would take 2 as true
            raise ConfigError(f"trainer.{key}={value!r}: must be true or false")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TrainerSchema), trainer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        value = _lookup(trainer, key)
        allowed = _RULES.get(key, (None, _field_type(key) or "another value"))[1]
        raise ConfigError(f"trainer.{key}={value!r}: must be {allowed}") from None
    values = _flat(OmegaConf.to_container(typed))  # type: ignore[arg-type]
    for key, (ok, allowed) in _RULES.items():
        if not ok(values[key]):
            raise ConfigError(f"trainer.{key}={values[key]!r}: must be {allowed}")
    _check_optimizer(cfg, config_dir)


def _check_optimizer(cfg: DictConfig, config_dir: Path) -> None:
    """A value whose default is a number (bool) must be a number (bool): ``lam=abc`` fails
    here, not deep inside the optimizer. ``lr`` may also be ``auto``."""
    name = cfg.optimizer.get("name")
    path = config_dir / "optimizer" / f"{name}.yaml"
    if not path.is_file():
        return
    defaults: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[assignment]
    values = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(values, dict)
    from amm.optim.registry import OPTIMIZERS, accepted_keys  # torch: only when validating

    if name in OPTIMIZERS and (accepted := accepted_keys(name)) is not None:
        unknown = sorted(set(values) - accepted)
        if unknown:
            raise ConfigError(
                f"optimizer.{unknown[0]}: not a setting of optimizer {name}; its settings are "
                f"{', '.join(sorted(accepted))} ({path})"
            )
    lr_scale = values.get("lr_scale", 1.0)
    if values.get("lr") != "auto" and lr_scale not in (1, 1.0, None):
        raise ConfigError(
            f"optimizer.lr_scale={lr_scale!r}: multiplies the problem's suggested step "
            f"(optimizer.lr=auto); with optimizer.lr={values.get('lr')!r} set the lr itself "
            "and drop lr_scale"
        )
    for key, default in defaults.items():
        value = values.get(key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"optimizer.{key}={value!r}: must be true or false")
        elif isinstance(default, (int, float)) or (key == "lr" and default == "auto"):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number or (key == "lr" and value == "auto")):
                allowed = "a number or auto" if key == "lr" else "a number"
                raise ConfigError(f"optimizer.{key}={value!r}: must be {allowed} ({path})")


def _flat(tree: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _lookup(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None  # type: ignore[assignment]
    return tree


def _has_field(schema: type, key: str) -> bool:
    head, _, rest = key.partition(".")
    for f in fields(schema):
        if f.name == head:
            return not rest or (f.name == "scheduler" and _has_field(SchedulerSchema, rest))
    return False


def _field_type(key: str) -> str | None:
    """ "int", "float", ... of a trainer key (as written in the schema)."""
    head, _, rest = key.partition(".")
    schema = SchedulerSchema if rest else TrainerSchema
    name = rest or head
    for f in fields(schema):
        if f.name == name:
            return str(f.type).split(" ")[0]
    return None
