"""The main job's wall time, tracked and untracked, side by side, with its training share.

    python benchmarks/bench_main_job.py [--rounds 2] [--variants tracked,untracked,...] [--save]
    python benchmarks/bench_main_job.py --variants untracked,joblib-untracked \
        --overrides trainer.epochs=60   # longer runs: the same jobs, 4x the training

Runs ``python -m bpexp sweep=optimizers`` (the tune-then-confirm protocol: 3 arms x 15 lrs x
2 tuning seeds + 3 x 10 confirm seeds = 120 runs) in a fresh folder per run, alternating the
variants within each round so that a noisy machine hits them alike:

- ``tracked``: the default (SQLite store in the folder, each run's own process writes its
  points, no per-run PNGs), basic (sequential) launcher;
- ``tracked-writer``: ``tracking.writer=true``, a writer process writes them (bpexp/writer.py);
- ``untracked``: ``tracking.enabled=false``;
- ``joblib`` / ``joblib-untracked``: ``hydra/launcher=joblib`` (2 workers), tracked / not;
- ``plots``: ``tracking.plots=true`` (the three per-run PNGs drawn and logged).

Prints each time, the median per variant and the ratios (issue 27's targets: tracked <= 1.25 x
untracked; joblib on 2 cores >= 1.7 x faster), and for every variant the training share: the
time spent in ``bpexp.trainer.train`` over the command's wall time (for joblib, over the wall
time of both cores). Each run also prints where its processes spent their time (timed by
wrapping functions, see ``TIMING_SITE``; seconds/calls, summed over the launching process and
joblib's workers): training; bpexp's part of the jobs (``job``: building, training, logging)
and Hydra's part around it (``hydra_job``, which includes ``job``); Hydra's compositions and
the derived ones (the sweeper's ``SweepConfigLoader``); Hydra's singleton state, which its
joblib launcher installs again in every job (``set_state``); the sweep's end (summary,
parent run, report); every request to the store, by MlflowClient method.
The commit measured is printed first; ``--save`` writes benchmarks/results-main-job.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_sweep import machine, source_line  # same folder: python benchmarks/bench_main_job.py

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = ["sweep=optimizers"]
VARIANTS = {
    "tracked": [],
    "tracked-writer": ["tracking.writer=true"],
    "untracked": ["tracking.enabled=false"],
    "joblib": ["hydra/launcher=joblib"],
    "joblib-untracked": ["hydra/launcher=joblib", "tracking.enabled=false"],
    "plots": ["tracking.plots=true"],
}
# Timers installed in every Python process of the command (the launching one and joblib's
# workers) as a sitecustomize module on PYTHONPATH; each process writes {what: (seconds,
# calls)} to $BPEXP_TIMES/<pid>.json after every job and at exit. MLflow's client is wrapped
# when something imports it (an untracked run never does, and must not pay its import).
TIMING_SITE = """
import atexit, importlib.abc, json, os, sys, threading, time
import bpexp.trainer as trainer, bpexp.app as app, bpexp.sweep as sweep
from hydra_plugins.bpexp_sweeper.bpexp_sweeper import SweepConfigLoader
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core import utils as hydra_utils
from hydra.core.singleton import Singleton
spent = {}
def save():
    with open(os.path.join(os.environ["BPEXP_TIMES"], f"{os.getpid()}.json"), "w") as f:
        json.dump(spent, f)
def timed(name, original, then=None):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:  # the main thread's calls only: the report reads runs in threads
            if threading.current_thread() is threading.main_thread():
                total, calls = spent.get(name, (0.0, 0))
                spent[name] = (total + time.perf_counter() - start, calls + 1)
                if then:
                    then()
    return wrapper
app.train = timed("train", trainer.train)
sweep.run_job = timed("job", sweep.run_job, then=save)  # bpexp's part of a job
sweep.finish = timed("finish", sweep.finish)  # the sweep's summary, parent run and report
hydra_utils.run_job = timed("hydra_job", hydra_utils.run_job)  # Hydra's part around it
Singleton.set_state = staticmethod(timed("set_state", Singleton.set_state))
ConfigLoaderImpl.load_sweep_config = timed("compose", ConfigLoaderImpl.load_sweep_config)
SweepConfigLoader._derive = staticmethod(timed("derive", SweepConfigLoader._derive))
def wrap_client(module):
    for name, method in list(vars(module.MlflowClient).items()):
        if callable(method) and not name.startswith("_"):
            setattr(module.MlflowClient, name, timed("store." + name, method))
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mlflow.tracking.client":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            wrap_client(module)
        spec.loader.exec_module = exec_module
        return spec
