"""Stop signals (Ctrl-C, SIGTERM), in one place: who handles them, and what they interrupt.

Every process that runs bpexp is in one of two roles, and this module owns the state of both:

- **the launching process** (``python -m bpexp``, :func:`install`): the first signal interrupts
  the run training in this process (by raising :class:`KeyboardInterrupt`, or
  :class:`Terminated` for SIGTERM), or, when a sweep's jobs run in other processes (joblib's
  workers, submitit's tasks), asks them to stop instead and lets the launcher collect them
  (:func:`_stop_jobs_elsewhere`). A second signal kills every process below this one and exits
  at once; resuming the sweep closes the runs left RUNNING.
- **a job process** other than the launching one (:func:`job`): its first signal interrupts the
  job in progress, whose run is closed KILLED with its points; repeats are ignored.

Either way a signal never interrupts a write to the store (:func:`uninterrupted_write`): on
SQLite the transaction would keep its lock, and no other job of the sweep could close its run.
While a write is in progress the handler only asks for the interrupt, and the outermost write
raises it once done.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STOP_FILE = ".stopping"  # in the sweep folder once the launching process got a stop signal
LAUNCHER_POLL_SECONDS = 1.0  # how often a job process looks whether its launcher is alive


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's preemption, ``kill``): handled like Ctrl-C, so the run in progress
    is closed as KILLED with its metrics kept."""


@dataclass
class _State:
    launching: bool = False  # this process started the multirun
    sweep_dir: Path | None = None  # ... in this folder
    jobs_elsewhere: bool = False  # ... and its launcher runs jobs in other processes
    in_job: bool = False  # a job is training in this process
    signum: int = 0  # the first stop signal this process got; 0 before
    write_depth: int = 0  # store writes in progress (they nest)
    # what to raise (an exception type) or call (a preemption's requeue) once the writes are done
    deferred: type[BaseException] | Callable[[], None] | None = None
    watching: bool = False  # a thread ends this job process when its launcher is gone
    preempted: bool = False  # SLURM's SIGUSR2: the job is checkpointed and requeued


_state = _State()


def stopping() -> int:
    """The signal number of the stop signal this process got, or 0."""
    return _state.signum


def sweep_stopping(sweep_dir: Path) -> bool:
    """Whether this process, or the process that launched the sweep in ``sweep_dir``, got a
    stop signal: a job that has not started yet then does not start."""
    return bool(_state.signum) or (sweep_dir / STOP_FILE).exists()


def exit_code(signum: int | None = None) -> int:
    """The shell's convention: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 143 if (signum or _state.signum) == signal.SIGTERM else 130


def reset() -> None:
    """Forget a stop signal (tests that send one to their own process)."""
    _state.signum, _state.deferred, _state.preempted = 0, None, False


# ----------------------------------------------------------------------- store writes


@contextmanager
def uninterrupted_write() -> Iterator[None]:
    """A store write that a stop signal does not cut: the signal is raised after it."""
    _state.write_depth += 1
    try:
        yield
    finally:
        _state.write_depth -= 1
    deferred = _state.deferred
    if deferred is not None and _state.write_depth == 0:
        _state.deferred = None
        if isinstance(deferred, type):
            raise deferred()
        deferred()  # a preemption: checkpoint the job, requeue it and exit (SystemExit)


def defer(exc_type: type[BaseException] = KeyboardInterrupt) -> bool:
    """For a signal handler about to raise ``exc_type``: True if a store write is in progress,
    which then raises it itself when done."""
    if _state.write_depth:
        _state.deferred = exc_type
        return True
    return False


# ------------------------------------------------------------------ launching process


def install() -> None:
    """Take Ctrl-C and SIGTERM in the launching process (``python -m bpexp``)."""
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def launching(sweep_dir: Path, launcher: str) -> None:
    """This process launches the multirun in ``sweep_dir`` with ``launcher`` (its target)."""
    _state.launching = True
    _state.sweep_dir = sweep_dir
    _state.jobs_elsewhere = "joblib" in launcher or "submitit" in launcher
    (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # left by an earlier, stopped sweep
    if "submitit" in launcher:
        _keep_sigint_from_launched_processes()


def on_signal(signum: int, frame: object) -> None:
    """Ctrl-C (SIGINT) or SIGTERM in the launching process (see the module's docstring)."""
    if _state.signum:
        _signal_descendants(signal.SIGKILL)
        print(
            "\nstopped at once (second signal); resuming the sweep closes its runs", file=sys.stderr
        )
        os._exit(128 + signum)
    _state.signum = signum
    if _state.launching and _state.jobs_elsewhere and not _state.in_job:
        _stop_jobs_elsewhere()
        print(f"\n{signal.Signals(signum).name}: stopping the sweep's jobs", file=sys.stderr)
        return
    stop = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if defer(stop):
        return  # a store write is in progress: it raises once done
    raise stop


def finishing() -> None:
    """The sweep's jobs are over and the launching process sums it up (summary, report,
    parent run): a stop signal now interrupts this process itself, as in a basic sweep."""
    _state.jobs_elsewhere = False


def _stop_jobs_elsewhere() -> None:
    """Where the jobs run in other processes, raising would make the launcher tear them down
    (SIGKILL) while they close their runs. Instead the sweep folder gets a ``.stopping`` file,
    SIGTERM goes to every process below this one (a terminal's Ctrl-C already reached them;
    ``kill PID`` did not), and the launcher is left to collect the jobs: each job in progress
    closes its run KILLED and reports ``interrupted``, and a job starting after that returns
    at once. SIGTERM for both signals: submitit's local controller passes SIGTERM on to its
    tasks (on SIGINT it kills them after 1 s); a job process treats both alike."""
    if _state.sweep_dir is not None:
        (_state.sweep_dir / STOP_FILE).touch()
    _signal_descendants(signal.SIGTERM)


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell it from a
    later process given the same pid; "" where /proc is absent or the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rindex(")") + 2 :].split()[19]  # field 22, after "pid (comm)"


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
    task), and the tasks take it once their first job unblocks it (:func:`job`).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def receive() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        threading.Event().wait()

    threading.Thread(target=receive, name="bpexp-sigint", daemon=True).start()


