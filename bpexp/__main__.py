"""``python -m bpexp``: one experiment, a Hydra multirun (``-m``), or a named sweep.

python -m bpexp                                  # the default experiment
python -m bpexp optimizer=nesterov optimizer.lr=0.5
python -m bpexp -m optimizer=sgd,momentum,nesterov optimizer.lr=0.1,0.5,1.0 seed=0,1,2
python -m bpexp sweep=optimizers                 # a named sweep from sweeps/sweep/
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bpexp import config, sweep
from bpexp.errors import ConfigError, TrackingError

config.register()


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep.run_job(cfg)
        return
    from bpexp.app import execute

    try:
        execute(cfg, echo=True)
    except (ConfigError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    interrupted = False
    try:
        _hydra_main()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        code = sweep.finish(interrupted=interrupted)
        if code and not interrupted:
            sys.exit(code)


if __name__ == "__main__":
    main()
