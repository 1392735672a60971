"""``python -m amm.run [overrides]``: one training run (or ``-m``: a Hydra multirun sweep).

    python -m amm.run optimizer=sgd optimizer.momentum=0.8 trainer.max_steps=500
    python -m amm.run -m experiment=figure3 scale=reduced optimizer=am_sgd,adam

Each run lives in ``runs/<experiment>/<scale>/<overrides>`` (see configs/config.yaml), so the
same command resumes a pre-empted run and returns at once for a finished one.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from amm.config import CONFIG_DIR, require_config_dir


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    from amm.trainer import train  # after Hydra parsed the command line: `--help` stays fast

    hydra_cfg = HydraConfig.get()
    experiment = hydra_cfg.runtime.choices.get("experiment") or "default"
    summary = train(cfg, Path(hydra_cfg.runtime.output_dir), experiment=experiment)
    return summary.get("loss", float("nan"))  # what sweepers (e.g. Optuna) minimise


if __name__ == "__main__":
    require_config_dir()
    main()
