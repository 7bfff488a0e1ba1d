"""A multirun's jobs: what the sweeper decides about each before launching it, and what each
reports back. Both cross processes (joblib's workers, submitit's tasks, SLURM nodes) as JSON
files in the sweep folder, written and read here only.

- :class:`JobPlan` (``plan/<job>.json``): the job's **arm** and **stage**, decided by the
  sweeper (hydra_plugins/bpexp_sweeper), the one source of both. The job tags its run with
  them (``bpexp.arm``, ``bpexp.stage``), and every table, figure and parent metric uses the
  same arm label.
- :class:`JobResult` (``results/<job>.json``, and the task function's return value): how the
  job ended, its run, its final metrics; :func:`summary` makes the sweep's ``summary.csv``.

Arm labels name their keys, but a single config-group key is named by its option alone:
``optimizer: sgd,momentum`` gives the arms ``sgd`` and ``momentum``; ``optimizer.beta:
0.5,0.9`` x ``trainer.batch_size: 10,100`` gives ``beta=0.5 batch_size=10`` and three more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

PLAN_FOLDER = "plan"
RUNNING_LOCK = ".running"  # locked by the launching process while it lives (stale runs)
RESULTS_FOLDER = "results"
# Keys that never make an arm of a plain grid sweep: seeds repeat an arm, and the settings
# (the learning rate, beta) are searched within an arm (bpexp.analysis.compare).
NOT_ARM_KEYS = ("seed", "optimizer.lr", "optimizer.beta")
FINAL_METRICS = (
    "train/loss",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "test/loss",
    "test/accuracy",
)
SUMMARY_COLUMNS = ["job", "arm", "stage", "overrides", "outcome", "epochs", *FINAL_METRICS]
SUMMARY_COLUMNS += ["run_id", "error"]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(override: str) -> str:
    return override.split("=", 1)[1]


def arm_label(arm_overrides: Sequence[str]) -> str:
    """The label of the arm given by ``arm_overrides`` (``["optimizer.beta=0.5",
    "trainer.batch_size=10"]`` → ``beta=0.5 batch_size=10``; ``["optimizer=sgd"]`` → ``sgd``;
    none → ``all``). A key is shortened to its last part unless two keys share it."""
    if not arm_overrides:
        return "all"
    keys = [_key(o) for o in arm_overrides]
    if len(keys) == 1 and "." not in keys[0]:
        return _value(arm_overrides[0])
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    shown = [t if tails.count(t) == 1 else k for k, t in zip(keys, tails, strict=True)]
    return " ".join(f"{k}={_value(o)}" for k, o in zip(shown, arm_overrides, strict=True))


def arm_overrides(overrides: Sequence[str], arm_keys: Sequence[str]) -> list[str]:
    """The overrides of ``overrides`` that set one of ``arm_keys``, in the order of the keys."""
    by_key = {_key(o): o for o in overrides}
    return [by_key[k] for k in arm_keys if k in by_key]


def grid_arm_keys(swept: Sequence[str]) -> list[str]:
    """The keys of a plain grid's sweep overrides that make arms (see :data:`NOT_ARM_KEYS`)."""
    return [k.lstrip("+~") for k in swept if k.lstrip("+~") not in NOT_ARM_KEYS]


def mlflow_name(label: str) -> str:
    """``label`` in the characters MLflow allows in a metric or param key (letters, digits,
    ``_ - . : /`` and spaces): "=" becomes ":", "/" and "+" become "-", a space or anything
    else "_" (``beta=0.5 batch_size=10`` → ``beta:0.5_batch_size:10``)."""
    import re

    text = label.replace("=", ":").replace("/", "-").replace("+", "-")
    return re.sub(r"[^\w.:-]+", "_", text)


@dataclass
class JobPlan:
    arm: str = ""
    stage: str = ""  # tune | confirm under a protocol; "" in a plain grid


def write_plans(sweep_dir: Path, first_job: int, plans: Sequence[JobPlan]) -> None:
    folder = sweep_dir / PLAN_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, plan in enumerate(plans):
        _write_json(folder / f"{first_job + i}.json", asdict(plan))


def read_plan(sweep_dir: Path, job: int) -> JobPlan:
    path = sweep_dir / PLAN_FOLDER / f"{job}.json"
    if not path.exists():  # launched by something other than bpexp's sweeper
        return JobPlan()
    return JobPlan(**json.loads(path.read_text()))


@dataclass
class JobResult:
    """How one job of a multirun ended.

    ``outcome``: the run's (completed, diverged, failed, interrupted), or ``invalid`` (bad
    config, no run) or ``failed`` (no run: the store, an error before training). ``skipped``:
    the job did not train because a run with its exact config had ended already (``run_id``
    is that run, ``outcome`` its outcome).
    """

    job: int
    overrides: str = ""
    arm: str = ""
    stage: str = ""
    outcome: str = "failed"
    skipped: bool = False
    run_id: str | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # final values
    curve: list[float] = field(default_factory=list)  # the yardstick per epoch (protocol)
    error: str = ""
    process: int | None = None  # which process ran the job (not in summary.csv)
    seconds: float | None = None  # the job's wall time in its process (not in summary.csv)

    @property
    def job_outcome(self) -> str:
        """What the summary says of the job: ``skipped``, or the outcome."""
        return "skipped" if self.skipped else self.outcome

    def value(self, metric: str) -> float:
        value = self.metrics.get(metric)
        return math.nan if value is None else float(value)

    def write(self, sweep_dir: Path) -> None:
        folder = sweep_dir / RESULTS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / f"{self.job}.json", asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> JobResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary_row(self) -> dict:
        row = {
            "job": self.job,
            "arm": self.arm,
            "stage": self.stage,
            "overrides": self.overrides,
            "outcome": self.job_outcome,
            "epochs": self.epochs,
        }
        row |= {m: self.metrics.get(m) for m in FINAL_METRICS}
        return row | {"run_id": self.run_id, "error": self.error}


def read_results(sweep_dir: Path) -> list[JobResult]:
    folder = sweep_dir / RESULTS_FOLDER
    return [JobResult.from_dict(json.loads(p.read_text())) for p in folder.glob("*.json")]


def summary(sweep_dir: Path) -> pd.DataFrame:
    """One row per job that reported: its arm, stage, overrides, outcome (``skipped`` for a job
    whose run existed), final metrics, run id and error."""
    rows = [r.summary_row() for r in read_results(sweep_dir)]
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return frame.sort_values("job").reset_index(drop=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(path)
