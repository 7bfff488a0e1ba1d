"""MLflow at the edge: the store, runs, batched metric logging and run artifacts.

The training loop emits records (:mod:`bpexp.trainer`); a :class:`RunLogger` is one listener of
them. It buffers metrics and sends them with ``log_batch`` (at most 1000 values a call), so a
run costs a handful of requests, not one per value (~3 ms each on SQLite, ~50 ms over HTTP).
A run's requests: ``create_run`` (with its tags), one ``log_batch`` of params, a ``log_batch``
of metrics every ``FLUSH_SECONDS`` while it trains, one last ``log_batch`` with the remaining
metrics and the outcome tag, ``log_artifacts`` and ``set_terminated``. On SQLite every value
costs ~45 µs of MLflow's ORM work on top (``SqlMetric`` objects, validation, flush), the bulk
of a long run's logging time.

Store: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default,
``sqlite:///mlflow.db`` in the directory the command runs from.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

import bpexp
from bpexp import checkpoint, stop
from bpexp.errors import TrackingError
from bpexp.trainer import CheckpointRecord, EndRecord, Record, StepRecord

# MLflow logs every database error it re-raises with its traceback (and the SQL with up to
# 10 rows of parameters). bpexp reports each such error itself, once, in a line naming the
# store; the run's traceback.txt keeps the traceback.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

DEFAULT_URI = "sqlite:///mlflow.db"
BATCH_LIMIT = 1000  # MLflow's limit of entities (metrics + params + tags) in one log_batch
FLUSH_SECONDS = 2.0  # send buffered metrics at least this often while a run trains
# Tags every run carries; `outcome` is completed | diverged | failed | interrupted.
OUTCOMES = ("completed", "diverged", "failed", "interrupted")
STATUS = {
    "completed": "FINISHED",
    "diverged": "FINISHED",
    "failed": "FAILED",
    "interrupted": "KILLED",
}


def tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, for messages (never print a password)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def connect(uri: str, timeout: float = 10.0, create: bool = True) -> MlflowClient:
    """A client for ``uri``, checked to answer within ``timeout`` seconds and to take writes.

    An HTTP server is probed at ``/health`` first, so a server that is down or a wrong address
    fails here with a clear message instead of hanging in the client's retries. A SQLite store
    must be a database MLflow can open and write (a damaged file, a read-only file or folder
    fail here, before training). Every error is a :class:`TrackingError` naming the store and
    what to do; a password in the URI is refused and never printed. ``create=False`` (a
    reader, such as the report) refuses a SQLite store that does not exist instead of making
    an empty one.
    """
    shown = redact(uri)
    if urllib.parse.urlsplit(uri).password is not None:
        raise TrackingError(
            f"tracking.uri={shown!r} holds a password: pass the user name and password in "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead (a URI is printed "
            "and logged; the password would be too)"
        )
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TrackingError(
                f"tracking.uri={shown!r}: the MLflow server does not answer ({exc}). Start it "
                "(mlflow server --host 127.0.0.1 --port PORT), fix tracking.uri / "
                "MLFLOW_TRACKING_URI, or run with tracking.enabled=false"
            ) from exc
        # Fail fast on a server that dies later, instead of minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout, 10))))
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        if not path.parent.is_dir():
            raise TrackingError(
                f"tracking.uri={shown!r}: folder {str(path.parent)!r} does not exist"
            )
        check_sqlite_file(uri, path)
        if not create and not path.exists():
            raise TrackingError(
                f"tracking.uri={shown!r}: there is no store at {str(path)!r}; run from the "
                "folder that holds it, or name it with --tracking-uri / MLFLOW_TRACKING_URI"
            )
        create_sqlite_store(uri, timeout)
        check_writable(uri, path)
        _forget_connections_to_a_former_file(uri, path)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates a fresh SQLite schema, once
    except Exception as exc:
        if getattr(exc, "error_code", None) == "UNAUTHENTICATED":
            given = "MLFLOW_TRACKING_USERNAME" in os.environ
            raise TrackingError(
                f"tracking.uri={shown!r}: the MLflow server asks for a user name and password"
                + (" and refused those given" if given else "")
                + ": set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the"
                " environment of the command"
            ) from exc
        text = error_text(exc)
        if uri.startswith("sqlite:///") and ("malformed" in text or "not a database" in text):
            raise TrackingError(
                f"tracking.uri={shown!r}: the SQLite store is damaged ({text}); restore it "
                "from a backup, or move it aside and run again to start a new store there"
            ) from exc
        raise TrackingError(
            f"tracking.uri={shown!r}: the store cannot be used ({text}); check that "
            "it is an MLflow store (mlflow db upgrade for an old one), or use another "
            "tracking.uri"
        ) from exc
    return client


SQLITE_HEADER = b"SQLite format 3\x00"
_sqlite_files: dict[str, tuple[int, int]] = {}  # the file each SQLite URI was opened as


def _forget_connections_to_a_former_file(uri: str, path: Path) -> None:
    """MLflow keeps one engine (its pooled connections) per URI for the life of the process.
    If the file at ``path`` was deleted or replaced since, those connections still write to
    the former file, which nothing else can see: drop them, so that this process opens the
    file that is there now."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    info = path.stat()
    now = (info.st_dev, info.st_ino)
    before = _sqlite_files.get(uri)
    _sqlite_files[uri] = now
    if before is not None and before != now:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


