"""Costs around the core: tracking, sweeps and analysis, measured side by side in one run.

    python benchmarks/bench_sweep.py            # about 8 minutes
    python benchmarks/bench_sweep.py --quick    # about 2 minutes

Prints one table of ratios with their targets (issue "Performance", items 4-6); nothing is
asserted. Every subprocess gets its own temporary folder and a fresh SQLite store.
- tracking: one digits run (64-30-10, 15 epochs, batch 10) with tracking on (the default, no
  per-run PNGs), off, and on with ``tracking.plots=true``, in one process, interleaved; the
  MLflow share of the wall time is 1 - off/on;
- sweep: the ``optimizers`` sweep with the sequential (basic) launcher vs joblib with 2 workers,
  alternated over 3 rounds (1 with --quick), the speed-up the median of the per-round ratios;
  the per-job fixed overhead is (T(24 jobs) - T(12 jobs)) / 12 for 1-epoch jobs on a tiny data
  set, so that process start-up and the end-of-sweep report cancel out, and Hydra's composition
  of one job's config (once a job by the launcher, and serially in the launching process for
  each job that brings an override not composed yet) is timed in-process; with them, the
  Amdahl bound on the joblib speed-up for such jobs;
- analysis: all histories of a 100-run sweep into pandas with ``bpexp.analysis.history`` (the
  bulk path: one ``history.parquet`` artifact a run) vs ``MlflowClient.get_metric_history``
  (one request per run and metric).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlflow

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, mlflow {mlflow.__version__}"
    )


def cli(args: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BPEXP_"))}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bpexp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"bpexp {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def fresh_store(folder: Path) -> str:
    from mlflow import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return uri


def bench_tracking(rounds: int, epochs: int = 15) -> list[tuple[str, float, str, str]]:
    import bpexp

    with tempfile.TemporaryDirectory() as tmp:
        uri = fresh_store(Path(tmp))
        base = [f"trainer.epochs={epochs}", "seed=0"]
        bpexp.run([f"tracking.uri={uri}", *base])  # warm-up: imports, fonts, schema
        on, off, plots = [], [], []
        for _ in range(rounds):
            t = time.perf_counter()
            bpexp.run(["tracking.enabled=false", *base])
            off.append(time.perf_counter() - t)
            t = time.perf_counter()
            bpexp.run([f"tracking.uri={uri}", *base, "force=true"])
            on.append(time.perf_counter() - t)
            t = time.perf_counter()
            bpexp.run([f"tracking.uri={uri}", *base, "force=true", "tracking.plots=true"])
            plots.append(time.perf_counter() - t)
    t_on, t_off, t_plots = (statistics.median(x) for x in (on, off, plots))
    run = f"digits {epochs} epochs"
    return [
        (f"{run}, tracking off (s)", t_off, "", ""),
        (f"{run}, tracking on (s)", t_on, "", ""),
        (
            f"{run}, MLflow share of the wall time",
            1 - t_off / t_on,
            "<= 0.10",
            "PASS" if 1 - t_off / t_on <= 0.10 else "MISS",
        ),
        ("  the per-run PNGs (tracking.plots=true) add, relative", t_plots / t_on - 1, "", ""),
    ]


JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def compose_seconds(rounds: int = 20) -> float:
    """Median time Hydra takes to compose one job's config of the ``optimizers`` sweep, as
    ``load_sweep_config`` does for every job, and in the launching process (serially) for each
    job that brings an override the sweeper has not composed yet."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bpexp import config

    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = compose("config", ["sweep=optimizers", *JOBLIB], return_hydra_config=True)
        times = []
        for i in range(rounds):
            start = time.perf_counter()
            loader.load_sweep_config(
                master, ["optimizer=momentum", "optimizer.lr=0.1", f"seed={i}"]
            )
            times.append(time.perf_counter() - start)
    GlobalHydra.instance().clear()
    return statistics.median(times)


def bench_sweep(quick: bool) -> list[tuple[str, float, str, str]]:
    # Full: the main job itself (the protocol, 120 runs); quick: a plain 12-job grid.
    grid = ["hydra.sweeper.protocol=null", "optimizer.lr=0.1,1.0", "seed=0,1"] if quick else []
    jobs = 12 if quick else 120
    rounds = 1 if quick else 3
    rows = []
    # With tracking off the jobs are pure computation; with it on, every job writes to one
    # SQLite file, and SQLite takes one writer at a time. Basic and joblib alternate, the
    # first one changing every round; the speed-up is the median of the per-round ratios.
    for tracking in ("tracking.enabled=true", "tracking.enabled=false"):
        times: dict[str, list[float]] = {"basic": [], "joblib": []}
        for r in range(rounds):
            order = [("basic", []), ("joblib", JOBLIB)][:: 1 if r % 2 == 0 else -1]
            for name, extra in order:
                with tempfile.TemporaryDirectory() as tmp:
                    times[name].append(
                        cli(["sweep=optimizers", *grid, tracking, *extra], Path(tmp))
                    )
        label = f"sweep=optimizers ({jobs} jobs, {tracking})"
        rows.append((f"{label}, basic launcher (s)", statistics.median(times["basic"]), "", ""))
        rows.append((f"{label}, joblib 2 workers (s)", statistics.median(times["joblib"]), "", ""))
        speedup = statistics.median(
            b / j for b, j in zip(times["basic"], times["joblib"], strict=True)
        )
        rows.append(
            (
                "  joblib speed-up over sequential",
                speedup,
                ">= 1.7",
                "PASS" if speedup >= 1.7 else "MISS",
            )
        )
    rows += bench_job_overhead(rounds)
    return rows


