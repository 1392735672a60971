"""Where the Hydra configs live, and the OmegaConf resolvers they use.

Importing this module registers the resolvers, so every entry point (``amm.run``,
``experiments.reproduce``, tests that compose configs) gets them by importing it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from amm import paths
from amm.schedule import SCHEDULES

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
    "seeds",  # how many seeds experiments.reproduce runs (each run's own is trainer.seed)
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


# ---- the trainer's settings: TrainerSchema is their one definition --------------------------
# Each field holds its type, default and allowed values (``setting``); ``validate`` derives its
# checks and messages from them, and tests/test_configs.py checks configs/trainer/default.yaml
# against them (every key, every default).


@dataclass(frozen=True)
class Range:
    """Numbers (each element, for a list) of at least ``low`` (above it, if ``above``), at most
    ``high``; ``note`` says what a boundary value means."""

    low: float
    high: float | None = None
    above: bool = False
    note: str = ""

    def ok(self, value: Any) -> bool:
        values = value if isinstance(value, list) else [value]
        low_ok = (lambda v: v > self.low) if self.above else (lambda v: v >= self.low)
        return all(low_ok(v) and (self.high is None or v <= self.high) for v in values)

    def describe(self, noun: str) -> str:
        if self.high is not None:
            text = f"{noun} in [{self.low:g}, {self.high:g}]"
        else:
            text = f"{noun} {'>' if self.above else '>='} {self.low:g}"
        return f"{text} {self.note}" if self.note else text


@dataclass(frozen=True)
class OneOf:
    """One of ``names``; a name with ``<index>`` in it stands for that text with a number."""

    names: tuple[str, ...]

    def ok(self, value: Any) -> bool:
        patterns = (re.escape(n).replace(re.escape("<index>"), r"\d+") for n in self.names)
        return isinstance(value, str) and any(re.fullmatch(p, value) for p in patterns)

    def describe(self, noun: str) -> str:
        return _either(list(self.names))


Rule = Range | OneOf


def setting(default: Any, rule: Rule | None = None, *, by_scale: tuple[Any, ...] = ()) -> Any:
    """A schema field: its default, and the values allowed besides the type's. ``by_scale``: the
    default per scale (smoke, reduced, paper) where the YAML writes ``${by_scale:...}``; the
    field's own default is then the smoke value."""
    metadata = {"rule": rule, "by_scale": by_scale}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class SchedulerSchema:
    name: str = setting("constant", OneOf(SCHEDULES))
    warmup_steps: int = setting(0, Range(0))
    milestones: list[int] = setting([], Range(0))
    gamma: float = setting(0.1, Range(0, above=True))
    min_lr_ratio: float = setting(0.0, Range(0, 1))


# the autocast precisions (trainer.precision) and the torch dtype each one computes in
PRECISIONS = {"bf16": "bfloat16"}
DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass
class TrainerSchema:
    """``cfg.trainer``: types, defaults and allowed values (configs/trainer/default.yaml says
    what each key means and must agree with this)."""

    max_steps: int = setting(20, Range(1), by_scale=(20, 1000, 10000))
    eval_every: int = setting(0, Range(0, note="(0: evaluate at the end only)"))
    log_every: int = setting(1, Range(1))
    checkpoint_every: int = setting(1000, Range(0, note="(0: checkpoint at the end only)"))
    grad_clip: float | None = setting(None, Range(0, above=True))
    accumulate_grad_batches: int = setting(1, Range(1, note="(1: no accumulation)"))
    scheduler: SchedulerSchema = field(default_factory=SchedulerSchema)
    dtype: str | None = setting(None, OneOf(DTYPES))
    precision: str | None = setting(None, OneOf(tuple(PRECISIONS)))
    device: str = setting("auto", OneOf(("auto", "cpu", "cuda", "cuda:<index>")))
    distributed: str = setting("ddp", OneOf(("ddp", "fsdp")))
    seed: int = setting(0, Range(0))
    num_threads: int | None = setting(None, Range(1))
    compile: bool = setting(False)
    progress: bool = setting(True)
    on_mismatch: str = setting("refuse", OneOf(("refuse", "restart")))
    max_nonfinite_in_row: int = setting(10, Range(1))


