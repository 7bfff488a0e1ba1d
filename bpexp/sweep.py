"""Multiruns: one MLflow parent run per sweep, a result file per job, and the summary table.

Hydra runs :class:`SweepCallback.on_multirun_start` in the launching process before any job:
it creates the store, the experiment and the parent run once (several jobs creating a fresh
SQLite store at once would corrupt it) and hands the sweep folder and the parent run id to the
jobs through environment variables, which joblib's and submitit's workers inherit.

A job never raises out of a multirun (Hydra would skip ``on_multirun_end``); it writes
``results/<job>.json`` into the sweep folder instead. :func:`finish` reads them all, prints and
saves ``summary.csv`` and closes the parent run. ``python -m bpexp`` calls it when Hydra returns
or raises, so the summary is written also when jobs failed or the sweep was interrupted.

Fixed costs of a job, paid by both launchers unless said (54-job ``optimizers`` sweep, 2 cores,
see ``benchmarks/bench_sweep.py``): Hydra composes every job's config twice, once in the
launching process before any job starts (the sweeper's ``validate_batch_is_legal``, ~57 ms a
job, serial) and once for the job itself; with ``hydra/launcher=joblib`` each job also pickles
Hydra's state and re-scans Hydra's plugins (~10 ms). What is ours to cut is cut here: the
joblib workers are forked from a server that imports a job's modules while the launching
process composes (:func:`_start_joblib_workers`), and the heap of the launching process and of
each worker is frozen once its modules are in (:func:`_freeze_heap`).
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import signal
import socket
import sys
import threading
import traceback
from datetime import datetime
from pathlib import Path

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bpexp.errors import ConfigError, TrackingError

SWEEP_DIR_ENV = "BPEXP_SWEEP_DIR"
SWEEP_START_ENV = "BPEXP_SWEEP_START"
PARENT_FILE = "parent_run_id"
SWEEP_NAME_ENV = "BPEXP_SWEEP_NAME"
TRACKING_URI_ENV = "BPEXP_SWEEP_TRACKING_URI"
FINAL_METRICS = [
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "test/loss",
    "test/accuracy",
]
SUMMARY_COLUMNS = [
    "job",
    "stage",
    "overrides",
    "outcome",
    "epochs",
    *FINAL_METRICS,
    "run_id",
    "error",
]
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BLAS_THREADS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# Once-per-process work of multirun jobs, done by the first job.
_process = {"blas_limited": False, "frozen_after_job": False}

# Ctrl-C and SIGTERM in a sweep (see stop_jobs and _on_job_signal). `launching`: this process
# started the multirun; `jobs_elsewhere`: its launcher runs jobs in other processes (joblib,
# submitit); `in_job`: a job is training in this process; `stopping`: the signal number of the
# first stop signal this process got, 0 before.
_stop = {"launching": False, "jobs_elsewhere": False, "in_job": False, "stopping": 0}
STOP_FILE = ".stopping"  # in the sweep folder once the launching process got a stop signal


def sweep_name(choices: dict) -> str:
    return choices.get("sweep") or "multirun"


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        name = sweep_name(dict(config.hydra.runtime.choices))
        os.environ[SWEEP_DIR_ENV] = str(sweep_dir)
        os.environ[SWEEP_NAME_ENV] = name
        os.environ[SWEEP_START_ENV] = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        print(f"sweep {name!r}: outputs in {sweep_dir}", flush=True)
        launcher = str((config.hydra.get("launcher") or {}).get("_target_", ""))
        _stop["launching"] = True
        _stop["jobs_elsewhere"] = "joblib" in launcher or "submitit" in launcher
        (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # left by an earlier, stopped sweep
        if "submitit" in launcher:
            _keep_sigint_from_launched_processes()
        # Held while this process lives, even through kill -9: tells a later sweep whether
        # this sweep's parent run is stale (tracking.close_stale_runs).
        _stop["running_lock"] = open(sweep_dir / ".running", "w")  # tracking.RUNNING_LOCK
        fcntl.flock(_stop["running_lock"], fcntl.LOCK_EX)
        # After the environment above is set: the workers inherit it when they start.
        _start_joblib_workers(config)
        if config.tracking.enabled:
            from bpexp import tracking as tr

            # The store and the experiment exist before any job starts; the parent run is
            # created by the first job whose config is valid (see ensure_parent), so that a
            # sweep of invalid jobs leaves no run behind.
            uri = tr.tracking_uri(config.tracking.uri)
            client = tr.connect(uri, config.tracking.timeout_seconds)
            experiment_id = tr.ensure_experiment(client, config.tracking.experiment)
            os.environ[TRACKING_URI_ENV] = uri
            # Runs left RUNNING by a process that died hard (kill -9, second Ctrl-C): resuming
            # a sweep closes them as interrupted first, so that they do not look alive.
            stale = tr.close_stale_runs(client, experiment_id)
            if stale:
                print(f"closed {len(stale)} stale RUNNING run(s) as interrupted", flush=True)
        # Hydra composes every job's config here next, serially: no full collections meanwhile.
        _freeze_heap()


def ensure_parent(client, experiment_id: str) -> str:
    """The sweep's parent run id, created once for all jobs (a file lock in the sweep folder
    serialises parallel jobs; the id is kept in ``<sweep_dir>/parent_run_id``)."""
    sweep_dir = Path(os.environ[SWEEP_DIR_ENV])
    name = os.environ.get(SWEEP_NAME_ENV, "multirun")
    with open(sweep_dir / ".parent.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        id_file = sweep_dir / PARENT_FILE
        if id_file.exists():
            return id_file.read_text().strip()
        run = client.create_run(
            experiment_id,
            run_name=f"{name} {os.environ.get(SWEEP_START_ENV, '')}".strip(),
            tags={
                "sweep": name,
                "bpexp.kind": "sweep",
                "bpexp.sweep_dir": str(sweep_dir),
                "bpexp.host": socket.gethostname(),
            },
        )
        id_file.write_text(run.info.run_id)
        print(f"sweep {name!r}: parent run {run.info.run_id}", flush=True)
        return run.info.run_id


def _job_modules(config: DictConfig) -> list[str]:
    """The modules a job of ``config`` imports: NumPy, pandas and the core (~0.6 s),
    scikit-learn's data sets (~0.4 s, for digits and moons), MLflow (~0.6 s) and its SQL store
    (~0.5 s, for a database URI), matplotlib for the run plots (~0.3 s)."""
    modules = ["bpexp.sweep", "hydra_plugins.hydra_joblib_launcher._core", "bpexp.app"]
    if config.data.name in ("digits", "moons"):
        modules.append("sklearn.datasets")  # bpexp.data imports it on first use
    if config.tracking.enabled:
        modules += ["bpexp.tracking", "pyarrow.parquet"]
        uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:"
        if not uri.startswith(("http://", "https://")):
            modules.append("mlflow.store.tracking.sqlalchemy_store")
        if config.tracking.plots:
            modules.append("bpexp.plots")
    return modules


def _start_joblib_workers(config: DictConfig) -> None:
    """Have the joblib launcher fork its workers from a server that imported a job's modules.

    The joblib plugin always uses loky, whose default start method runs a fresh interpreter
    per worker: ~0.3 s to start and ~1-2 s to import what a job needs, before the first job of
    each worker. With loky's ``forkserver`` start method the workers are forked from one
    server process instead, started here with those modules preloaded. It imports them while
    Hydra's sweeper composes every job's config in this process (~57 ms a job, serially,
    before the launcher is called), on the other core, so the workers start ready at once.

    The workers see the environment of this process as it is now (the server keeps it), with
    one BLAS thread (as :func:`_limit_blas_threads` sets anyway), so that the server's NumPy
    starts no BLAS thread pool to fork. Where ``forkserver`` does not exist (Windows), or when
    the command is a script rather than ``python -m bpexp``, nothing changes.
    """
    launcher = config.hydra.get("launcher") or {}
    if launcher.get("_target_") != JOBLIB_LAUNCHER:
        return
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    # A worker forked from the server re-runs the main module unless it is a package's
    # __main__ (python -m bpexp): a script calling bpexp's main() would start a sweep per worker.
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if not getattr(main_spec, "name", "").endswith(".__main__"):
        return
    try:
        from joblib.externals.loky.backend import context

        context.set_start_method("forkserver", force=True)
        multiprocessing.set_forkserver_preload(_job_modules(config))
        saved = {k: os.environ.get(k) for k in BLAS_THREADS_ENV}
        os.environ.update(dict.fromkeys(BLAS_THREADS_ENV, "1"))
        # The server ignores SIGINT by itself; SIGTERM ignored too (the disposition goes
        # through exec), since loky takes the server's end for the end of every worker forked
        # from it (exit code 255), and a SIGTERM to the process group reaches the server too.
        # Workers keep ignoring it until their first job handles it (_on_job_signal).
        sigterm = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key)
                else:
                    os.environ[key] = value
    except Exception as exc:  # only the head start is lost: loky starts its workers as usual
        print(
            f"warning: joblib workers not started early: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )


def _limit_blas_threads() -> None:
    """One BLAS thread per job when jobs run side by side (joblib, submitit_local); the limit
    holds for the process, so it is set once."""
    if _process["blas_limited"]:
        return
    _process["blas_limited"] = True
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "joblib" in launcher or "submitit" in launcher:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def _freeze_heap() -> None:
    """Collect once, then exempt every object alive now from later collections (gc.freeze).

    A job's process holds ~1-2 million long-lived objects (the modules of NumPy, pandas, Hydra,
    scikit-learn, MLflow, matplotlib), and every full collection walks them all: 85 ms untracked,
    0.2-0.3 s with MLflow and matplotlib loaded, 6-18 times a worker in the 54-job sweep. Done
    in the launching process before Hydra composes the jobs' configs, and after a process's
    first job, when the modules a job imports lazily are in; later jobs' garbage is still
    collected as usual.
    """
    gc.collect()
    gc.freeze()


def stop_jobs(signum: int) -> bool:
    """The launching process got its first Ctrl-C or SIGTERM; True if it should not raise.

    Where the jobs run in other processes (joblib's workers, submitit's tasks), raising here
    would make the launcher tear them down (SIGKILL) while they close their runs. Instead the
    sweep folder gets a ``.stopping`` file, the signal is passed on to every process below this
    one (a terminal's Ctrl-C already reached them; ``kill PID`` did not), and the launcher is
    left to collect the jobs: each job in progress closes its run as KILLED (outcome
    interrupted) with its points and reports ``interrupted``, and a job starting after that
    returns at once (see :func:`_on_job_signal`). The summary and the parent run are then
    closed as for any interrupted sweep. A job running in this process itself (basic launcher,
    joblib with one job at a time) is interrupted by raising, as before.
    """
    _stop["stopping"] = signum
    if not (_stop["launching"] and _stop["jobs_elsewhere"]) or _stop["in_job"]:
        return False
    sweep_dir = os.environ.get(SWEEP_DIR_ENV)
    if sweep_dir:
        Path(sweep_dir, STOP_FILE).touch()
    # SIGTERM for both: submitit's local controller passes SIGTERM on to its tasks (on SIGINT it
    # kills them after 1 s); a job process treats both alike.
    _signal_descendants(signal.SIGTERM)
    return True


def stopping() -> int:
    """The signal number of the stop signal this process got, or 0."""
    return _stop["stopping"]


def kill_jobs() -> None:
    """A second Ctrl-C: SIGKILL every process below this one (runs in progress stay RUNNING
    until the sweep is resumed, which marks them interrupted)."""
    _signal_descendants(signal.SIGKILL)


def _signal_descendants(signum: int) -> None:
    """Send ``signum`` to every process below this one (Linux's /proc; elsewhere, none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(stat.parent.name))
    todo, found = [os.getpid()], []
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    for pid in found:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _keep_sigint_from_launched_processes() -> None:
    """Block SIGINT in the main thread, which starts submitit's processes, and take it in a
    thread of its own instead: Python still runs the handler in the main thread.

    Each submitit_local job has a controller process that, on Ctrl-C, SIGKILLs its task one
    second later, often before the job has closed its run. A blocked signal stays blocked
    through fork and exec, so the controllers never see Ctrl-C (SIGTERM they pass on to their
    task), and the tasks take it once their first job unblocks it (_handle_signals_in_job_process).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def receive() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        threading.Event().wait()

    threading.Thread(target=receive, name="bpexp-sigint", daemon=True).start()


def _on_job_signal(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM in a job process other than the launching one: interrupt the job in
    progress (its run is closed as KILLED), once; the launching process passes on what a
    terminal also sent, so repeats are ignored, and a second Ctrl-C is the launching process's
    to act on (it kills every job at once)."""
    if _stop["stopping"]:
        return
    _stop["stopping"] = signum
    if _stop["in_job"]:
        raise KeyboardInterrupt


def _handle_signals_in_job_process() -> None:
    """In job processes (joblib's workers, submitit's tasks), from their first job on: the
    default SIGTERM would end them with their run left RUNNING (submitit even ignores it)."""
    if _stop["launching"] or signal.getsignal(signal.SIGTERM) is _on_job_signal:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_job_signal)
        signal.signal(signal.SIGTERM, _on_job_signal)
        # Blocked in submitit's processes (see _keep_sigint_from_launched_processes); one
        # that came meanwhile is delivered now, and the job does not start.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_job(cfg: DictConfig) -> dict:
    """One job of a multirun: run it, record its result file, never raise (but on Ctrl-C in
    the launching process)."""
    _handle_signals_in_job_process()
    sweep_dir = os.environ.get(SWEEP_DIR_ENV)
    if _stop["stopping"] or (sweep_dir and Path(sweep_dir, STOP_FILE).exists()):
        return {}  # the sweep is stopping: this job does not start
    _stop["in_job"] = True
    try:
        row = _run_job(cfg)
    finally:
        _stop["in_job"] = False
    if not _process["frozen_after_job"]:
        _process["frozen_after_job"] = True
        _freeze_heap()
    return row


def _run_job(cfg: DictConfig) -> dict:
    preloaded = "bpexp.app" in sys.modules
    from bpexp.app import execute

    hydra_cfg = HydraConfig.get()
    _limit_blas_threads()
    sweep_dir = Path(os.environ.get(SWEEP_DIR_ENV, str(hydra_cfg.sweep.dir)))
    os.environ.setdefault(SWEEP_DIR_ENV, str(sweep_dir))
    job = int(hydra_cfg.job.num)
    (sweep_dir / "results").mkdir(parents=True, exist_ok=True)
    row: dict = {"job": job, "overrides": " ".join(hydra_cfg.overrides.task)}
    protocol = hydra_cfg.sweeper.get("protocol")
    tags = {}
    if protocol is not None:
        # The stage follows from the seed: confirm seeds are never tuning seeds.
        row["stage"] = "confirm" if cfg.seed in protocol.confirm_seeds else "tune"
        tags["bpexp.stage"] = row["stage"]
    # Not in summary.csv: which process ran the job, and whether it had bpexp.app imported
    # before the job (a joblib worker forked from the preloaded server, or a later job).
    row["process"] = {"pid": os.getpid(), "preloaded": preloaded}
    try:
        result = execute(
            cfg,
            echo=True,
            sweep_name=os.environ.get(SWEEP_NAME_ENV),
            parent=ensure_parent,
            tags=tags,
        )
        row["outcome"] = "skipped" if result.skipped else result.outcome
        row["run_outcome"] = result.outcome
        row["steps_per_epoch"] = result.steps_per_epoch
        if protocol is not None:
            row["curve"] = _curve(cfg, result, protocol.yardstick)
        row["run_id"] = result.run_id
        row["epochs"] = len(result.history) - 1 if len(result.history) else None
        for key in FINAL_METRICS:
            row[key] = result.metrics.get(key)
    except ConfigError as exc:
        row |= {"outcome": "invalid", "error": str(exc)}
        print(f"error: {exc}", file=sys.stderr, flush=True)
    except TrackingError as exc:
        row |= {"outcome": "failed", "error": str(exc)}
        print(f"error: {exc}", file=sys.stderr, flush=True)
    except KeyboardInterrupt as exc:
        row |= {"outcome": "interrupted", "run_id": getattr(exc, "run_id", None)}
        _write_result(sweep_dir, row)
        if _stop["launching"]:
            raise
        # A job process (see stop_jobs): the job returns, so that the launcher collects it.
        return row
    except Exception as exc:
        row |= {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    _write_result(sweep_dir, row)
    return row


def _curve(cfg: DictConfig, result, metric: str) -> list[float]:
    """``metric`` at every epoch (0 = at initialisation) of a job's run, for time to target: from
    the run itself, or from the store for a job skipped because its run exists."""
    if metric in result.history.columns:
        return [float(v) for v in result.history[metric]]
    if not result.run_id:
        return []
    from bpexp import tracking as tr

    client = tr.connect(tr.tracking_uri(cfg.tracking.uri), cfg.tracking.timeout_seconds)
    points = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, metric))
    return [float(v) for _, v in points]