def check_sqlite_file(uri: str, path: Path) -> None:
    """An existing, non-empty store file must be an SQLite database: MLflow would otherwise
    fail deep inside SQLAlchemy ("file is not a database")."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # created below
    except OSError as exc:
        raise TrackingError(
            f"tracking.uri={redact(uri)!r}: the store cannot be read ({exc.strerror}); make "
            "it readable, or use another tracking.uri"
        ) from exc
    if head and head != SQLITE_HEADER:
        raise TrackingError(
            f"tracking.uri={redact(uri)!r}: {str(path)!r} is not an SQLite database (damaged, "
            "or another kind of file); restore it from a backup, or move it aside and run "
            "again to start a new store there"
        )


def check_writable(uri: str, path: Path) -> None:
    """Runs write to the store: its file and its folder (SQLite's journal) must take writes.
    Opening them for writing changes nothing; a read-only file system or a denied permission
    fails here rather than at the first run's creation."""
    try:
        with open(path, "r+b"):
            pass
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise TrackingError(
            f"tracking.uri={redact(uri)!r}: the store cannot be written ({exc.strerror}); make "
            f"{str(path)!r} and its folder writable, or use another tracking.uri"
        ) from exc


def create_sqlite_store(uri: str, timeout: float = 10.0) -> None:
    """Make sure the SQLite store of ``uri`` exists with MLflow's whole schema before MLflow
    opens it.

    MLflow creates a missing database's tables in place, in ~60 migrations: two processes
    opening a fresh store at once both create them ("duplicate column name: step"), and a
    process opening it midway sees half a schema. Here the store is built in a temporary file
    beside it and hard-linked into place, which is atomic and never replaces a file that
    appeared meanwhile; a lock file beside the database (``mlflow.db.lock``) has concurrent
    bpexp commands build it once. A store that another program (``mlflow ui``) is creating in
    place is waited for, up to ``timeout`` seconds, until its schema is complete.
    """
    path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    if _schema_complete(path):
        return
    try:
        lock = open(path.with_name(path.name + ".lock"), "a")  # closed by the with below
    except OSError as exc:
        raise TrackingError(
            f"tracking.uri={redact(uri)!r}: cannot create the store in folder {str(path.parent)!r} "
            f"({exc.strerror}); use a writable folder"
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            _build_store_aside(path)
    deadline = time.monotonic() + timeout
    while not _schema_complete(path) and _being_created(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Past this, MLflow opens the file and says itself what is wrong with it (an old schema).


def _build_store_aside(path: Path) -> None:
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        # The default experiment's artifact folder is the one MlflowClient(uri) would give it.
        SqlAlchemyStore(tmp_uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        SqlAlchemyStore._engine_map.pop(tmp_uri).dispose()
        try:
            os.link(tmp, path)
        except FileExistsError:  # another program created it meanwhile: that one is kept
            pass
    except OSError as exc:
        raise TrackingError(
            f"tracking.uri='sqlite:///{path}': cannot create the store in folder "
            f"{str(path.parent)!r} ({exc.strerror}); use a writable folder"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


@functools.cache
def _schema_head() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _schema_complete(path: Path) -> bool:
    """Whether the database at ``path`` holds MLflow's latest schema (read-only peek)."""
    try:
        if path.stat().st_size == 0:
            return False
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except (OSError, sqlite3.Error):
        return False
    try:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # no such table yet, or locked by the process creating it
        return False
    finally:
        db.close()
    return row is not None and row[0] == _schema_head()


def _being_created(path: Path) -> bool:
    """A missing, empty or recently written file may still be getting its schema; an old,
    complete-looking one needs ``mlflow db upgrade``, not waiting."""
    try:
        return path.stat().st_size == 0 or time.time() - path.stat().st_mtime < 30
    except FileNotFoundError:
        return True


# MLflow 3's UI opens an experiment without this tag on its GenAI overview; with it, on the
# training runs table and charts, where bpexp's runs are.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(name, tags=EXPERIMENT_KIND)
        except Exception:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    return experiment_id


# Settings that do not change what a run computes, left out of its config hash.
# A workload's target is where a run is judged, not what it computes (bpexp.workload).
NOT_IN_HASH = ("tracking.", "force", "verbose", "data.url", "data.cache_dir", "workload.target")


def config_hash(flat_config: dict[str, object]) -> str:
    """A stable digest of a resolved config, to recognise a job that already ran.

    A file named by the config (``data.path``, ``network.init_path``) enters by its content's
    sha256, so a changed file at the same path is a new job.
    """
    relevant = {k: v for k, v in flat_config.items() if not k.startswith(NOT_IN_HASH)}
    for key in ("data.path", "network.init_path"):
        path = relevant.get(key)
        if path and Path(str(path)).is_file():
            relevant[key] = hashlib.sha256(Path(str(path)).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def git_commit() -> str | None:
    """The commit of the bpexp checkout in use, if it is one (asked once per process)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(bpexp.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RunLogger:
    """Listener for training records that logs them to one MLflow run, in batches.

    Metrics are sent every ``FLUSH_SECONDS`` while the run trains; what is left at its end
    goes with the outcome tag in :func:`end_run`'s request. A ``CheckpointRecord`` is written
    as the run's artifact ``checkpoint/last.npz`` (:data:`CHECKPOINT_ARTIFACT`) once every
    point before it is in the store, so that a checkpoint in the store always has the run's
    history up to it there too. A logger of a resumed run (:meth:`resume`) skips the points
    the run already has. With a ``writer`` (a process of its own, :mod:`bpexp.writer`; with
    ``tracking.writer=true``, for a SQLite store), the points are handed to it at the end of
    every epoch instead, and :meth:`flush` waits until it has written them all: after
    ``flush()`` returns, every point logged so far is in the store.
    """

    writer = None  # a bpexp.writer.Writer, or None: the points are sent from this process

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self.points_logged = 0
        # Set by the block of tracked_run before it ends: how the run ends, and extra tags.
        self.outcome = "completed"
        self.end_tags: dict[str, str] = {}
        # Every point also goes to the run's history table (history.parquet), for analysis.
        self.rows: list[tuple[str, int, float]] = []
        self.closed = False  # end_run was called (it closes the run, or says why it cannot)
        self._stored: dict[str, int] = {}  # a resumed run's last stored step, by metric

    def resume(self, history: list[tuple[str, int, float]]) -> None:
        """This logger continues a run whose store holds ``history`` (metric, step, value):
        it goes to the run's history table, and the points the resumed loop emits again (the
        epochs between the checkpoint and the interruption, bit-identical) are not sent."""
        self.rows = sorted(history, key=lambda row: (row[0], row[1])) + self.rows
        for key, step, _ in history:
            self._stored[key] = max(step, self._stored.get(key, step))

    def __call__(self, record: Record) -> None:
        now = int(time.time() * 1000)
        if isinstance(record, StepRecord):
            self._add("train/batch_loss", record.batch_loss, record.step, now)
        elif isinstance(record, CheckpointRecord):
            self.save_checkpoint(record)
        else:
            for key, value in record.metrics.items():
                self._add(key, value, record.epoch, now)
            if isinstance(record, EndRecord):
                pass
            elif self.writer is not None:
                self._hand_over()
            elif time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self.flush()

    def _add(self, key: str, value: float, step: int, timestamp: int) -> None:
        if self._stored and step <= self._stored.get(key, -1):
            return  # a resumed run has this point already
        value = float(value)
        self._pending.append(Metric(key, value, timestamp, step))
        self.rows.append((key, step, value))

    def _hand_over(self) -> None:
        """Give the buffered points to the writer process; returns at once."""
        if self._pending:
            points = [(m.key, m.value, m.timestamp, m.step) for m in self._pending]
            with stop.uninterrupted_write():  # a message cut in half would garble the pipe
                self.writer.send(self.run_id, points)
            self._pending = []

    def flush(self, tags: list[RunTag] | None = None) -> None:
        """Send the buffered metrics (and ``tags``) in one request per 1000 entities; with a
        writer, wait until it has written every point handed over (the last ones with
        ``tags``, in one request)."""
        if self.writer is not None:
            self._hand_over()
            with stop.uninterrupted_write():
                tag_pairs = [(t.key, t.value) for t in tags or []]
                self.points_logged += self.writer.drain(self.run_id, tag_pairs)
            self._last_flush = time.monotonic()
            return
        pending, tags = self._pending, tags or []
        if pending or tags:
            # The client splits at MLflow's limits itself: tags, then metrics, <= 1000 a call.
            with stop.uninterrupted_write():
                self.client.log_batch(self.run_id, metrics=pending, tags=tags, synchronous=True)
        self.points_logged += len(pending)
        self._pending = []
        self._last_flush = time.monotonic()

    def save_checkpoint(self, record: CheckpointRecord) -> None:
        """Send every buffered point, then write ``record``'s state as the run's artifact
        ``checkpoint/last.npz`` (replacing the last one) and tag the run with its epoch
        (``bpexp.checkpoint_epoch``); a stop signal meanwhile is raised once done."""
        with stop.uninterrupted_write():
            self.flush()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / CHECKPOINT_ARTIFACT.name
                checkpoint.save(path, record.state, sync=False)  # copied by the artifact store
                self.client.log_artifact(self.run_id, str(path), str(CHECKPOINT_ARTIFACT.parent))
            tag = RunTag("bpexp.checkpoint_epoch", str(record.epoch))
            self.client.log_batch(self.run_id, tags=[tag], synchronous=True)


CHECKPOINT_ARTIFACT = Path("checkpoint/last.npz")  # a run's last checkpoint, among its artifacts


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in, as ``squeue -j`` takes it: ``<array>_<task>`` for a
    task of a job array (a submitit sweep), else ``$SLURM_JOB_ID``; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def process_tags() -> dict[str, str]:
    """Where a run is trained: a run left RUNNING by a process that is gone (kill -9, a lost
    node, a job that SLURM cancelled or requeued) can then be told from one still training
    (see :func:`close_stale_runs`). A run trained by a SLURM job carries its id
    (``bpexp.slurm_job_id``), which the scheduler can be asked about from any host."""
    pid = os.getpid()
    tags = {
        "bpexp.host": socket.gethostname(),
        "bpexp.pid": str(pid),
        "bpexp.pid_start": stop.process_start(pid),
    }
    job = slurm_job_id()
    if job:
        tags["bpexp.slurm_job_id"] = job
    return tags


def close_stale_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Close as KILLED (``outcome=interrupted``, tag ``bpexp.stale``) the experiment's RUNNING
    runs whose process is gone (:func:`_process_gone`): a run, or a sweep's parent run, whose
    process (the one that trained it; for a parent, the sweep's launching process) no longer
    exists on this host, or whose SLURM job the scheduler no longer runs. Returns their ids.
    Runs of other hosts without a SLURM job are left alone: their processes cannot be seen.
    Nothing read from the store is used as a path."""
    closed = []
    for run in client.search_runs(
        [experiment_id], "attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = run.data.tags
        if not _process_gone(tags):
            continue
        stale = [RunTag("outcome", "interrupted"), RunTag("bpexp.stale", "process gone")]
        client.log_batch(run.info.run_id, tags=stale, synchronous=True)
        client.set_terminated(run.info.run_id, status=STATUS["interrupted"])
        closed.append(run.info.run_id)
    return closed


def _process_gone(tags: dict[str, str]) -> bool:
    """Whether the process that a run's (or a claim's) tags name is gone.

    On this host (``bpexp.host``), the process ``bpexp.pid`` (started at ``bpexp.pid_start``:
    a pid given to a later process does not count) is looked up. A SLURM job's process
    (``bpexp.slurm_job_id``) is gone once the scheduler no longer runs that job (squeue), or
    when this process is that same job, requeued: one job id runs one process at a time.
    Anything else (another host, no pid) cannot tell, and is taken as alive."""
    here = tags.get("bpexp.host") == socket.gethostname()
    if here and _pid_gone(tags):
        return True
    job = tags.get("bpexp.slurm_job_id", "")
    if job:
        if job == slurm_job_id():
            return not (here and tags.get("bpexp.pid") == str(os.getpid()))
        return slurm_job_ended(job)
    return False


SLURM_ACTIVE = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
}  # fmt: skip


def slurm_job_ended(job: str) -> bool:
    """Whether SLURM no longer runs job ``job`` (``<id>`` or ``<array>_<task>``): squeue does
    not list it, or lists it in a final state. False when squeue cannot be asked (not
    installed, the controller not answering): an unknown job is taken as alive."""
    if not job.replace("_", "").isdigit():
        return False  # a store value never reaches a command line unchecked
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if out.returncode != 0:  # "Invalid job id specified": ended, and forgotten since
        return "invalid job id" in out.stderr.lower()
    states = {line.strip() for line in out.stdout.splitlines() if line.strip()}
    return not (states & SLURM_ACTIVE)


def _pid_gone(tags: dict[str, str]) -> bool:
    """Whether the process ``bpexp.pid`` (started at ``bpexp.pid_start``) of this host is
    gone; a run without a pid cannot tell."""
    pid = tags.get("bpexp.pid", "")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    start = tags.get("bpexp.pid_start", "")
    return bool(start) and stop.process_start(int(pid)) not in ("", start)


def _param_value(value: object) -> str:
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return "null" if value is None else str(value)


def error_text(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, on one line, for the ``bpexp.error`` tag and the summary
    (SQLAlchemy's SQL statement, its parameters and its "Background on this error" line left
    out)."""
    noise = ("[SQL:", "[parameters:", "(Background on this error", "(raised as a result of")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(noise)]
    return f"{type(exc).__name__}: {' '.join(lines)}"[:5000]  # MLflow's tag limit: 8000


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the tracking store (MLflow, its database or HTTP client, the
    file system under it) rather than from bpexp's own code."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException | TrackingError | OSError | sqlite3.Error):
        return True
    return type(exc).__module__.split(".")[0] in ("sqlalchemy", "requests", "urllib3")


def end_run(logger: RunLogger, outcome: str, extra_tags: dict[str, str] | None = None) -> None:
    """Flush what is buffered with the outcome tag, and set the run's status from it.

    A run ends FINISHED (completed or diverged) only if every point and tag reached the store.
    If the last points cannot be sent, the run is closed FAILED instead (KILLED if it was
    interrupted), with the reason in ``bpexp.error``, and the error is raised: a rerun then
    runs it again (:func:`finished_run`). If even that cannot be written the run stays RUNNING,
    which a rerun does not skip either, and the next sweep closes it as stale.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} not in {OUTCOMES}")
    tags = {"outcome": outcome, **(extra_tags or {})}
    logger.closed = True
    with stop.uninterrupted_write():  # a stop signal meanwhile is raised once the run is closed
        try:
            logger.flush([RunTag(k, v) for k, v in tags.items()])
            logger.client.set_terminated(logger.run_id, status=STATUS[outcome])
        except Exception as exc:
            _close_unwritten(logger, outcome, tags, exc)
            raise


def _close_unwritten(logger: RunLogger, outcome: str, tags: dict[str, str], exc: Exception) -> None:
    """Close a run whose last write failed as not complete: FAILED (KILLED if interrupted),
    with why in ``bpexp.error`` (an error already there is kept first)."""
    final = "interrupted" if outcome == "interrupted" else "failed"
    reason = f"the run's last points or status could not be written: {error_text(exc)}"
    if tags.get("bpexp.error"):
        reason = f"{tags['bpexp.error']}; {reason}"
    closing = {**tags, "outcome": final, "bpexp.error": reason[:5000]}
    try:
        logger.client.log_batch(
            logger.run_id, tags=[RunTag(k, v) for k, v in closing.items()], synchronous=True
        )
    finally:
        logger.client.set_terminated(logger.run_id, status=STATUS[final])


# ----------------------------------------------------------------------------- resuming


def resumable_run(client: MlflowClient, experiment_id: str, digest: str):
    """The run that a job of config ``digest`` continues instead of starting over, or None:
    the latest of its runs that was interrupted (KILLED, or RUNNING with its process gone,
    which is closed first as stale), if that run has a checkpoint. Failed runs are not
    resumed (their error may come back); the caller holds the config's claim."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`bpexp.config_hash` = '{digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    for run in runs:
        status = run.info.status
        if status == "RUNNING" and _process_gone(run.data.tags):
            stale = [RunTag("outcome", "interrupted"), RunTag("bpexp.stale", "process gone")]
            with stop.uninterrupted_write():
                client.log_batch(run.info.run_id, tags=stale, synchronous=True)
                client.set_terminated(run.info.run_id, status=STATUS["interrupted"])
            status = STATUS["interrupted"]
        if status == "RUNNING":
            continue  # alive elsewhere, or cannot tell: not this job's to take
        if status == STATUS["interrupted"] and "bpexp.checkpoint_epoch" in run.data.tags:
            return run
        return None  # the latest run ended otherwise, or before its first checkpoint
    return None


def load_checkpoint(client: MlflowClient, run) -> checkpoint.TrainState:
    """The last checkpoint of ``run`` (its artifact ``checkpoint/last.npz``); CheckpointError
    when it cannot be downloaded or read."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar for one file
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, str(CHECKPOINT_ARTIFACT), tmp)
        except Exception as exc:
            raise checkpoint.CheckpointError(
                f"run {run.info.run_id}: its checkpoint cannot be read ({error_text(exc)})"
            ) from exc
        return checkpoint.load(path)


def _reopen(client: MlflowClient, run, tags: dict[str, str]) -> RunLogger:
    """Continue the interrupted ``run``: RUNNING again, with this process's tags, one more
    ``bpexp.resumes``, its stale or error tags dropped, and a logger that holds its stored
    history (:meth:`RunLogger.resume`)."""
    run_id = run.info.run_id
    history = [
        (point.key, point.step, point.value)
        for key in sorted(run.data.metrics)
        for point in client.get_metric_history(run_id, key)
    ]
    tags = {**tags, "bpexp.resumes": str(int(run.data.tags.get("bpexp.resumes", "0")) + 1)}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    for key in ("bpexp.stale", "bpexp.error"):
        if key in run.data.tags:
            client.delete_tag(run_id, key)
    client.update_run(run_id, status="RUNNING")
    logger = RunLogger(client, run_id)
    logger.resume(history)
    return logger


@contextmanager
def tracked_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    params: dict[str, object],
    tags: dict[str, str],
    parent_run_id: str | None = None,
    resume=None,
    started: Callable[[str], None] | None = None,
) -> Iterator[RunLogger]:
    """A run's whole life: created with its params and tags on entry (or, given ``resume``,
    an interrupted run of the same config reopened: :func:`resumable_run`); the block trains
    with the yielded logger as a listener, logs its artifacts and sets ``logger.outcome``
    (and ``logger.end_tags``); on exit the run ends with that outcome's status.

    Ctrl-C or SIGTERM (KeyboardInterrupt), or SLURM's preemption signal (SystemExit once the
    job is requeued, :mod:`bpexp.stop`), ends it KILLED with outcome ``interrupted``, any other
    error FAILED with ``traceback.txt`` and the reason in ``bpexp.error``; the points logged so
    far are kept, and the error goes on up.

    ``started(run_id)`` is called as soon as the run exists, before a stop signal that came
    while it was created is raised: whoever keeps the job's result has the run it closed.
    """
    all_tags = {
        "bpexp.version": bpexp.__version__,
        "numpy.version": np.__version__,
        "python.version": platform.python_version(),
        **tags,
    }
    commit = git_commit()
    if commit:
        all_tags["git.commit"] = commit
    all_tags |= process_tags()
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    param_list = [Param(k, _param_value(v)) for k, v in params.items()]
    digest = tags.get("bpexp.config_hash")
    logger = None
    try:
        if digest:  # force=true comes here without finished_run's claim: take it, or wait
            while not claim(client, experiment_id, digest):
                time.sleep(CLAIM_POLL_SECONDS)
        # A stop signal while the run is created is raised once it is (then closed KILLED).
        with stop.uninterrupted_write():
            if resume is not None:
                logger = _reopen(client, resume, all_tags)
            else:
                run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
                logger = RunLogger(client, run.info.run_id)
                for chunk in _chunks(param_list, 100):
                    client.log_batch(run.info.run_id, params=chunk, synchronous=True)
            if started:
                started(logger.run_id)
        yield logger
        end_run(logger, logger.outcome, logger.end_tags)
    except (KeyboardInterrupt, SystemExit):
        if logger is not None and not logger.closed:  # (after end_run: a deferred signal)
            _close_quietly(logger, "interrupted")
        raise
    except Exception as exc:
        if logger is not None and not logger.closed:
            _close_quietly(logger, "failed", traceback.format_exc(), error_text(exc))
        raise
    finally:
        if digest:
            release_claim(client, experiment_id, digest)  # once the run is closed


def _close_quietly(
    logger: RunLogger, outcome: str, trace: str | None = None, reason: str | None = None
) -> None:
    """Close a run after an error without hiding that error under a second one.

    The reason (the traceback's last line) goes in the ``bpexp.error`` tag, so that a run whose
    artifacts cannot be written (disk full, permission denied) still says why it FAILED.
    """
    tags = {}
    if trace is not None:
        tags["bpexp.error"] = reason or trace.strip().splitlines()[-1][:5000]
        try:
            log_files(logger, {"traceback.txt": trace.encode()})
        except Exception as exc:  # the artifact store may be what failed
            print(f"warning: run {logger.run_id}: no traceback.txt: {exc}", file=sys.stderr)
    try:
        end_run(logger, outcome, tags)
    except Exception as exc:  # the store itself may be what failed
        print(f"warning: could not close run {logger.run_id} as {outcome}: {exc}", file=sys.stderr)


def log_files(logger: RunLogger, files: dict[str, bytes]) -> None:
    """Write ``{artifact path: content}`` into a temporary tree and log it in one call."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        logger.client.log_artifacts(logger.run_id, tmp)


def finished_run(client: MlflowClient, experiment_id: str, digest: str):
    """A run with this config digest whose outcome is final (completed or diverged: divergence
    is deterministic, a result), or None once this process holds the job's claim and may train
    it (:func:`claim`; :func:`tracked_run` releases it when the run is closed). While another
    process holds the claim (a second copy of a running sweep, a duplicate job), this waits for
    it to end, then takes that run's result, or the claim if the run did not complete. Failed
    and interrupted runs are run again."""
    said = False
    while True:
        final = _final_run(client, experiment_id, digest)
        if final is not None:
            return final
        if claim(client, experiment_id, digest):
            # The holder may have finished and let go between the check above and the claim:
            # look again while holding it (a second copy of a sweep trained a config twice).
            final = _final_run(client, experiment_id, digest)
            if final is not None:
                release_claim(client, experiment_id, digest)
            return final
        if not said:
            holder = client.get_experiment_by_name(claim_name(experiment_id, digest))
            tags = holder.tags if holder is not None else {}
            print(
                f"waiting: process {tags.get('bpexp.pid', '?')} on {tags.get('bpexp.host', '?')}"
                " trains this exact config; its result is taken when it ends",
                flush=True,
            )
            said = True
        time.sleep(CLAIM_POLL_SECONDS)


def _final_run(client: MlflowClient, experiment_id: str, digest: str):
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`bpexp.config_hash` = '{digest}'", max_results=100
    )
    final = [
        run
        for run in runs
        if run.data.tags.get("outcome") in ("completed", "diverged")
        and run.info.status == "FINISHED"  # a run whose status could not be set is not final
    ]
    return final[0] if final else None


# ----------------------------------------------------------------------------- claims
#
# A job is claimed in the store before it is trained, so that no two processes train the same
# config at once (two copies of one sweep, on one host or several). The claim is an MLflow
# experiment named after the config: MLflow creates an experiment name once, atomically, on
# SQLite and on a server's database alike, which no tag or run can do. It is renamed and
# deleted when the run is closed (a deleted experiment keeps its name, a renamed one frees
# it); a claim whose process is gone (same host, kill -9) is taken over.

CLAIM_PREFIX = "bpexp.claim"
CLAIM_POLL_SECONDS = 1.0
_claims: dict[str, str] = {}  # claim name -> its experiment id, held by this process


def claim_name(experiment_id: str, digest: str) -> str:
    return f"{CLAIM_PREFIX}.{experiment_id}.{digest}"


def claim(client: MlflowClient, experiment_id: str, digest: str) -> bool:
    """Take the claim on config ``digest`` of experiment ``experiment_id`` for this process;
    False while another live process holds it. A claim whose process is gone is freed here."""
    from mlflow.exceptions import MlflowException

    name = claim_name(experiment_id, digest)
    if name in _claims:
        return True
    tags = {**process_tags(), "bpexp.kind": "claim"}
    try:
        with stop.uninterrupted_write():
            _claims[name] = client.create_experiment(name, tags=tags)
        return True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    holder = client.get_experiment_by_name(name)
    if holder is not None and holder.lifecycle_stage == "active" and _process_gone(holder.tags):
        _free(client, holder.experiment_id)  # its process died: taken over on the next try
    return False


def release_claim(client: MlflowClient, experiment_id: str, digest: str) -> None:
    """Give back this process's claim on ``digest`` (its run is closed). If the store cannot
    take it now, the claim stays until this process is gone, then is taken over."""
    experiment = _claims.pop(claim_name(experiment_id, digest), None)
    if experiment is not None:
        try:
            _free(client, experiment)
        except Exception as exc:  # the store failed: the run's own error says more
            print(
                f"warning: claim of {digest[:12]} not released: {error_text(exc)}", file=sys.stderr
            )


def release_all_claims(uri: str) -> None:
    """Give back every claim this process still holds (a job that ended between taking its
    claim and creating its run)."""
    if _claims:
        client = MlflowClient(tracking_uri=uri)
        for name in list(_claims):
            try:
                _free(client, _claims.pop(name))
            except Exception:  # the store failed: freed once this process is gone
                pass


def _free(client: MlflowClient, experiment_id: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        with stop.uninterrupted_write():
            client.rename_experiment(experiment_id, f"{CLAIM_PREFIX}.released.{uuid.uuid4().hex}")
            client.delete_experiment(experiment_id)
    except MlflowException:  # freed meanwhile by another process
        pass
