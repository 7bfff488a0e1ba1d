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

from bpexp import config, stop, sweep
from bpexp.errors import ConfigError, TrackingError

config.register()


@hydra.main(version_base="1.3", config_path=str(config.CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep.run_job(cfg)  # the sweeper reads the job's JobResult from its return
    from bpexp.app import execute

    try:
        execute(cfg, echo=True)
    except (ConfigError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    config.check_command_line(sys.argv[1:])
    stop.install()
    try:
        _hydra_main()
    except KeyboardInterrupt:
        _end("interrupted")
    except BaseException as exc:
        if stop.stopping():  # the launcher gave up on jobs stopped by a signal (submitit)
            _end("interrupted")
        failed = not isinstance(exc, SystemExit) or exc.code not in (0, None)
        code = _finish("aborted" if failed else None)
        if code > 128:  # a stop signal while the sweep was summed up
            sys.exit(code)
        raise
    if stop.stopping():  # the launcher collected the jobs stopped by a signal
        _end("interrupted")
    code = _finish(None)
    if code:
        sys.exit(code)


def _finish(stopped: str | None) -> int:
    """:func:`bpexp.sweep.finish`, which handles a stop signal itself; one that lands between
    two of its steps ends the command as any stop signal does."""
    try:
        return sweep.finish(stopped)
    except KeyboardInterrupt:
        return stop.exit_code()


def _end(stopped: str) -> None:
    """Exit after a stop signal: the sweep (if any) summed up, its parent run KILLED."""
    code = stop.exit_code()
    _finish(stopped)
    print("interrupted (the runs in progress were closed as KILLED)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
