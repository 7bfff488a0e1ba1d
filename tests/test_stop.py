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
