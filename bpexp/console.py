"""A multirun's console: one progress bar (or line) in the launching process, a line per job.

The sweeper (hydra_plugins/bpexp_sweeper) opens a :class:`Progress` for the sweep's jobs and
tells it the stage (``tune``, ``confirm``; none in a plain grid). A thread of the launching
process reads the jobs' result files (``results/<job>.json``, :class:`bpexp.jobs.JobResult`)
as they appear, so the count is right whatever process runs the jobs: the launching one
(basic launcher), joblib's workers, submitit's tasks or SLURM's nodes.

What it shows is set by ``verbose`` (``conf/config.yaml``; ``docs/usage.md#the-console``):

- ``0`` (a multirun's default): in a terminal, one tqdm bar: jobs done/total, the stage, the
  elapsed time and the time left, and the best setting of each arm so far (by the mean of its
  yardstick over the seeds that ran); Hydra's per-job lines are left out while the bar is up.
  Outside a terminal (a log file, a pipe): no bar and no control characters, Hydra's line as
  each job starts, and the same progress as a plain line at every tenth of the jobs and at the
  end of each stage.
- ``1``: and one line per job as it ends (in place of Hydra's): its number, arm and stage, its
  overrides, outcome, yardstick and time.
- ``2``: every run's own lines instead (its run, its epochs, its end), as a single run prints
  them, with Hydra's line as each job starts (outside a terminal), as before issue 27.

Failed and invalid jobs are always printed, by the job and again at the end of the sweep.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from pathlib import Path

from bpexp import jobs

POLL_SECONDS = 0.5  # how often the launching process looks for new results
# Hydra's launchers log a line per job ("#12 : optimizer.lr=0.1 seed=0") on these loggers.
LAUNCHER_LOGGERS = (
    "hydra._internal.core_plugins.basic_launcher",
    "hydra_plugins.hydra_joblib_launcher._core",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
)
FAILED = ("failed", "invalid")


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _DropJobLines(logging.Filter):
    """Hydra's per-job INFO lines, left out while bpexp prints its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


