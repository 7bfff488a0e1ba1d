"""Multiruns: one MLflow parent run per sweep, a result file per job, and the summary table.

Hydra runs :class:`SweepCallback.on_multirun_start` in the launching process before any job:
it creates the store and the experiment once (several jobs creating a fresh SQLite store at
once would race), and keeps the sweep folder and the store's URI for :func:`finish`. A job, in
whatever process its launcher runs it, reads what it needs from Hydra's own config of the job
(``HydraConfig``: the sweep folder, the sweep's name) and from the plan the sweeper wrote for
it (:class:`bpexp.jobs.JobPlan`: its arm and stage); the parent run is created by the first
valid job and its id kept in ``<sweep folder>/parent_run_id``.

A job never raises out of a multirun (Hydra would skip ``on_multirun_end``); it writes its
:class:`bpexp.jobs.JobResult` into the sweep folder instead. :func:`finish` reads them all,
prints and saves ``summary.csv`` and closes the parent run. ``python -m bpexp`` calls it when
Hydra returns or raises, so the summary is written also when jobs failed or the sweep was
interrupted. Stop signals are :mod:`bpexp.stop`'s.

Fixed costs of a job: Hydra's launcher composes every job's config (the "Hydra composition"
row of ``python benchmarks/bench_sweep.py``). Before launching, bpexp's sweeper composes only
the jobs that bring an override not composed yet, not every job as Hydra's own sweeper does:
that halved the main job's untracked time. One saving is kept because it pays in the main
job's wall time: the heap is frozen once a process has its modules in (:func:`_freeze_heap`).
Measured on a 42-run cut of the main job (5 lrs, 4 confirm seeds), two rounds: 194.5 and
169.6 s frozen, 211.3 and 198.3 s not (8% and 15% less), on a busy 2-core machine.
"""

from __future__ import annotations

import fcntl
import functools
import gc
import json
import os
import socket
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bpexp import jobs, stop
from bpexp.errors import ConfigError, TrackingError

PARENT_FILE = "parent_run_id"

# Once-per-process work of multirun jobs, done by the first job.
_process = {"blas_limited": False, "frozen_after_job": False}
# The multirun this process launched: its folder, its store's URI (None untracked) and the
# handle of its .running lock, for finish(); empty when this process launched none.
_launched: dict[str, object] = {}


def sweep_name(choices: dict) -> str:
    return choices.get("sweep") or "multirun"


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        name = sweep_name(dict(config.hydra.runtime.choices))
        lock = _take_folder(sweep_dir)
        _launched.clear()
        verbose = config.get("verbose")
        _launched.update(dir=sweep_dir, uri=None, running_lock=lock, verbose=verbose or 0)
        print(f"sweep {name!r}: outputs in {sweep_dir}", flush=True)
        stop.launching(sweep_dir, str((config.hydra.get("launcher") or {}).get("_target_", "")))
        if config.tracking.enabled:
            from bpexp import tracking as tr

            # The store and the experiment exist before any job starts; the parent run is
            # created by the first job whose config is valid (see ensure_parent), so that a
            # sweep of invalid jobs leaves no run behind.
            uri = tr.tracking_uri(config.tracking.uri)
            try:
                client = tr.connect(uri, config.tracking.timeout_seconds)
                experiment_id = tr.ensure_experiment(client, config.tracking.experiment)
                _launched.update(uri=uri, timeout=config.tracking.timeout_seconds)
                _record_store(sweep_dir, uri)
                # Runs left RUNNING by a process that died hard (kill -9, second Ctrl-C, a
                # store that failed under them): resuming a sweep closes them as interrupted
                # first, so that they do not look alive.
                stale = tr.close_stale_runs(client, experiment_id)
            except TrackingError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            except Exception as exc:  # the store answered, then failed
                print(
                    f"error: tracking.uri={tr.redact(uri)!r}: the store failed at the start of "
                    f"the sweep ({tr.error_text(exc)}); check it, or use another tracking.uri",
                    file=sys.stderr,
                    flush=True,
                )
                raise SystemExit(2) from None
            if stale:
                print(f"closed {len(stale)} stale RUNNING run(s) as interrupted", flush=True)
        # Hydra composes every job's config here next, serially: no full collections meanwhile.
        _freeze_heap()


