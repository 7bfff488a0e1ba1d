"""Multiruns: one MLflow parent run per sweep, a result file per job, and the summary table.

Hydra runs :class:`SweepCallback.on_multirun_start` in the launching process before any job:
it creates the store and the experiment once (several jobs creating a fresh SQLite store at
once would race), and keeps the sweep folder and the store's URI for :func:`finish`. A job, in
whatever process its launcher runs it, reads what it needs from Hydra's own config of the job
(``HydraConfig``: the sweep folder, the sweep's name, the protocol); the parent run is created
by the first valid job and its id kept in ``<sweep folder>/parent_run_id``.

A job never raises out of a multirun (Hydra would skip ``on_multirun_end``); it writes
``results/<job>.json`` into the sweep folder instead. :func:`finish` reads them all, prints and
saves ``summary.csv`` and closes the parent run. ``python -m bpexp`` calls it when Hydra returns
or raises, so the summary is written also when jobs failed or the sweep was interrupted.

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

PARENT_FILE = "parent_run_id"
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

# Once-per-process work of multirun jobs, done by the first job.
_process = {"blas_limited": False, "frozen_after_job": False}
# The multirun this process launched: its folder and its store's URI (None untracked), for
# finish() and for stop_jobs(); empty when this process launched none.
_launched: dict[str, object] = {}

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
        _launched.clear()
        _launched.update(dir=sweep_dir, uri=None)
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
        if config.tracking.enabled:
            from bpexp import tracking as tr

            # The store and the experiment exist before any job starts; the parent run is
            # created by the first job whose config is valid (see ensure_parent), so that a
            # sweep of invalid jobs leaves no run behind.
            uri = tr.tracking_uri(config.tracking.uri)
            client = tr.connect(uri, config.tracking.timeout_seconds)
            experiment_id = tr.ensure_experiment(client, config.tracking.experiment)
            _launched["uri"] = uri
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
                "bpexp.host": socket.gethostname(),
            },
        )
        id_file.write_text(run.info.run_id)
        print(f"sweep {name!r}: parent run {run.info.run_id}", flush=True)
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
    if "dir" in _launched:
        Path(_launched["dir"], STOP_FILE).touch()
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
    if _stop["in_job"] and not store_write_defers(KeyboardInterrupt):
        raise KeyboardInterrupt


def store_write_defers(stop: type[BaseException]) -> bool:
    """For a signal handler about to raise ``stop``: True if a store write is in progress,
    which then raises it once done (:func:`bpexp.tracking.defer_interrupt`)."""
    tracking = sys.modules.get("bpexp.tracking")  # not imported: no store write yet
    return bool(tracking and tracking.defer_interrupt(stop))


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
    if _stop["stopping"] or (job_sweep_dir() / STOP_FILE).exists():
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


def job_sweep_dir() -> Path:
    """The folder of the multirun the current job belongs to (from Hydra's config of the job,
    in any process: the launching one, a joblib worker, a submitit task)."""
    return Path(str(HydraConfig.get().sweep.dir)).resolve()


def _run_job(cfg: DictConfig) -> dict:
    from bpexp.app import execute

    hydra_cfg = HydraConfig.get()
    _limit_blas_threads()
    sweep_dir = job_sweep_dir()
    job = int(hydra_cfg.job.num)
    (sweep_dir / "results").mkdir(parents=True, exist_ok=True)
    row: dict = {"job": job, "overrides": " ".join(hydra_cfg.overrides.task)}
    protocol = hydra_cfg.sweeper.get("protocol")
    tags = {}
    if protocol is not None:
        # The stage follows from the seed: confirm seeds are never tuning seeds.
        row["stage"] = "confirm" if cfg.seed in protocol.confirm_seeds else "tune"
        tags["bpexp.stage"] = row["stage"]
    row["process"] = os.getpid()  # not in summary.csv: which process ran the job
    try:
        result = execute(
            cfg,
            echo=True,
            sweep_name=sweep_name(dict(hydra_cfg.runtime.choices)),
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
    if "dir" not in _launched:
        return 0
    sweep_dir, uri = Path(_launched["dir"]), _launched["uri"]
    _launched.clear()
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