def _write_result(sweep_dir: Path, row: dict) -> None:
    folder = sweep_dir / "results"
    tmp = folder / f".{row['job']}.json.tmp"
    tmp.write_text(json.dumps(row, default=str))
    tmp.replace(folder / f"{row['job']}.json")


def summary(sweep_dir: Path) -> pd.DataFrame:
    """One row per job that reported: overrides, outcome, final validation and test metrics."""
    rows = [json.loads(p.read_text()) for p in sorted((sweep_dir / "results").glob("*.json"))]
    frame = pd.DataFrame(rows).reindex(columns=SUMMARY_COLUMNS)
    return frame.sort_values("job").reset_index(drop=True)


def finish(stopped: str | None = None) -> int:
    """Write the sweep's summary and close its parent run; the exit code for the command.

    ``stopped`` is ``"interrupted"`` (Ctrl-C, SIGTERM) or ``"aborted"`` (Hydra raised) when the
    multirun did not end normally. Does nothing (returns 0) when no multirun was started here.
    """
    sweep_dir = os.environ.pop(SWEEP_DIR_ENV, None)
    if sweep_dir is None:
        return 0
    sweep_dir = Path(sweep_dir)
    uri = os.environ.pop(TRACKING_URI_ENV, None)
    for key in (SWEEP_NAME_ENV, SWEEP_START_ENV):
        os.environ.pop(key, None)
    if stopped == "aborted" and not (sweep_dir / "results").exists():
        return 1  # stopped before any job (bad input, reported already): nothing to sum up
    (sweep_dir / "results").mkdir(parents=True, exist_ok=True)
    table = summary(sweep_dir)
    table.to_csv(sweep_dir / "summary.csv", index=False)
    counts = table["outcome"].value_counts().to_dict()
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60
    ):
        print(
            f"\nsweep summary ({len(table)} jobs: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + (f"; the sweep was {stopped}" if stopped else "")
            + ")"
        )
        print(
            table.drop(columns=["error", "run_id"]).to_string(
                index=False, float_format="{:.4f}".format
            )
        )
    print(f"summary: {sweep_dir / 'summary.csv'}")
    bad = table[table["outcome"].isin(["failed", "invalid"])]
    parent_file = sweep_dir / PARENT_FILE
    if uri and parent_file.exists():
        status = {"interrupted": "KILLED", "aborted": "FAILED"}.get(
            stopped, "FAILED" if len(bad) else "FINISHED"
        )
        _close_parent(uri, parent_file.read_text().strip(), sweep_dir, table, status)
    for _, row in bad.iterrows():
        print(
            f"job {row['job']} {row['outcome']} ({row['overrides']}): {row['error']}",
            file=sys.stderr,
        )
    return 1 if len(bad) or stopped else 0