@dataclass(frozen=True)
class Setting:
    """One (flat) key of a schema: ``scheduler.name`` etc."""

    key: str
    type: Any
    default: Any
    rule: Rule | None
    by_scale: tuple[Any, ...]

    @property
    def nullable(self) -> bool:
        return type(None) in get_args(self.type)

    @property
    def base(self) -> Any:
        """The type without ``None`` (``int`` for ``int | None``; ``list`` for ``list[int]``)."""
        args = [a for a in get_args(self.type) if a is not type(None)]
        base = args[0] if self.nullable else self.type
        return get_origin(base) or base

    def allowed(self) -> str:
        """What the value must be, as the error messages say it."""
        if self.base is bool:
            return "true or false"
        if isinstance(self.rule, OneOf):
            return _either(["null", *self.rule.names] if self.nullable else list(self.rule.names))
        noun = {int: "an integer", float: "a number", list: "a list of integers"}.get(
            self.base, "a string"
        )
        text = self.rule.describe(noun) if self.rule is not None else noun
        return f"null or {text}" if self.nullable else text

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        return self.rule is None or self.rule.ok(value)

    def default_at(self, scale: str) -> Any:
        return self.by_scale[SCALES.index(scale)] if self.by_scale else self.default


def settings(schema: type = TrainerSchema, prefix: str = "") -> dict[str, Setting]:
    """Every key of ``schema`` (nested schemas flattened: ``scheduler.name``) and its setting."""
    hints = get_type_hints(schema)
    out: dict[str, Setting] = {}
    for f in fields(schema):
        kind = hints[f.name]
        if is_dataclass(kind):
            out |= settings(kind, f"{prefix}{f.name}.")  # type: ignore[arg-type]
            continue
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        meta = f.metadata
        key = f"{prefix}{f.name}"
        out[key] = Setting(key, kind, default, meta.get("rule"), meta.get("by_scale", ()))
    return out


def validate(cfg: DictConfig, config_dir: Path = CONFIG_DIR) -> TrainerSchema:
    """Check a composed config before anything is built: ``cfg.trainer`` against
    ``TrainerSchema``, and ``cfg.optimizer``'s values against the types of the defaults in
    ``configs/optimizer/<name>.yaml``. Raises ``ConfigError`` naming the key; returns the
    trainer settings, typed."""
    trainer: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    schema = settings()
    for key, value in _flat(trainer).items():
        if key not in schema:
            known = ", ".join(f.name for f in fields(TrainerSchema))
            raise ConfigError(f"trainer.{key}: not a trainer setting; the settings are {known}")
        kind = schema[key].base
        wrong_int = kind is int and isinstance(value, float) and not value.is_integer()
        wrong_bool = kind is bool and not isinstance(value, bool)  # OmegaConf takes 2 as true
        if wrong_int or wrong_bool:
            raise ConfigError(f"trainer.{key}={value!r}: must be {schema[key].allowed()}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TrainerSchema), trainer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        allowed = schema[key].allowed() if key in schema else "another value"
        raise ConfigError(f"trainer.{key}={_lookup(trainer, key)!r}: must be {allowed}") from None
    values = _flat(OmegaConf.to_container(typed))  # type: ignore[arg-type]
    for key, rule in schema.items():
        if not rule.ok(values[key]):
            raise ConfigError(f"trainer.{key}={values[key]!r}: must be {rule.allowed()}")
    _check_optimizer(cfg, config_dir)
    result = OmegaConf.to_object(typed)
    assert isinstance(result, TrainerSchema)
    return result


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


def _either(names: list[str]) -> str:
    """``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
