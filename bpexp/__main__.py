"""``python -m bpexp``: one experiment, a Hydra multirun (``-m``), or a named sweep.

python -m bpexp                                  # the default experiment
python -m bpexp optimizer=nesterov optimizer.lr=0.5
python -m bpexp -m optimizer=sgd,momentum,nesterov optimizer.lr=0.1,0.5,1.0 seed=0,1,2
python -m bpexp sweep=optimizers                 # a named sweep from sweeps/sweep/
"""

from __future__ import annotations

import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bpexp import config, sweep
from bpexp.errors import ConfigError, TrackingError

config.register()


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep.run_job(cfg)  # the sweeper reads a job's result row from its return
    from bpexp.app import execute

    try:
        execute(cfg, echo=True)
    except (ConfigError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's preemption, ``kill``): handled like Ctrl-C, so the run in progress
    is closed as KILLED with its metrics kept."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    config.check_command_line(sys.argv[1:])
    signal.signal(signal.SIGTERM, _on_sigterm)
    stopped = None
    try:
        _hydra_main()
    except KeyboardInterrupt as exc:
        stopped = "interrupted"
        code = 143 if isinstance(exc, Terminated) else 130
        sweep.finish(stopped)
        print("interrupted (a tracked run in progress was closed as KILLED)", file=sys.stderr)
        sys.exit(code)
    except BaseException as exc:
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            stopped = "aborted"
        sweep.finish(stopped)
        raise
    code = sweep.finish()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
