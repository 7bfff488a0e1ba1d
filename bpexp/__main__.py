"""``python -m bpexp``: one experiment, a Hydra multirun (``-m``), or a named sweep.

python -m bpexp                                  # the default experiment
python -m bpexp optimizer=nesterov optimizer.lr=0.5
python -m bpexp -m optimizer=sgd,momentum,nesterov optimizer.lr=0.1,0.5,1.0 seed=0,1,2
python -m bpexp sweep=optimizers                 # a named sweep from sweeps/sweep/
"""

from __future__ import annotations

import os
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


def _on_stop_signal(signum: int, frame: object) -> None:
    """Ctrl-C (SIGINT) or SIGTERM in the launching process.

    The first one interrupts the run in progress here by raising; in a sweep whose jobs run in
    other processes it stops the jobs instead and lets the launcher return (see
    :func:`bpexp.sweep.stop_jobs`). A second one kills every job process and exits at once.
    """
    if sweep.stopping():
        sweep.kill_jobs()
        print(
            "\nstopped at once (second signal); resuming the sweep closes its runs", file=sys.stderr
        )
        os._exit(128 + signum)
    if sweep.stop_jobs(signum):
        print(f"\n{signal.Signals(signum).name}: stopping the sweep's jobs", file=sys.stderr)
        return
    stop = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if sweep.store_write_defers(stop):
        return  # a store write is in progress: it raises once done
    raise stop


def _exit_code(signum: int) -> int:
    return 143 if signum == signal.SIGTERM else 130


def main() -> None:
    config.check_command_line(sys.argv[1:])
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
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
        if sweep.stopping():  # the launcher gave up on jobs stopped by a signal (submitit)
            sweep.finish("interrupted")
            sys.exit(_exit_code(sweep.stopping()))
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            stopped = "aborted"
        sweep.finish(stopped)
        raise
    if sweep.stopping():  # the launcher collected the jobs stopped by a signal
        sweep.finish("interrupted")
        print("interrupted (the runs in progress were closed as KILLED)", file=sys.stderr)
        sys.exit(_exit_code(sweep.stopping()))
    code = sweep.finish()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
