"""Loading Fashion-MNIST: the first time (decode the IDX files) against later loads (the cache).

    python benchmarks/bench_load.py [--repeats 3]

Each load is a fresh process that imports bpexp and times ``load_dataset("fashion_mnist")``
(float64, the split of bench_core's real-data row), so no array is left in memory from an
earlier load. The cache is a new temporary ``data.cache_dir``: the first load decodes the four
IDX files from Debian's folder and writes each as ``.npy`` there; the later ones check the
sources' sha256 and memory-map the ``.npy`` files. Needs ``apt-get install
dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

from bench_sweep import source_line  # same folder: python benchmarks/bench_load.py

CHILD = r"""
import sys, time
from bpexp.data import load_dataset
start = time.perf_counter()
data = load_dataset("fashion_mnist", val_fraction=1 / 6, seed=0, cache_dir=sys.argv[1])
print(time.perf_counter() - start, data.X_train.shape[0])
"""


def load_seconds(cache_dir: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, cache_dir], capture_output=True, text=True, check=True
    ).stdout
    return float(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from bpexp.datafiles import SYSTEM_FOLDERS

    if not (SYSTEM_FOLDERS["fashion_mnist"] / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit("needs Fashion-MNIST: apt-get install -y dataset-fashion-mnist")
    print(f"bench_load: {source_line()}")
    with tempfile.TemporaryDirectory() as cache:
        first = load_seconds(cache)
        later = [load_seconds(cache) for _ in range(args.repeats)]
    print(f"first load (decode, write the .npy cache): {first:.2f} s")
    print(
        f"later loads (sha256 of the sources, memory-mapped .npy): median "
        f"{statistics.median(later):.2f} s ({', '.join(f'{t:.2f}' for t in later)})"
    )


if __name__ == "__main__":
    main()
