"""A process of its own that writes runs' metric points to a SQLite store while they train.

MLflow's SQLite store spends ~0.2 ms of Python (SQLAlchemy's ORM, validation) on every metric
value: a run of the main job logs ~750 of them, ~0.15 s, as long as the run trains. A thread
would not help (the work holds the GIL, as the training loop does); another process does, on
another core. So a tracked run's :class:`bpexp.tracking.RunLogger` hands its points to this
process at the end of each epoch and goes on training; ``RunLogger.flush`` waits for every
point handed over to be in the store (:meth:`Writer.drain`) before it writes the run's outcome
tag, and :func:`bpexp.tracking.end_run` sets the status only after that, so a run is still
FINISHED only with every point in the store.

One writer per process that trains tracked runs (forked at its first run, kept for the next
ones: a sweep's jobs in that process share it), for ``sqlite:///`` stores only (a server does
the store's work in its own process already). The writer:

- ignores Ctrl-C and SIGTERM: the run's own process decides (it closes its run KILLED after
  draining the points it handed over, as :func:`bpexp.stop.uninterrupted_write` has it: a
  signal while it waits for the drain is raised after it);
- exits when its process is gone (the pipe closes), so a job killed with SIGKILL leaves no
  writer behind; its run stays RUNNING, as before, until the next sweep closes it as stale;
- reports a write the store refused (a full disk, a damaged file) at the next drain, for that
  run, as :class:`StoreWriteError` naming MLflow's error; the run is then closed FAILED with it.

Off by default (``tracking.writer=false``: the points are written from the run's own
process, at its end); ``tracking.writer=true`` turns it on. It pays only where a core is free
for it (issue 27's measurements: benchmarks/bench_main_job.py)."""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection, Pipe

from bpexp.errors import TrackingError

_writers: dict[str, Writer] = {}  # this process's writer, by store URI


class StoreWriteError(TrackingError):
    """The store refused a run's points that the writer process was writing."""


def for_uri(uri: str) -> Writer | None:
    """This process's writer to ``uri`` (started on first use), or None where there is none:
    a store that is not a SQLite file, or a writer that could not start (points are then
    written by the run's own process)."""
    if not uri.startswith("sqlite:///"):
        return None
    writer = _writers.get(uri)
    if writer is not None and writer.alive():
        return writer
    try:
        writer = _writers[uri] = Writer(uri)
    except OSError as exc:
        print(
            f"warning: no writer process ({exc}); runs write their points at their end",
            file=sys.stderr,
        )
        return None
    _one_blas_thread()
    return writer


def _one_blas_thread() -> None:
    """The training process keeps one BLAS thread once it has a writer: the writer needs the
    other core, on which OpenBLAS's second thread would spin (the main job: 73.8 s with the
    writer and two BLAS threads, against 69.1 s without a writer; benchmarks/README.md)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


class Writer:
    """The parent's end of a writer process (see the module's docstring)."""

    def __init__(self, uri: str) -> None:
        ours, theirs = Pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                ours.close()
                _serve(theirs, uri)
            finally:
                os._exit(0)
        theirs.close()
        self.pid, self.conn, self.uri = pid, ours, uri
        self._sent: dict[str, int] = {}

    def alive(self) -> bool:
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def send(self, run_id: str, points: list[tuple[str, float, int, int]]) -> None:
        """Hand ``(key, value, timestamp, step)`` points of ``run_id`` over; returns at once."""
        if points:
            self.conn.send(("points", run_id, points))
            self._sent[run_id] = self._sent.get(run_id, 0) + len(points)

    def drain(self, run_id: str, tags: list[tuple[str, str]] | None = None) -> int:
        """Wait until every point of ``run_id`` handed over is in the store, the last of them
        sent with ``tags`` in one request; returns the number of points written. Raises
        :class:`StoreWriteError` if the store refused some (the run's later points and the tags
        are then not written), TrackingError if the writer is gone."""
        try:
            self.conn.send(("drain", run_id, list(tags or [])))
            kind, written, error = self.conn.recv()
        except (OSError, EOFError) as exc:
            _writers.pop(self.uri, None)
            raise TrackingError(
                f"the writer process {self.pid} of run {run_id} is gone ({exc!r}); its points "
                "may not all be in the store"
            ) from None
        self._sent.pop(run_id, None)
        if error:
            raise StoreWriteError(error)
        return written


def _serve(conn: Connection, uri: str) -> None:
    """The writer's loop: write each run's points in order, as few requests as they allow."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from bpexp.tracking import error_text

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    # The parent's pooled SQLite connections must not be used from two processes: this one
    # opens its own (SQLAlchemy's advice after a fork: dispose without closing).
    for engine in SqlAlchemyStore._engine_map.values():
        engine.dispose(close=False)
    SqlAlchemyStore._engine_map.clear()
    client = MlflowClient(tracking_uri=uri)
    written: dict[str, int] = {}
    errors: dict[str, str] = {}
    pending: dict[str, list] = {}

    def write(run_id: str, tags: list) -> None:
        points = pending.pop(run_id, [])
        if (not points and not tags) or run_id in errors:  # after a refusal, nothing more
            return
        try:
            metrics = [Metric(k, v, t, s) for k, v, t, s in points]
            tags = [RunTag(k, v) for k, v in tags]
            client.log_batch(run_id, metrics=metrics, tags=tags, synchronous=True)
            written[run_id] = written.get(run_id, 0) + len(points)
        except Exception as exc:
            errors[run_id] = error_text(exc)

    def handle(message) -> None:
        run_id = message[1]
        if message[0] == "points":
            pending.setdefault(run_id, []).extend(message[2])
        else:  # a drain: write what is pending for the run with its tags, then answer
            write(run_id, message[2])
            conn.send(("drained", written.pop(run_id, 0), errors.pop(run_id, "")))

    while True:
        # Points are written as soon as the writer is free, all that came in meanwhile in one
        # request per run: a request costs ~10 ms whatever its size (MLflow reads the run
        # first), so the requests grow while the store is slow and the writer keeps up.
        try:
            handle(conn.recv())
            while conn.poll(0):
                handle(conn.recv())
        except (EOFError, OSError):  # the run's process is gone
            return
        for run_id in list(pending):
            write(run_id, [])