def bench_job_overhead(rounds: int) -> list[tuple[str, float, str, str]]:
    """Per-job fixed cost: 1-epoch jobs on the 64-image pixels3x4 set (training is ~1 ms), as
    the difference of a 24-job and a 12-job sweep over 12 jobs, so that process start-up, the
    workers' start and the end-of-sweep report cancel out. For joblib it is wall time per job
    with 2 workers; the Amdahl bound uses the parent's serial composition: the 12 more jobs
    bring 4 new seeds, so 4 of them are composed in the launching process."""
    sizes = {12: "seed=0,1,2,3", 24: "seed=0,1,2,3,4,5,6,7"}
    base = ["-m", "optimizer=sgd,momentum,nesterov", "trainer.epochs=1", "data=pixels3x4"]
    base += ["network=pixels", "trainer.batch_size=64"]
    rows = []
    compose = compose_seconds()
    rows.append(("Hydra composition of one job's config (s)", compose, "", ""))
    serial = compose * 4 / 12  # per added job: 4 new seed values among 12 jobs
    for tracking in ("tracking.enabled=true", "tracking.enabled=false"):
        per_job = {}
        for name, extra in (("basic", []), ("joblib", JOBLIB)):
            diffs = []
            for _ in range(max(rounds - 1, 1)):
                t = {}
                for n, seeds in sizes.items():
                    with tempfile.TemporaryDirectory() as tmp:
                        t[n] = cli([*base, seeds, tracking, *extra], Path(tmp))
                diffs.append((t[24] - t[12]) / 12)
            per_job[name] = statistics.median(diffs)
            rows.append(
                (
                    f"per-job fixed overhead, {name}, {tracking} (s/job, T(24)-T(12) / 12)",
                    per_job[name],
                    "",
                    "",
                )
            )
        # Serial in the launching process: the sweeper's composition of the jobs with a new
        # override. The rest of a job's fixed cost runs on 2 workers at best.
        rest = per_job["basic"] - serial
        rows.append(
            (
                f"  Amdahl bound on joblib speed-up for such jobs, {tracking}",
                per_job["basic"] / (serial + rest / 2),
                "",
                "",
            )
        )
    return rows


def bench_analysis(quick: bool) -> list[tuple[str, float, str, str]]:
    from mlflow import MlflowClient

    from bpexp import analysis

    n_runs = 30 if quick else 100
    seeds = ",".join(str(s) for s in range(n_runs // 10))
    with tempfile.TemporaryDirectory() as tmp:
        uri = fresh_store(Path(tmp))
        cli(
            [
                "-m",
                "optimizer=sgd,nesterov",
                "optimizer.lr=0.1,0.3,1.0,3.0,10.0",
                f"seed={seeds}",
                "trainer.epochs=15",
                f"tracking.uri={uri}",
                "tracking.plots=false",
            ],
            Path(tmp),
        )
        frame = analysis.runs(tracking_uri=uri)
        start = time.perf_counter()
        bulk = analysis.history(frame, tracking_uri=uri)
        t_bulk = time.perf_counter() - start
        client = MlflowClient(tracking_uri=uri)
        start = time.perf_counter()
        points = 0
        for run_id in frame["run_id"]:
            for key in client.get_run(run_id).data.metrics:
                points += len(client.get_metric_history(run_id, key))
        t_each = time.perf_counter() - start
    assert points == len(bulk), (points, len(bulk))
    return [
        (
            f"load all histories of {len(frame)} runs ({points} points), bulk (s)",
            t_bulk,
            "<= 3 s",
            "PASS" if t_bulk <= 3 else "MISS",
        ),
        ("  same with get_metric_history per run and metric (s)", t_each, "", ""),
    ]


def source_line() -> str:
    """Which bpexp was measured: its folder and commit ("-dirty": not a committed state)."""
    import bpexp

    root = Path(bpexp.__file__).resolve().parents[1]
    describe = ["git", "-C", str(root), "describe", "--always", "--dirty"]
    try:
        commit = subprocess.run(describe, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return f"bpexp from {root} ({commit.strip()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(source_line())
    rows = bench_tracking(3 if args.quick else 7)
    rows += bench_tracking(2 if args.quick else 3, epochs=150)
    rows += bench_sweep(args.quick)
    rows += bench_analysis(args.quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>9}  {'target':>8}  result")
    for name, value, target, verdict in rows:
        print(f"{name:<{width}}  {value:>9.3f}  {target:>8}  {verdict}")


if __name__ == "__main__":
    main()