class Progress:
    """The progress of a multirun of ``total`` jobs in ``sweep_dir`` (see the module)."""

    def __init__(
        self,
        sweep_dir: Path,
        total: int,
        *,
        verbose: int = 0,
        yardstick: str = "val/accuracy",
        direction: str | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.folder = Path(sweep_dir) / jobs.RESULTS_FOLDER
        self.total = total
        self.verbose = verbose
        self.yardstick = yardstick
        self.maximize = (direction or ("minimize" if "loss" in yardstick else "maximize")) == (
            "maximize"
        )
        self.terminal = is_terminal() if terminal is None else terminal
        self.stage = ""
        self.start = time.monotonic()
        self.seen: dict[int, jobs.JobResult] = {}
        self.outcomes: dict[str, int] = {}
        self._next_tenth = 1
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._bar = None
        self._filter = _DropJobLines()
        if self.terminal or verbose == 1:  # bpexp's job lines (or none) instead of Hydra's
            for name in LAUNCHER_LOGGERS:
                logging.getLogger(name).addFilter(self._filter)
        if self.terminal:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit="job",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{desc}{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} jobs "
                "[{elapsed}<{remaining}]{postfix}",
            )
        self._thread = threading.Thread(target=self._watch, name="bpexp-progress", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the sweeper's calls

    def set_stage(self, stage: str) -> None:
        with self._lock:
            self._poll()
            if self.stage and self.stage != stage and not self.terminal:
                self._print(self.line())  # the stage that ends
            self.stage = stage
            self._show()

    def say(self, text: str) -> None:
        """A line of the sweeper's own (a stage's start), above the bar if one is up."""
        with self._lock:
            self._print(text)

    def close(self) -> None:
        """Read the last results, print the final progress and stop watching (once)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._poll()
            if self._bar is not None:
                self._show()
                self._bar.close()
                self._bar = None
            elif self.seen:
                self._print(self.line())
        for name in LAUNCHER_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)

    # ---------------------------------------------------------------------- what is shown

    def line(self) -> str:
        """The progress as one plain line (outside a terminal, and in tests)."""
        done = len(self.seen)
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (self.total - done) if done else math.nan
        stage = f" ({self.stage})" if self.stage else ""
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        text = f"progress: {done}/{self.total} jobs{stage}, {_clock(elapsed)} elapsed"
        text += f", ETA {_clock(eta)}" if done < self.total else ""
        text += f"; {counts}" if counts else ""
        best = self.best()
        return text + (f"; best {self.yardstick}: {best}" if best else "")

    def best(self) -> str:
        """Each arm's best setting so far in the current stage: ``sgd lr=4.39 0.951``."""
        by_arm: dict[str, dict[str, list[float]]] = {}
        tokens: dict[str, list[set[str]]] = {}
        for _, result in sorted(self.seen.items()):  # the arms in the jobs' order
            if result.stage != self.stage or result.outcome in FAILED:
                continue
            words = set(result.overrides.split())
            setting = " ".join(
                w for w in result.overrides.split() if not w.startswith(("seed=", "sweep="))
            )
            tokens.setdefault(result.arm, []).append(words)
            value = result.value(self.yardstick)
            by_arm.setdefault(result.arm, {}).setdefault(setting, []).append(value)
        shown = []
        for arm, settings in by_arm.items():
            common = set.intersection(*tokens[arm])  # the arm's own and fixed overrides
            scored = [
                (sum(v) / len(v), s)
                for s, v in settings.items()
                if all(math.isfinite(x) for x in v)
            ]
            if not scored:
                continue
            value, setting = (max if self.maximize else min)(scored)
            varying = [_short(w) for w in setting.split() if w not in common]
            shown.append(" ".join([arm or "all", *varying, f"{value:.3g}"]))
        return " | ".join(shown)

    # --------------------------------------------------------------------------- workings

    def _watch(self) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            with self._lock:
                self._poll()

    def _poll(self) -> None:
        try:
            paths = list(self.folder.glob("*.json"))
        except OSError:
            return
        new = []
        for path in paths:
            try:
                number = int(path.stem)
            except ValueError:
                continue
            if number in self.seen:
                continue
            try:
                result = jobs.JobResult.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):  # being replaced: read at the next poll
                continue
            self.seen[number] = result
            self.outcomes[result.job_outcome] = self.outcomes.get(result.job_outcome, 0) + 1
            new.append(result)
        for result in sorted(new, key=lambda r: r.job):
            if self.verbose == 1:  # (2: the jobs print their own lines, Hydra's too)
                self._print(self.job_line(result))
        if new:
            self._show()

    def job_line(self, result: jobs.JobResult) -> str:
        """One job as one line: ``#12 sgd tune optimizer.lr=0.1 seed=0: completed,
        val/accuracy 0.9444, 1.3 s``."""
        where = " ".join(x for x in (result.arm, result.stage) if x)
        value = result.value(self.yardstick)
        parts = [result.job_outcome]
        if math.isfinite(value):
            parts.append(f"{self.yardstick} {value:.4f}")
        if result.seconds is not None:
            parts.append(f"{result.seconds:.1f} s")
        if result.error:
            parts.append(result.error.splitlines()[0][:200])
        head = f"#{result.job} " + (f"{where} " if where else "")
        return f"{head}{result.overrides}: {', '.join(parts)}"

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"{self.stage} " if self.stage else "", refresh=False)
            best = self.best()
            self._bar.set_postfix_str(f"best: {best}" if best else "", refresh=False)
            if len(self.seen) > self._bar.n:
                self._bar.update(len(self.seen) - self._bar.n)
            else:
                self._bar.refresh()
        elif len(self.seen) * 10 >= self._next_tenth * self.total and len(self.seen) < self.total:
            while len(self.seen) * 10 >= self._next_tenth * self.total:
                self._next_tenth += 1
            self._print(self.line())

    def _print(self, text: str) -> None:
        if text == getattr(self, "_last", None):  # a tenth and a stage's end at one job
            return
        self._last = text
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)


def _short(override: str) -> str:
    """``optimizer.lr=0.5`` as ``lr=0.5``."""
    key, _, value = override.partition("=")
    return f"{key.rsplit('.', 1)[-1]}={value}"


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"