import importlib.util
sys.meta_path.insert(0, Hook())
atexit.register(save)
"""


def run(extra: list[str]) -> tuple[float, dict[str, tuple[float, int]], int]:
    """(seconds, {what: (seconds, calls)} summed over its processes, runs) of one main job in a
    fresh folder and store; ``what``: train, compose (Hydra), derive (SweepConfigLoader),
    finish (summary and report), store.<MlflowClient method>."""
    with tempfile.TemporaryDirectory() as folder:
        times = Path(folder) / "times"
        times.mkdir()
        site = Path(folder) / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(TIMING_SITE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BPEXP_"))}
        env["BPEXP_TIMES"] = str(times)
        env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "bpexp", *MAIN_JOB, *extra],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"bpexp {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
        spent: dict[str, tuple[float, int]] = {}
        for p in times.glob("*.json"):  # the launching process and joblib's workers
            for name, (seconds, calls) in json.loads(p.read_text() or "{}").items():
                total, n = spent.get(name, (0.0, 0))
                spent[name] = (total + seconds, n + calls)
        results = list(Path(folder).glob("multirun/*/*/results/*.json"))
        runs = sum(json.loads(p.read_text())["outcome"] != "invalid" for p in results)
        return elapsed, spent, runs


def breakdown(spent: dict[str, tuple[float, int]]) -> str:
    """Where a variant's time went: training, the jobs, Hydra's compositions, the sweep's end
    and the store's requests (the top five methods by time), seconds/calls, in the main threads
    (a store request made while training, a checkpoint's, counts in both)."""
    store = {k[6:]: v for k, v in spent.items() if k.startswith("store.")}
    parts = [
        f"{name} {spent[name][0]:.1f} s/{spent[name][1]}"
        for name in ("train", "job", "hydra_job", "set_state", "compose", "derive", "finish")
        if name in spent
    ]
    if store:
        total = sum(s for s, _ in store.values())
        calls = sum(n for _, n in store.values())
        top = sorted(store.items(), key=lambda kv: -kv[1][0])[:5]
        parts.append(
            f"store {total:.1f} s/{calls} requests ("
            + ", ".join(f"{k} {s:.1f}/{n}" for k, (s, n) in top)
            + ")"
        )
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="tracked,tracked-writer,untracked")
    parser.add_argument("--save", action="store_true")
    parser.add_argument(
        "--overrides", default="", help="added to every variant, e.g. trainer.epochs=60"
    )
    args = parser.parse_args()
    names = args.variants.split(",")
    common = args.overrides.split()
    command = " ".join([*MAIN_JOB, *common])
    head = f"bench_main_job: {source_line()}, {args.rounds} rounds, python -m bpexp {command}"
    lines = [head, f"machine: {machine()}"]
    print("\n".join(lines), flush=True)
    times: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t, spent, runs = run([*common, *VARIANTS[name]])
            cores = 2 if name.startswith("joblib") else 1  # joblib's workers: one per core
            trained = spent.get("train", (0.0, 0))[0] / cores
            times[name].append((t, trained, runs))
            lines.append(f"round {r + 1} {name:17s} {t:7.1f} s ({runs} runs): {breakdown(spent)}")
            print(lines[-1], flush=True)
    median = {name: statistics.median(t for t, _, _ in ts) for name, ts in times.items()}
    for name, ts in times.items():
        share = statistics.median(trained / t for t, trained, _ in ts)
        lines.append(
            f"{name:17s} median {median[name]:7.1f} s  ({', '.join(f'{t:.1f}' for t, _, _ in ts)})"
            + f"  training share {share:.0%}"
            + (" (of both cores)" if name.startswith("joblib") else "")
        )
    pairs = [
        ("tracked", "untracked", "(target <= 1.25)"),
        ("tracked-writer", "untracked", "(with the writer process)"),
        ("plots", "untracked", ""),
        ("joblib", "tracked", "(a time ratio; speed-up = 1 / it, target >= 1.7)"),
        ("joblib-untracked", "untracked", "(a time ratio; speed-up = 1 / it)"),
    ]
    for a, b, note in pairs:
        if a in median and b in median:
            ratio = median[a] / median[b]
            extra = f", speed-up {1 / ratio:.2f}" if a.startswith("joblib") else ""
            lines.append(f"{a} / {b} = {ratio:.3f}{extra}  {note}".rstrip())
    print("\n".join(lines[2 + sum(len(ts) for ts in times.values()) :]))
    if args.save:
        (ROOT / "benchmarks" / "results-main-job.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
