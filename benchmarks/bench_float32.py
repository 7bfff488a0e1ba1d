"""Float32 against float64 on Fashion-MNIST: test accuracy per seed, and time per epoch.

    python benchmarks/bench_float32.py [--epochs 30] [--seeds 0,1,2] [--save]

The setting of bench_core's real-data row (784-100-10 ReLU, softmax cross-entropy, Xavier,
classical momentum β 0.9 at η 0.01, batch 50, shuffled every epoch, instruments and tracking
off), run through ``bpexp.run`` once per dtype and seed, the two dtypes alternated. Two runs
that differ only in their dtype start from the same weights and see the same batches; after a
few thousand steps their rounding errors have sent them down different paths, so the per-seed
gap is partly seed-to-seed noise: the mean gap over seeds is the figure to read (issue target:
within 0.3 points). Results go to benchmarks/results-float32.txt with ``--save``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench_core import REAL_BATCH, REAL_LR, real_bpexp  # same folder: python benchmarks/...
from bench_sweep import source_line

from bpexp.datafiles import SYSTEM_FOLDERS

ROOT = Path(__file__).resolve().parent.parent


def one_run(dtype: str, seed: int, epochs: int) -> tuple[float, float]:
    """(test accuracy, median seconds an epoch) of one run: bench_core's real-data bpexp run."""
    seconds, accuracy = real_bpexp(epochs, dtype, seed=seed)()
    return accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    if not (SYSTEM_FOLDERS["fashion_mnist"] / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit("needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [
        f"bench_float32: {source_line()}",
        f"Fashion-MNIST 784-100-10 b{REAL_BATCH} momentum lr {REAL_LR}, {args.epochs} epochs",
        "seed  acc f64  acc f32  f32 - f64 (points)  s/epoch f64  s/epoch f32",
    ]
    print("\n".join(lines), flush=True)
    gaps, ratios = [], []
    for i, seed in enumerate(seeds):
        order = ["float64", "float32"] if i % 2 == 0 else ["float32", "float64"]
        got = {dtype: one_run(dtype, seed, args.epochs) for dtype in order}
        (a64, t64), (a32, t32) = got["float64"], got["float32"]
        gaps.append(100 * (a32 - a64))
        ratios.append(t32 / t64)
        lines.append(
            f"{seed:4d}  {a64:.4f}   {a32:.4f}   {gaps[-1]:+18.2f}  {t64:11.3f}  {t32:11.3f}"
        )
        print(lines[-1], flush=True)
    lines += [
        f"mean gap f32 - f64: {statistics.mean(gaps):+.2f} points "
        f"(per seed {', '.join(f'{g:+.2f}' for g in gaps)}); target |mean| <= 0.3",
        f"f32 / f64 time an epoch: {statistics.median(ratios):.3f} (median over seeds)",
    ]
    print("\n".join(lines[-2:]), flush=True)
    if args.save:
        (ROOT / "benchmarks" / "results-float32.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
