"""Peak memory of a run against the size of its training set, for digits and Fashion-MNIST.

Run ``python benchmarks/bench_memory.py`` (about a minute; Fashion-MNIST rows need Debian's
``dataset-fashion-mnist`` and are skipped without it). Each case is a fresh process that
imports bpexp, composes its config (tracking off), notes its resident memory, then runs
``bpexp.app.execute`` and reads the peak resident memory (``VmHWM``) at the end. The run's own
memory is the peak minus what the process held before loading the data; it is printed as a
multiple of the training set's inputs in the run's dtype (``X_train.nbytes``).
"""

import json
import subprocess
import sys

from bench_sweep import source_line  # same folder: python benchmarks/bench_memory.py

CASES = [
    ("digits", "float64", ["data=digits"]),
    ("digits", "float32", ["data=digits"]),
    ("fashion_mnist", "float64", ["data=fashion_mnist", "network.hidden=[100]"]),
    ("fashion_mnist", "float32", ["data=fashion_mnist", "network.hidden=[100]"]),
]
COMMON = [
    "network.activation=relu",
    "network.output_activation=softmax",
    "network.init=xavier",
    "cost=softmax_cross_entropy",
    "optimizer=momentum",
    "optimizer.lr=0.01",
    "trainer.batch_size=50",
    "trainer.epochs=2",
    "tracking.enabled=false",
]

CHILD = r"""
import json, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from bpexp.app import compose, execute, build
import sklearn.datasets  # the digits loader's import, outside the run's own memory
cfg = compose(json.loads(sys.argv[1]))
before = status("VmRSS:")
result = execute(cfg, echo=False)
peak = status("VmHWM:")
n_train = build(cfg).data.X_train.nbytes
print(json.dumps({"before": before, "peak": peak, "train": n_train,
                  "accuracy": result.metrics["test/accuracy"]}))
"""


def main() -> None:
    from bpexp.datafiles import SYSTEM_FOLDERS

    has_fashion = (SYSTEM_FOLDERS["fashion_mnist"] / "train-images-idx3-ubyte.gz").is_file()
    print(f"bench_memory: peak resident memory of a run (2 epochs, tracking off); {source_line()}")
    header = f"{'data':14} {'dtype':8} {'X_train MB':>10} {'before MB':>9} {'peak MB':>8} "
    print(header + f"{'run MB':>7} {'run / X_train':>13}")
    for name, dtype, overrides in CASES:
        if name == "fashion_mnist" and not has_fashion:
            print(f"{name:14} {dtype:8} skipped: apt-get install dataset-fashion-mnist")
            continue
        args = [*overrides, *COMMON, f"trainer.dtype={dtype}"]
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        m = json.loads(out.strip().splitlines()[-1])
        run = m["peak"] - m["before"]
        mb = 1 << 20
        print(
            f"{name:14} {dtype:8} {m['train'] / mb:10.1f} {m['before'] / mb:9.0f} "
            f"{m['peak'] / mb:8.0f} {run / mb:7.0f} {run / m['train']:13.2f}"
        )


if __name__ == "__main__":
    main()
