"""The main job's wall time, tracked and untracked, side by side.

    python benchmarks/bench_main_job.py [--rounds 2] [--variants tracked,untracked,plots]

Runs ``python -m bpexp sweep=optimizers`` (the tune-then-confirm protocol: 3 arms x 15 lrs x
2 tuning seeds + 3 x 10 confirm seeds = 120 runs, sequential, basic launcher) in a fresh folder
per run, alternating the variants within each round so that a noisy machine hits them alike:

- ``tracked``: the default (SQLite store in the folder, no per-run PNGs);
- ``untracked``: ``tracking.enabled=false``;
- ``plots``: ``tracking.plots=true`` (the three per-run PNGs drawn and logged).

Prints each time, the median per variant and the ratios to ``untracked`` (issue targets: the
main job within 3 minutes; tracked <= 1.25 x untracked). The commit measured is printed first;
results go to benchmarks/results-main-job.txt when ``--save`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench_sweep import cli, source_line  # same folder: python benchmarks/bench_main_job.py

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "tracked": [],
    "untracked": ["tracking.enabled=false"],
    "plots": ["tracking.plots=true"],
}


def run(extra: list[str]) -> float:
    """Seconds of one main job in a fresh folder (so a fresh store)."""
    with tempfile.TemporaryDirectory() as folder:
        return cli(["sweep=optimizers", *extra], Path(folder))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="tracked,untracked,plots")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    names = args.variants.split(",")
    lines = [
        f"bench_main_job: {source_line()}, {args.rounds} rounds, python -m bpexp sweep=optimizers"
    ]
    print(lines[0], flush=True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t = run(VARIANTS[name])
            times[name].append(t)
            print(f"round {r + 1} {name:10s} {t:7.1f} s", flush=True)
    lines += [
        f"{name:10s} median {statistics.median(ts):7.1f} s  ({', '.join(f'{t:.1f}' for t in ts)})"
        for name, ts in times.items()
    ]
    if "untracked" in times:
        base = statistics.median(times["untracked"])
        lines += [
            f"{name} / untracked = {statistics.median(ts) / base:.3f}"
            for name, ts in times.items()
            if name != "untracked"
        ]
    print("\n".join(lines[1:]))
    if args.save:
        (ROOT / "benchmarks" / "results-main-job.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
