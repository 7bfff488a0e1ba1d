"""The main job's wall time, tracked and untracked, side by side, with its training share.

    python benchmarks/bench_main_job.py [--rounds 2] [--variants tracked,untracked,...] [--save]

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
time the launching process spent in ``bpexp.trainer.train`` (timed by wrapping it, see
``TIMED_MAIN``) over the command's wall time (not for joblib, whose workers train).
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
# A sitecustomize-free way to time the trainer in every process of the command (the launching
# one and joblib's workers): python -c runs this, then bpexp's own main.
TIMED_MAIN = """
import atexit, os, sys, time
import bpexp.trainer as trainer, bpexp.app as app
spent = [0.0]
original = trainer.train
def train(*args, **kwargs):
    start = time.perf_counter()
    try:
        return original(*args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - start
app.train = train
def save():
    with open(os.path.join(os.environ["BPEXP_TRAIN_TIMES"], f"{os.getpid()}.txt"), "w") as f:
        f.write(str(spent[0]))
atexit.register(save)
sys.argv = ["bpexp", *sys.argv[1:]]
from bpexp.__main__ import main
main()
"""


def run(extra: list[str]) -> tuple[float, float, int]:
    """(seconds, seconds in the trainer, runs) of one main job in a fresh folder and store."""
    with tempfile.TemporaryDirectory() as folder:
        times = Path(folder) / "train-times"
        times.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BPEXP_"))}
        env["BPEXP_TRAIN_TIMES"] = str(times)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", TIMED_MAIN, *MAIN_JOB, *extra],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"bpexp {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
        trained = sum(float(p.read_text() or 0) for p in times.glob("*.txt"))
        results = list(Path(folder).glob("multirun/*/*/results/*.json"))
        runs = sum(json.loads(p.read_text())["outcome"] != "invalid" for p in results)
        return elapsed, trained, runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="tracked,tracked-writer,untracked")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    names = args.variants.split(",")
    head = f"bench_main_job: {source_line()}, {args.rounds} rounds, python -m bpexp {MAIN_JOB[0]}"
    lines = [head, f"machine: {machine()}"]
    print("\n".join(lines), flush=True)
    times: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t, trained, runs = run(VARIANTS[name])
            times[name].append((t, trained, runs))
            print(
                f"round {r + 1} {name:17s} {t:7.1f} s, trainer {trained:6.1f} s ({runs} runs)",
                flush=True,
            )
    median = {name: statistics.median(t for t, _, _ in ts) for name, ts in times.items()}
    for name, ts in times.items():
        share = statistics.median(trained / t for t, trained, _ in ts)
        lines.append(
            f"{name:17s} median {median[name]:7.1f} s  ({', '.join(f'{t:.1f}' for t, _, _ in ts)})"
            + (f"  training share {share:.0%}" if share else "  (trainer in joblib's workers)")
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
    print("\n".join(lines[2:]))
    if args.save:
        (ROOT / "benchmarks" / "results-main-job.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