EARLIER = ("results", "plan", "protocol", "report", PARENT_FILE, "summary.csv", "multirun.yaml")


def _take_folder(sweep_dir: Path):
    """Lock the sweep folder for this process (``.running``, held until the process ends, even
    through kill -9) and return the lock's file. A folder another sweep is running in is
    refused (exit 2): two sweeps never share one. What an earlier, ended sweep left in it (its
    results, its parent run's id) is moved to ``earlier/<time>/``, so that this sweep neither
    reports those jobs nor hangs its runs on that parent."""
    lock = open(sweep_dir / jobs.RUNNING_LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        print(
            f"error: sweep folder {sweep_dir} is in use by another sweep, still running; set "
            "another hydra.sweep.dir, or wait until that sweep ends",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()} {stop.process_start(os.getpid())} {socket.gethostname()}\n")
    lock.flush()
    left = [sweep_dir / n for n in EARLIER if (sweep_dir / n).exists()]
    if left:
        aside = sweep_dir / "earlier" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        aside.mkdir(parents=True)
        for path in left:
            path.rename(aside / path.name)
    return lock


def launcher_tags(sweep_dir: Path) -> dict[str, str]:
    """The launching process of the sweep in ``sweep_dir`` as run tags (``bpexp.pid``,
    ``bpexp.pid_start``, ``bpexp.host``), read from its ``.running`` file: the parent run is
    created by a job, maybe in another process or on another node (SLURM), but lives as long
    as the launching process."""
    try:
        words = (sweep_dir / jobs.RUNNING_LOCK).read_text().split()
    except OSError:
        return {}
    pid, start, host = (words + ["", "", ""])[:3]
    if not pid.isdigit():
        return {}
    return {"bpexp.pid": pid, "bpexp.pid_start": start, "bpexp.host": host}


STORE_FILE = ".store"  # the SQLite store's file identity at the start of the sweep


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve()


def _record_store(sweep_dir: Path, uri: str) -> None:
    path = _sqlite_path(uri)
    if path is not None:
        info = path.stat()
        (sweep_dir / STORE_FILE).write_text(f"{info.st_dev}:{info.st_ino} {path}\n")


def store_changed(sweep_dir: Path, uri: str) -> str | None:
    """For the sweep's SQLite store: "deleted" or "replaced" when its file is no longer the one
    the sweep started with (runs written meanwhile through open connections went nowhere),
    else None. (The file's path is the one this process derives from ``uri``.)"""
    path = _sqlite_path(uri)
    if path is None or not (sweep_dir / STORE_FILE).exists():
        return None
    identity, _, recorded = (sweep_dir / STORE_FILE).read_text().strip().partition(" ")
    if recorded != str(path):  # a job of this sweep logging to another store
        return None
    try:
        info = path.stat()
    except FileNotFoundError:
        return "deleted"
    return "replaced" if identity != f"{info.st_dev}:{info.st_ino}" else None


def _store_gone_message(uri: str, change: str) -> str:
    from bpexp import tracking as tr

    return (
        f"tracking.uri={tr.redact(uri)!r}: the store was deleted or replaced during the sweep "
        f"({change}): the runs written to it before are not in the store there now; running "
        "the same command again runs those jobs again"
    )


def ensure_parent(client, experiment_id: str, say: bool = False) -> str:
    """The sweep's parent run id, created once for all jobs (a file lock in the sweep folder
    serialises parallel jobs; the id is kept in ``<sweep_dir>/parent_run_id``). ``say``: print
    a line when this job creates it (``verbose=2``, the jobs' own lines; the sweep's end prints
    the id in any case)."""
    sweep_dir = job_sweep_dir()
    name = sweep_name(dict(HydraConfig.get().runtime.choices))
    started = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    with open(sweep_dir / ".parent.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        id_file = sweep_dir / PARENT_FILE
        if id_file.exists():
            return id_file.read_text().strip()
        run = client.create_run(
            experiment_id,
            run_name=f"{name} {started}",
            tags={
                "sweep": name,
                "bpexp.kind": "sweep",
                "bpexp.sweep_dir": str(sweep_dir),
                **launcher_tags(sweep_dir),
            },
        )
        id_file.write_text(run.info.run_id)
        if say:
            print(f"sweep {name!r}: parent run {run.info.run_id} created", flush=True)
        return run.info.run_id


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


def job_sweep_dir() -> Path:
    """The folder of the multirun the current job belongs to (from Hydra's config of the job,
    in any process: the launching one, a joblib worker, a submitit task)."""
    return Path(str(HydraConfig.get().sweep.dir)).resolve()


def run_job(cfg: DictConfig) -> jobs.JobResult:
    """One job of a multirun: run it, write its result file, never raise (but on Ctrl-C in
    the launching process)."""
    hydra_cfg = HydraConfig.get()
    sweep_dir = job_sweep_dir()
    number = int(hydra_cfg.job.num)
    plan = jobs.read_plan(sweep_dir, number)
    result = jobs.JobResult(
        job=number,
        overrides=" ".join(hydra_cfg.overrides.task),
        arm=plan.arm,
        stage=plan.stage,
        process=os.getpid(),
    )
    launcher = launcher_tags(sweep_dir)
    if launcher:  # a job process outlives no launcher (kill -9 of python -m bpexp)
        stop.watch_launcher(
            int(launcher["bpexp.pid"]), launcher["bpexp.pid_start"], launcher["bpexp.host"]
        )
    with stop.job():
        if stop.sweep_stopping(sweep_dir):
            result.outcome = "interrupted"  # the sweep is stopping: this job does not start
            return result
        try:
            _run_job(cfg, result)
        except KeyboardInterrupt:
            result.outcome = "interrupted"
            result.write(sweep_dir)
            if stop.raise_in_launcher():
                raise
            return result  # a job process: the launcher collects it
    if not _process["frozen_after_job"]:
        _process["frozen_after_job"] = True
        _freeze_heap()
    return result


def _run_job(cfg: DictConfig, result: jobs.JobResult) -> None:
    from bpexp.app import execute

    start = time.perf_counter()
    _limit_blas_threads()
    tags = {"bpexp.arm": result.arm} if result.arm else {}
    if result.stage:
        tags["bpexp.stage"] = result.stage
    sweep_dir = job_sweep_dir()
    uri = _job_store_uri(cfg)

    def started(run_id: str) -> None:
        result.run_id = run_id

    try:
        change = store_changed(sweep_dir, uri) if uri else None
        if change:  # a new store would be made here, with none of the sweep's runs in it
            raise TrackingError(_store_gone_message(uri, change))
        run = execute(
            cfg,
            echo=(cfg.get("verbose") or 0) >= 2,  # a multirun's console: bpexp.console
            sweep_name=sweep_name(dict(HydraConfig.get().runtime.choices)),
            parent=functools.partial(ensure_parent, say=(cfg.get("verbose") or 0) >= 2),
            tags=tags,
            started=started,
        )
        result.outcome, result.skipped, result.run_id = run.outcome, run.skipped, run.run_id
        result.steps_per_epoch = run.steps_per_epoch
        result.epochs = len(run.history) - 1 if len(run.history) else None
        result.metrics = {k: float(v) for k, v in run.metrics.items() if k in jobs.FINAL_METRICS}
        yardstick = _yardstick()
        if yardstick and yardstick in run.history.columns:
            result.curve = [float(v) for v in run.history[yardstick]]
        change = store_changed(sweep_dir, uri) if uri else None
        if change and run.run_id:  # written through a connection to the file that is gone
            raise TrackingError(
                f"run {run.run_id}: {_store_gone_message(uri, change)}; the run is lost"
            )
    except (ConfigError, TrackingError) as exc:
        result.outcome = "invalid" if isinstance(exc, ConfigError) else "failed"
        result.error = str(exc)
        print(f"error: {exc}", file=sys.stderr, flush=True)
    except Exception as exc:
        from bpexp import tracking as tr

        result.outcome, result.error = "failed", tr.error_text(exc)
        if tr.is_store_error(exc) and uri:  # the store failed: say which, without a traceback
            result.error = f"tracking.uri={tr.redact(uri)!r}: {result.error}"
            print(f"error: job {result.job}: the store failed: {result.error}", file=sys.stderr)
        else:  # a bug or the machine (memory): the traceback is in the run's traceback.txt too
            traceback.print_exc()
    finally:
        if uri and "bpexp.tracking" in sys.modules:
            sys.modules["bpexp.tracking"].release_all_claims(uri)
    result.seconds = round(time.perf_counter() - start, 3)
    result.write(sweep_dir)


def _job_store_uri(cfg: DictConfig) -> str | None:
    if not cfg.tracking.enabled:
        return None
    from bpexp import tracking as tr

    return tr.tracking_uri(cfg.tracking.uri)


def _yardstick() -> str | None:
    protocol = HydraConfig.get().sweeper.get("protocol")
    return None if protocol is None else str(protocol.get("yardstick") or "val/accuracy")


def finish(stopped: str | None = None) -> int:
    """Write the sweep's summary and close its parent run; the exit code for the command.

    ``stopped`` is ``"interrupted"`` (Ctrl-C, SIGTERM) or ``"aborted"`` (Hydra raised) when the
    multirun did not end normally. Does nothing (returns 0) when no multirun was started here.

    Whatever the store does (a server gone, a file read-only, deleted or damaged), the summary
    is written and the failed jobs are printed first; then the parent run is closed with a
    final status, or an error says why it could not be, naming the store and what to do. A stop
    signal meanwhile (the report can take a while) closes the parent KILLED, and the exit code
    is then the signal's (130, 143).
    """
    if "dir" not in _launched:
        return 0
    stop.finishing()  # from here a stop signal interrupts this process, not the jobs
    sweep_dir, uri = Path(_launched["dir"]), _launched["uri"]
    timeout = float(_launched.get("timeout", 10.0))
    verbose = int(_launched.get("verbose", 0))
    lock = _launched.pop("running_lock", None)
    _launched.clear()
    parent_file = sweep_dir / PARENT_FILE
    bad, change, parent, interrupted = pd.DataFrame(), None, None, False
    try:
        try:
            with stop.uninterrupted_write():  # the summary is written whatever comes
                if stopped == "aborted" and not (sweep_dir / jobs.RESULTS_FOLDER).exists():
                    return 1  # stopped before any job (bad input, reported already)
                change = store_changed(sweep_dir, uri) if uri else None
                bad, cut = _write_summary(sweep_dir, stopped, uri, change, verbose)
                parent = parent_file.read_text().strip() if parent_file.exists() else None
            if cut and not stopped:  # jobs stopped from outside (scancel, a preemption)
                stopped = "interrupted"
        except KeyboardInterrupt:
            stopped, interrupted = "interrupted", True
            parent = parent_file.read_text().strip() if parent_file.exists() else None
        code = 1 if len(bad) or stopped else 0
        if change:
            print(f"error: {_store_gone_message(uri, change)}", file=sys.stderr, flush=True)
            code = 1
        elif uri and parent:
            status = {"interrupted": "KILLED", "aborted": "FAILED"}.get(
                stopped, "FAILED" if len(bad) else "FINISHED"
            )
            closed, stopped_now = _close_parent(uri, parent, sweep_dir, status, timeout)
            interrupted = interrupted or stopped_now
            code = code if closed else 1
        if interrupted:  # a stop signal while the sweep was summed up
            print("interrupted while the sweep was summed up (parent run: KILLED)", file=sys.stderr)
            return stop.exit_code()
        return code
    finally:
        if lock is not None:
            lock.close()  # the parent is closed: a later sweep may judge it


def _write_summary(
    sweep_dir: Path, stopped: str | None, uri: str | None, change: str | None, verbose: int = 0
):
    """Write and print ``summary.csv``, then the failed jobs; returns (the failed rows, the
    number of interrupted jobs). When the store was deleted or replaced, no run of the sweep is
    in it: every job that has a run there is reported failed.

    A grid's table of jobs is its answer and is printed whole. Under a protocol the answer is
    the protocol's table, printed already: the jobs' table (120 rows for the main job) is
    printed only with ``verbose`` >= 1, and is otherwise in ``summary.csv``."""
    table = jobs.summary(sweep_dir)
    if change:
        lost = table["run_id"].notna() & ~table["outcome"].isin(["failed", "invalid"])
        table.loc[lost, "error"] = _store_gone_message(uri, change)
        table.loc[lost, "outcome"] = "failed"
    table.to_csv(sweep_dir / "summary.csv", index=False)
    counts = table["outcome"].value_counts().to_dict()
    shown = table.drop(columns=["error", "run_id"])
    shown = shown.dropna(axis=1, how="all").loc[:, lambda f: (f != "").any()]
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60
    ):
        print(
            f"\nsweep summary ({len(table)} jobs: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + (f"; the sweep was {stopped}" if stopped else "")
            + ")"
        )
        protocol = (sweep_dir / "protocol" / "final_table.csv").exists()
        if not protocol or verbose >= 1:
            print(shown.to_string(index=False, float_format="{:.4f}".format))
    print(f"summary: {sweep_dir / 'summary.csv'}", flush=True)
    skipped: dict[str, int] = {}  # said once for the sweep, not by each job (bpexp.console)
    for result in jobs.read_results(sweep_dir):
        if result.skipped:
            skipped[result.outcome] = skipped.get(result.outcome, 0) + 1
    for outcome, n in sorted(skipped.items()):
        print(
            f"skipped {n} job(s): a run already has this exact config ({outcome}); add "
            "force=true to run them again",
            flush=True,
        )
    bad = table[table["outcome"].isin(["failed", "invalid"])]
    _print_failed(bad)
    cut = int((table["outcome"] == "interrupted").sum())
    if cut:
        print(
            f"{cut} job(s) interrupted: the same command again resumes their runs from their "
            "last checkpoints (trainer.checkpoint_every) and runs the jobs not done",
            flush=True,
        )
    return bad, cut


def _failed_jobs(sweep_dir: Path) -> pd.DataFrame:
    try:
        table = jobs.summary(sweep_dir)
    except Exception:
        return pd.DataFrame(columns=jobs.SUMMARY_COLUMNS)
    return table[table["outcome"].isin(["failed", "invalid"])]


def _print_failed(bad: pd.DataFrame) -> None:
    for _, row in bad.iterrows():
        print(
            f"job {row['job']} {row['outcome']} ({row['overrides']}): {row['error']}",
            file=sys.stderr,
            flush=True,
        )


class _WritesUninterrupted:
    """A client whose store writes a stop signal does not cut (:func:`stop.uninterrupted_write`)
    while everything else (drawing the report's figures) stays interruptible."""

    WRITES = ("log_artifact", "log_artifacts", "log_batch", "log_metric", "log_param", "set_tag")

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name not in self.WRITES:
            return attribute

        def write(*args, **kwargs):
            with stop.uninterrupted_write():
                return attribute(*args, **kwargs)

        return write


def _close_parent(
    uri: str, parent: str, sweep_dir: Path, status: str, timeout: float = 10.0
) -> tuple[bool, bool]:
    """Log the summary, the protocol and the report (figures, arm metrics) to the parent run
    and close it with ``status``; returns (closed, interrupted). A report failure does not lose
    the summary or leave the parent open; a store failure is said, naming the store and what to
    do, never raised; a stop signal ends the report and closes the parent KILLED."""
    from bpexp import tracking as tr

    interrupted, client = False, None
    try:
        client = _WritesUninterrupted(tr.connect(uri, timeout))
        from bpexp import report

        # summary.csv stays in the sweep folder when the artifact store fails (disk full).
        client.log_artifact(parent, str(sweep_dir / "summary.csv"))
        if (sweep_dir / "protocol" / "protocol.json").exists():
            _log_protocol(client, parent, sweep_dir / "protocol")
        report.log_sweep(client, parent, sweep_dir)
    except KeyboardInterrupt:
        interrupted, status = True, "KILLED"
        print("interrupted: the sweep's report was not finished", file=sys.stderr, flush=True)
    except Exception as exc:
        if client is None:  # the store cannot be reached
            _cannot_close(uri, parent, sweep_dir, status, exc)
            return False, False
        print(f"warning: no sweep report: {tr.error_text(exc)}", file=sys.stderr)
    try:
        if client is None:  # stopped while connecting
            client = tr.connect(uri, timeout)
        try:
            with stop.uninterrupted_write():
                client.set_terminated(parent, status=status)
        except KeyboardInterrupt:  # came during the write, which was done first
            interrupted, status = True, "KILLED"
            with stop.uninterrupted_write():
                client.set_terminated(parent, status=status)
    except Exception as exc:
        _cannot_close(uri, parent, sweep_dir, status, exc)
        return False, interrupted
    print(f"parent run {parent}: {status}", flush=True)
    return True, interrupted


def _cannot_close(uri: str, parent: str, sweep_dir: Path, status: str, exc: Exception) -> None:
    from bpexp import tracking as tr

    where = str(exc)
    if not isinstance(exc, TrackingError):
        where = f"tracking.uri={tr.redact(uri)!r}: {tr.error_text(exc)}"
    print(
        f"error: the sweep's parent run {parent} could not be closed as {status} ({where}). "
        f"The jobs' results are in {sweep_dir / 'summary.csv'}. Once the store works again, "
        "running the same command closes that run as interrupted and runs the failed jobs "
        "again.",
        file=sys.stderr,
        flush=True,
    )


def _log_protocol(client, parent: str, folder: Path) -> None:
    """The protocol on the parent run: ``protocol/`` artifacts (``protocol.json``, the one form
    the report reads back, ``tune.csv``, ``chosen.csv``, ``confirm.csv``, ``final_table.csv``),
    its settings as ``protocol.*`` params for the UI, each arm's chosen setting as
    ``chosen.<arm>.<key>`` params (the arm as in :func:`bpexp.jobs.mlflow_name`) and the best
    arm as the tag ``bpexp.protocol.best``."""
    from mlflow.entities import Param, RunTag

    from bpexp import protocol as proto

    plan = json.loads((folder / "protocol.json").read_text())
    params = proto.Protocol.from_dict(plan["protocol"]).params()
    tags = {}
    if (folder / "chosen.csv").exists():
        chosen = pd.read_csv(folder / "chosen.csv")
        keys = [c for c in chosen.columns if c not in ("arm", "setting", "score", "seeds")]
        for row in chosen.to_dict("records"):
            params |= {f"chosen.{jobs.mlflow_name(row['arm'])}.{k}": row[k] for k in keys}
    if (folder / "final_table.csv").exists():
        table = pd.read_csv(folder / "final_table.csv")
        if len(table):
            tags["bpexp.protocol.best"] = str(table.loc[0, "arm"])
    client.log_batch(
        parent,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.log_artifacts(parent, str(folder), "protocol")
