"""Stop signals: a store write is never cut, and the state lives in bpexp.stop alone."""

from __future__ import annotations

import signal

import pytest

from bpexp import stop


def test_a_stop_signal_during_a_store_write_is_raised_after_it():
    # A KeyboardInterrupt inside an SQLite transaction leaves its lock held, and the other jobs
    # of a parallel sweep cannot close their runs: the write finishes first, then raises.
    assert stop.defer() is False  # no write in progress: raise at once
    done = []
    with pytest.raises(KeyboardInterrupt):
        with stop.uninterrupted_write():
            assert stop.defer() is True
            done.append("write finished")
    assert done == ["write finished"]
    with stop.uninterrupted_write():  # the deferral was used up
        pass
    # Writes nest (a run's end flushes, then sets its status): only the outermost one raises,
    # and what it raises is what the handler asked for (SIGTERM's Terminated).
    with pytest.raises(stop.Terminated):
        with stop.uninterrupted_write():
            with stop.uninterrupted_write():
                assert stop.defer(stop.Terminated) is True
            done.append("inner write finished, nothing raised")
    assert done[-1] == "inner write finished, nothing raised"


def test_the_launching_handler_raises_once_then_a_write_defers_it():
    previous = signal.signal(signal.SIGINT, stop.on_signal)
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert stop.stopping() == signal.SIGINT and stop.exit_code() == 130
        stop.reset()
        with pytest.raises(stop.Terminated):
            with stop.uninterrupted_write():
                stop.on_signal(signal.SIGTERM, None)  # deferred: the write goes on
                assert stop.stopping() == signal.SIGTERM
        assert stop.exit_code() == 143
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.reset()


def test_a_stopping_sweep_folder_stops_jobs_that_have_not_started(tmp_path):
    assert not stop.sweep_stopping(tmp_path)
    (tmp_path / stop.STOP_FILE).touch()
    assert stop.sweep_stopping(tmp_path)


WATCHER = """
import socket, subprocess, sys, time
from bpexp import stop
gone = subprocess.Popen([sys.executable, "-c", "pass"]); gone.wait()  # a pid that has ended
host = socket.gethostname() if sys.argv[1] == "this host" else "a-node-far-away"
stop.watch_launcher(gone.pid, "", host)
time.sleep(3 * stop.LAUNCHER_POLL_SECONDS + 1)
print("still here")
"""


@pytest.mark.parametrize("where", ["this host", "another host"])
def test_a_job_process_ends_with_its_launcher_only_on_the_launchers_host(where):
    """A job process whose launching process is gone exits (143) instead of living on as an
    orphan, but only when that launcher ran on this host: a pid of another node (a SLURM
    launcher on a login node) says nothing here, and a job there must go on."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", WATCHER, where], capture_output=True, text=True, timeout=60
    )
    if where == "this host":
        assert out.returncode == 128 + signal.SIGTERM and "still here" not in out.stdout
    else:
        assert out.returncode == 0 and "still here" in out.stdout, out.stderr


def test_the_preemption_handler_keeps_submitits_and_never_cuts_a_store_write():
    """SIGUSR2 in a submitit task: submitit's handler (checkpoint, requeue, SystemExit) runs,
    but after a store write in progress, not inside it; later stop signals are ignored."""
    import types

    calls = []

    class SignalHandler:  # submitit's, as far as bpexp sees it: a bound method of its class
        def checkpoint_and_try_requeue(self, signum, frame):
            calls.append(("requeue", stop._state.write_depth))
            raise SystemExit(-1)

    SignalHandler.__module__ = "submitit.core.job_environment"
    previous = signal.signal(signal.SIGUSR2, SignalHandler().checkpoint_and_try_requeue)
    try:
        stop._take_preemption_signal()
        assert signal.getsignal(signal.SIGUSR2) is not previous
        with pytest.raises(SystemExit):
            with stop.uninterrupted_write():
                signal.raise_signal(signal.SIGUSR2)
                calls.append(("write done", stop._state.write_depth))
        assert calls == [("write done", 1), ("requeue", 0)]
        assert stop.preempted() and stop.stopping() == signal.SIGUSR2
        stop._state.in_job = True  # SLURM's SIGTERM as it requeues: no KeyboardInterrupt
        try:
            stop._on_job_signal(signal.SIGTERM, types.SimpleNamespace())
        finally:
            stop._state.in_job = False
    finally:
        signal.signal(signal.SIGUSR2, previous)
        stop.reset()


def test_a_preemption_whose_exit_was_lost_ends_the_job_at_its_next_record(monkeypatch):
    """A signal handler's exception raised inside a finaliser is dropped by Python ("Exception
    ignored"), as a weakref callback shows here; the next training record raises the
    preemption's SystemExit again, outside any store write, and passes nothing on."""
    import weakref

    from bpexp import app
    from bpexp.trainer import EpochRecord

    class Key:
        pass

    def lost_exit(_):
        raise SystemExit(-1)  # what submitit's handler raises, landing in a finaliser

    key = Key()
    ref = weakref.ref(key, lost_exit)
    del key  # the callback runs, raises, and Python ignores it
    assert ref() is None
    seen = []
    emit = app._fan_out([seen.append])
    record = EpochRecord(epoch=0, metrics={"train/loss": 1.0})
    emit(record)  # not preempted: records pass
    monkeypatch.setattr(stop._state, "preempted", True)
    monkeypatch.setattr(stop._state, "write_depth", 1)
    emit(record)  # inside a store write the deferred handler will exit: not here
    monkeypatch.setattr(stop._state, "write_depth", 0)
    with pytest.raises(SystemExit):
        emit(record)
    assert seen == [record, record]