# ------------------------------------------------------------------------ job process


def _on_job_signal(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM in a job process other than the launching one: interrupt the job in
    progress (its run is closed as KILLED), once; the launching process passes on what a
    terminal also sent, so repeats are ignored, and a second Ctrl-C is the launching process's
    to act on (it kills every job at once)."""
    if _state.signum:
        return
    _state.signum = signum
    if _state.in_job and not defer(KeyboardInterrupt):
        raise KeyboardInterrupt


def _handle_signals_in_job_process() -> None:
    """In job processes (joblib's workers, submitit's tasks), from their first job on: the
    default SIGTERM would end them with their run left RUNNING (submitit even ignores it)."""
    if _state.launching or signal.getsignal(signal.SIGTERM) is _on_job_signal:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_job_signal)
        signal.signal(signal.SIGTERM, _on_job_signal)
        _take_preemption_signal()
        # Blocked in submitit's processes (see _keep_sigint_from_launched_processes); one
        # that came meanwhile is delivered now, and the job does not start.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


PREEMPT_SIGNAL = getattr(signal, "SIGUSR2", None)  # submitit's default (SUBMITIT_PREEMPT_SIGNAL)


def _take_preemption_signal() -> None:
    """On SLURM, submitit's task takes SIGUSR2 (``--signal=USR2@90``: a time limit near, or a
    preemption) with a handler that checkpoints the job, requeues it (``scontrol requeue``)
    and exits the process with SystemExit. Here that handler is kept but never cuts a store
    write: during one it runs once the write is done. The run in progress is then closed
    KILLED with its points (its checkpoint is already in the store), and the requeued job
    resumes it from that checkpoint (:func:`bpexp.tracking.resumable_run`). Later signals
    (SLURM's SIGTERM as it requeues the job) are ignored: the process is on its way out."""
    if PREEMPT_SIGNAL is None:
        return
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signum = getattr(signal, f"SIG{name}", PREEMPT_SIGNAL)
    previous = signal.getsignal(signum)
    owner = type(getattr(previous, "__self__", None)).__module__
    if not owner.startswith("submitit"):
        return  # not a submitit task (a joblib worker): nothing to keep

    def on_preempt(number: int, frame: object) -> None:
        _state.signum = _state.signum or number  # SIGTERM from here on is ignored
        _state.preempted = True
        if _state.write_depth:
            _state.deferred = lambda: previous(number, None)
            return
        previous(number, frame)

    signal.signal(signum, on_preempt)


def preempted() -> bool:
    """Whether this job process got the preemption signal (its job is being requeued)."""
    return _state.preempted


def exit_if_preempted() -> None:
    """Raise the preemption's SystemExit again if this process got the signal and is still
    running outside a store write: its first one was lost. A signal handler runs in whatever
    frame Python is in, and an exception raised in a finaliser (a weakref callback during a
    garbage collection) is printed as "Exception ignored" and dropped; the job then trained on
    with its run RUNNING until SLURM killed it (tests/test_slurm.py, CI at 698b406). Called
    for every training record (:func:`bpexp.app.execute`), so the run is closed KILLED at the
    next step at the latest; submitit has already requeued the job."""
    if _state.preempted and not _state.write_depth:
        raise SystemExit(-1)


def watch_launcher(pid: int, start: str, host: str) -> None:
    """In a job process (a joblib worker, a submitit task): once the launching process ``pid``
    (started at ``start``, see :func:`process_start`) is gone (kill -9, a crash), end this one
    too, rather than live on as an orphan. A job in progress is stopped first as by SIGTERM,
    so its run is closed KILLED with its points. Started once per process, and only on the
    launcher's ``host``: another node's processes cannot be seen (a SLURM job there ends with
    its job, which ``scancel`` ends)."""
    if _state.launching or _state.watching or pid == os.getpid():
        return
    if host != socket.gethostname():
        return
    _state.watching = True

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return bool(start) and process_start(pid) not in ("", start)

    def watch() -> None:
        while not gone():
            time.sleep(LAUNCHER_POLL_SECONDS)
        if _state.in_job:
            os.kill(os.getpid(), signal.SIGTERM)  # the job closes its run, then returns
            deadline = time.monotonic() + 120
            while _state.in_job and time.monotonic() < deadline:
                time.sleep(0.1)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="bpexp-launcher-watch", daemon=True).start()


@contextmanager
def job() -> Iterator[None]:
    """The block in which a job trains: a stop signal interrupts it (KeyboardInterrupt)."""
    _handle_signals_in_job_process()
    _state.in_job = True
    try:
        yield
    finally:
        _state.in_job = False


def raise_in_launcher() -> bool:
    """Whether an interrupted job should re-raise: in the launching process the interrupt
    ends the sweep; in a job process the job returns, so that the launcher collects it."""
    return _state.launching
