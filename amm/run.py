"""``python -m amm.run [overrides]``: one training run (or ``-m``: a Hydra multirun sweep).

    python -m amm.run optimizer=sgd optimizer.momentum=0.8 trainer.max_steps=500
    python -m amm.run -m experiment=figure3 scale=reduced optimizer=am_sgd,adam

Each run lives in ``runs/<experiment>/<scale>/<overrides>`` (see configs/config.yaml), so the
same command resumes a pre-empted run and returns at once for a finished one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from amm.config import CONFIG_DIR, require_config_dir


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    from amm.checkpoint import CheckpointError
    from amm.config import ConfigError
    from amm.rundir import RunDirError
    from amm.trainer import train  # after Hydra parsed the command line: `--help` stays fast

    hydra_cfg = HydraConfig.get()
    experiment = hydra_cfg.runtime.choices.get("experiment") or "default"
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        summary = train(cfg, run_dir, experiment=experiment)
    except (ConfigError, RunDirError, CheckpointError) as err:
        # the user's to fix, and the message says how: no traceback; on the console and in
        # run.log (Hydra's job logging)
        logging.getLogger("amm.run").error("%s", err)
        if isinstance(err, ConfigError):
            remove_if_only_hydra(run_dir)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and goes on with the others
        raise SystemExit(1) from None
    return summary.get("loss", float("nan"))  # what sweepers (e.g. Optuna) minimise


def remove_if_only_hydra(run_dir: Path) -> None:
    """Delete a run directory that Hydra made for a config the suite then refused (it holds
    Hydra's .hydra/ and log only), so a typo leaves no run behind; an existing run is kept."""
    if run_dir.is_dir() and all(
        p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()
    ):
        logging.shutdown()  # the job's log file handler
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:  # and the sweep folders it alone needed
            if parent == Path.cwd() or any(parent.iterdir()):
                break
            parent.rmdir()


if __name__ == "__main__":
    require_config_dir()
    main()