def _close_parent(uri: str, parent: str, sweep_dir: Path, table: pd.DataFrame, status: str) -> None:
    """Log the summary and the report (comparison, plots, arm metrics) to the parent run
    and close it; a report failure must not lose the summary or leave the parent open."""
    from bpexp import report
    from bpexp import tracking as tr

    client = tr.connect(uri)
    try:
        # summary.csv stays in the sweep folder when the artifact store fails (disk full).
        client.log_artifact(parent, str(sweep_dir / "summary.csv"))
        if (sweep_dir / "protocol" / "protocol.json").exists():
            _log_protocol(client, parent, sweep_dir / "protocol")
        report.log_sweep(client, parent, sweep_dir, table)
    except Exception as exc:
        print(f"warning: no sweep report: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        client.set_terminated(parent, status=status)


def _log_protocol(client, parent: str, folder: Path) -> None:
    """The protocol on the parent run: its settings as ``protocol.*`` params, each arm's chosen
    setting as ``chosen.<arm>.<key>`` params, the best arm as the tag ``bpexp.protocol.best``,
    and the files (``protocol.json``, ``tune.csv``, ``chosen.csv``, ``final_table.csv``) as
    artifacts under ``protocol/``."""
    import re

    from mlflow.entities import Param, RunTag

    plan = json.loads((folder / "protocol.json").read_text())
    params = {
        f"protocol.{key}": value for key, value in plan["settings"].items() if key != "search"
    }
    params |= {f"protocol.search.{key}": text for key, text in plan["search"].items()}
    tags = {}
    if (folder / "chosen.csv").exists():
        chosen = pd.read_csv(folder / "chosen.csv")
        keys = [c for c in chosen.columns if c not in ("arm", "setting", "score", "seeds")]
        for row in chosen.to_dict("records"):
            arm = re.sub(r"[^\w.:/-]+", "_", str(row["arm"]))
            params |= {f"chosen.{arm}.{key}": row[key] for key in keys}
    if (folder / "final_table.csv").exists():
        table = pd.read_csv(folder / "final_table.csv")
        if len(table):
            tags["bpexp.protocol.best"] = str(table.loc[0, "arm"])
    client.log_batch(
        parent,
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.log_artifacts(parent, str(folder), "protocol")
