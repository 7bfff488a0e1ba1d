"""Nielsen's reproduction table measured on MNIST: every published figure next to bpexp's.

    python benchmarks/reproduce_book.py --data-path DIR [--jobs 2] [--rows ch1,ch3_ce] [--no-save]

``DIR`` is a folder holding the four MNIST IDX files (``train-images-idx3-ubyte`` ...,
gzipped or not). The split is the book's: 50,000 training images, 10,000 validation images
(``data.val_fraction``'s default keeps 10,000 of the 60,000), and the 10,000 test images.

Each row is run with ``bpexp.run([...overrides..., "seed=S", "tracking.enabled=false",
"trainer.instruments=false", "trainer.sharpness_every=0"])`` on seeds 0, 1, 2; instruments and
sharpness only add measurements (they draw from their own random streams, bpexp.rng), so the
accuracies are those of the printed command. Reported, mean ± 95% CI (Student t) over seeds:

- ``best val``: the highest val/accuracy over the epochs (the book's ch. 1 figure is a peak
  epoch), with the epochs at which it was reached;
- ``final val``: val/accuracy after the last epoch;
- ``test``: test/accuracy after the last epoch (bpexp evaluates the test set once, at the end).

The ch. 5 row reads ‖∂C/∂b^l‖ at initialisation (``grad_norm/b1..b3`` at step 0 of the
history, instruments on) on 10 seeds. The seeds' 784→10 network first has its lr tuned on a
log grid with seed 0 (30 epochs each, by final val/accuracy), then is run at that lr on seeds
0, 1, 2.

``--book-split`` validates on the last 10,000 images of the training file and trains on the
first 50,000, as the book's ``mnist.pkl.gz`` does, instead of bpexp's split (10,000 drawn at
random per seed); the test set, the initial weights and the batch order are unchanged. bpexp
has no config key for a fixed split, so the script swaps the data loader of ``bpexp.app`` in
its workers: these rows have no one-line command. Results go to
benchmarks/results-book-mnist-book-split.txt.

``--jobs N`` runs the (row, seed) runs in N worker processes, each limited to one BLAS thread
(threadpoolctl). The table (Markdown, with each row's command) is printed and, unless
``--no-save``, written with the commit measured to benchmarks/results-book-mnist.txt.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results-book-mnist.txt"
RESULTS_BOOK_SPLIT = ROOT / "benchmarks" / "results-book-mnist-book-split.txt"
SEEDS = (0, 1, 2)
GRAD_SEEDS = tuple(range(10))
# The seeds' network: tuned on this log grid with seed 0, by final val/accuracy after 30 epochs.
SEEDS_NET_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SEEDS_NET = ["network.hidden=[]", "network.init=uniform"]
# Added to every run: they change nothing the table reads (see the module docstring).
QUIET = ["tracking.enabled=false", "trainer.instruments=false", "trainer.sharpness_every=0"]


@dataclass(frozen=True)
class Row:
    key: str
    book: str
    setting: str
    published: str
    overrides: tuple[str, ...]
    kind: str = "accuracy"  # "accuracy", "grad_norm" or "tuned"
    seeds: tuple[int, ...] = SEEDS
    values: tuple[float, ...] = field(default=())  # published numbers, to compare


ROWS = (
    Row(
        "ch1",
        "ch. 1",
        "784-30-10, quadratic, η = 3, batch 10, 30 epochs",
        "95.42%",
        (),
        values=(0.9542,),
    ),
    Row(
        "ch1_100",
        "ch. 1",
        "784-100-10, quadratic, η = 3",
        "96.59%",
        ("network.hidden=[100]",),
        values=(0.9659,),
    ),
    Row(
        "ch3_ce",
        "ch. 3",
        "cross-entropy, η = 0.5",
        "95.49%",
        ("cost=cross_entropy", "optimizer.lr=0.5"),
        values=(0.9549,),
    ),
    Row(
        "ch3_ce_100",
        "ch. 3",
        "cross-entropy, η = 0.5, 100 hidden",
        "96.82%",
        ("cost=cross_entropy", "optimizer.lr=0.5", "network.hidden=[100]"),
        values=(0.9682,),
    ),
    Row(
        "ch3_l2",
        "ch. 3",
        "cross-entropy, η = 0.5, λ = 5.0",
        "96.49%",
        ("cost=cross_entropy", "optimizer.lr=0.5", "optimizer.weight_decay=5.0"),
        values=(0.9649,),
    ),
    Row(
        "ch3_l2_100",
        "ch. 3",
        "cross-entropy, η = 0.5, λ = 5.0, 100 hidden",
        "97.92%",
        (
            "cost=cross_entropy",
            "optimizer.lr=0.5",
            "optimizer.weight_decay=5.0",
            "network.hidden=[100]",
        ),
        values=(0.9792,),
    ),
    Row(
        "ch3_l2_100_60",
        "ch. 3",
        "cross-entropy, η = 0.1, λ = 5.0, 100 hidden, 60 epochs",
        "98.04%",
        (
            "cost=cross_entropy",
            "optimizer.lr=0.1",
            "optimizer.weight_decay=5.0",
            "network.hidden=[100]",
            "trainer.epochs=60",
        ),
        values=(0.9804,),
    ),
    Row(
        "ch5",
        "ch. 5",
        "‖∂C/∂b^l‖ per hidden layer at initialisation, 784-30-30-30-10, "
        "N(0, 1/n_in), cross-entropy, 1,000 training images",
        "0.012, 0.060, 0.283",
        (
            "network=deep_sigmoid",
            "cost=cross_entropy",
            "trainer.probe_size=1000",
            "trainer.epochs=1",
        ),
        kind="grad_norm",
        seeds=GRAD_SEEDS,
        values=(0.012, 0.060, 0.283),
    ),
    Row(
        "seeds_net",
        "seeds",
        "784-10 (no hidden layer), U[−1, 1], quadratic, batch 10, 30 epochs, lr tuned",
        "—",
        tuple(SEEDS_NET),
        kind="tuned",
    ),
)


def data_overrides(data_path: str) -> list[str]:
    return ["data=mnist", f"data.path={data_path}"]


def command(row: Row, lr: float | None = None, extra: tuple[str, ...] = ()) -> str:
    """The command that reproduces one seed of ``row`` (``DIR``: the user's folder)."""
    overrides = [*row.overrides, *extra]
    if lr is not None:
        overrides.append(f"optimizer.lr={lr:g}")
    shown = [f"'{o}'" if "[" in o else o for o in overrides]
    return " ".join(["python -m bpexp data=mnist data.path=DIR", *shown, "seed=S"])


# --- one run, in a worker process ------------------------------------------------------------


_LIMITS = None  # a worker's threadpoolctl limiter, kept alive for the life of the worker


def _one_blas_thread() -> None:
    # threadpoolctl limits the libraries loaded when it is called: load NumPy's BLAS first.
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_limits

    global _LIMITS
    _LIMITS = threadpool_limits(limits=1)


def blas_threads() -> list[int]:
    """The thread counts of the BLAS libraries loaded in this process (1 each in a worker)."""
    from threadpoolctl import threadpool_info

    return [int(info["num_threads"]) for info in threadpool_info()]


def use_book_split() -> None:
    """From now on in this process, ``bpexp.run`` on MNIST validates on the last 10,000
    training images and trains on the first 50,000 (the book's split), in file order."""
    import bpexp.app
    from bpexp.data import Dataset, load_dataset

    def book_split(name: str, **kwargs) -> Dataset:
        drawn = load_dataset(name, **kwargs)
        if name != "mnist":
            return drawn
        # val_fraction 0: the whole training file in its order, then cut off its tail.
        whole = load_dataset(name, **{**kwargs, "val_fraction": 0.0})
        n_val = len(drawn.X_val)
        return Dataset(
            name=name,
            X_train=whole.X_train[:-n_val],
            Y_train=whole.Y_train[:-n_val],
            X_val=whole.X_train[-n_val:],
            Y_val=whole.Y_train[-n_val:],
            X_test=whole.X_test,
            Y_test=whole.Y_test,
            task=whole.task,
        )

    bpexp.app.load_dataset = book_split


def one_run(overrides: list[str], kind: str, book_split: bool = False) -> dict[str, float]:
    """Train once with ``overrides``; the numbers the table reads."""
    import bpexp

    if book_split:
        use_book_split()
    start = time.perf_counter()
    quiet = QUIET if kind != "grad_norm" else ["tracking.enabled=false"]
    result = bpexp.run([*overrides, *quiet])
    seconds = time.perf_counter() - start
    history = result.history
    if kind == "grad_norm":
        first = history.loc[0]
        return {f"b{l}": float(first[f"grad_norm/b{l}"]) for l in (1, 2, 3)} | {"s": seconds}
    val = history["val/accuracy"].iloc[1:]  # epoch 0 is the untrained network
    return {
        "best_val": float(val.max()),
        "best_epoch": int(val.idxmax()),
        "final_val": float(val.iloc[-1]),
        "test": float(result.metrics["test/accuracy"]),
        "epochs": len(val),
        "s": seconds,
    }


# --- the table ---------------------------------------------------------------------------------


def mean_ci(values: list[float]) -> tuple[float, float]:
    from bpexp.statistics import mean_std_ci

    mean, _, half = mean_std_ci(values)
    return mean, half


def pct(values: list[float]) -> str:
    mean, half = mean_ci(values)
    return f"{100 * mean:.2f} ± {100 * half:.2f}%" if not math.isnan(half) else f"{100 * mean:.2f}%"


def accuracy_line(row: Row, runs: dict, lr: float | None, extra: tuple[str, ...]) -> str:
    """One Markdown row: book, setting, published, best val, final val, test, command."""
    ordered = [runs[(row.key, s)] for s in row.seeds]
    epochs = ", ".join(str(r["best_epoch"]) for r in ordered)
    setting = row.setting + (f" (lr {lr:g}, tuned on seed 0)" if lr is not None else "")
    return (
        f"| {row.book} | {setting} | {row.published} "
        f"| {pct([r['best_val'] for r in ordered])} ({epochs}) "
        f"| {pct([r['final_val'] for r in ordered])} | {pct([r['test'] for r in ordered])} "
        f"| `{command(row, lr, extra)}` |"
    )


def grad_norm_lines(row: Row, runs: dict, extra: tuple[str, ...]) -> list[str]:
    """A small Markdown table of ‖∂C/∂b^l‖ per layer: published, and bpexp's mean ± CI."""
    measured = []
    for l in (1, 2, 3):
        mean, half = mean_ci([runs[(row.key, s)][f"b{l}"] for s in row.seeds])
        measured.append(f"{mean:.4f} ± {half:.4f}")
    return [
        f"{row.book}: {row.setting}; bpexp: mean ± 95% CI over seeds "
        f"{row.seeds[0]}-{row.seeds[-1]}, grad_norm/b1..b3 at step 0 of the history",
        "",
        "| | layer 1 | layer 2 | layer 3 |",
        "|---|---|---|---|",
        "| book | " + " | ".join(f"{v:.3f}" for v in row.values) + " |",
        "| bpexp | " + " | ".join(measured) + " |",
        "",
        f"command (one seed; S = 0..9): `{command(row, None, extra)}`",
    ]


HEADER = [
    "| book | setting | published | bpexp best val (epoch of best, per seed) | bpexp final val "
    "| bpexp test (final epoch) | command (one seed; S = 0, 1, 2) |",
    "|---|---|---|---|---|---|---|",
]


def per_run_lines(rows: list[Row], results: dict, tuning: dict[float, dict]) -> list[str]:
    lines = ["", "Per run (seconds are wall time in a worker with one BLAS thread):"]
    for row in rows:
        for seed in row.seeds:
            r = results.get((row.key, seed))
            if r is None:
                continue
            if row.kind == "grad_norm":
                lines.append(
                    f"{row.key:14s} seed {seed}: b1 {r['b1']:.5f}  b2 {r['b2']:.5f}  "
                    f"b3 {r['b3']:.5f}  ({r['s']:.0f} s)"
                )
            else:
                lines.append(
                    f"{row.key:14s} seed {seed}: best val {r['best_val']:.4f} at epoch "
                    f"{r['best_epoch']:2d}/{r['epochs']}  final val {r['final_val']:.4f}  "
                    f"test {r['test']:.4f}  ({r['s']:.0f} s)"
                )
    if tuning:
        lines.append("seeds_net lr tuning, seed 0, 30 epochs (final val/accuracy, best val):")
        for lr, r in sorted(tuning.items()):
            lines.append(
                f"  lr {lr:<6g} final val {r['final_val']:.4f}  best val {r['best_val']:.4f}  "
                f"test {r['test']:.4f}"
            )
    return lines


def commit_line() -> str:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return ""
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    changed = git("status", "--porcelain", "--", "bpexp", "conf")
    state = f"uncommitted changes under bpexp/ or conf/: {changed!r}" if changed else "clean"
    return f"commit {head} (training code {state})"


# --- the schedule --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", required=True, help="folder of the four MNIST IDX files")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one BLAS thread)")
    parser.add_argument("--rows", default="", help="comma-separated row keys (default: all)")
    parser.add_argument(
        "--extra",
        default="",
        help="space-separated overrides added to every run (a quick look: "
        "'data.n_samples=5000 trainer.epochs=2'); shown in the commands",
    )
    parser.add_argument(
        "--book-split",
        action="store_true",
        help="validate on the last 10,000 training images, as the book (no one-line command)",
    )
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    extra = tuple(args.extra.split())
    wanted = set(filter(None, args.rows.split(",")))
    rows = [r for r in ROWS if not wanted or r.key in wanted]
    data = data_overrides(str(Path(args.data_path).expanduser().resolve()))

    # Decode the IDX files into the cache once, before the workers read it.
    from bpexp.data import load_dataset

    load_dataset("mnist", path=data[1].split("=", 1)[1], val_fraction=1 / 6)
    started = time.perf_counter()
    print(f"reproduce_book: {commit_line()}, {args.jobs} jobs", flush=True)

    results: dict[tuple[str, int], dict] = {}
    tuning: dict[float, dict] = {}
    chosen: float | None = None
    pending: dict[Future, tuple[str, object]] = {}
    context = get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_one_blas_thread) as pool:
        threads = pool.submit(blas_threads).result()
        print(f"BLAS threads in a worker: {threads}", flush=True)
        if any(n != 1 for n in threads):
            raise SystemExit(f"a worker runs {threads} BLAS threads, not 1")

        def submit(tag: tuple[str, object], overrides: list[str], kind: str) -> None:
            overrides = [*data, *overrides, *extra]
            pending[pool.submit(one_run, overrides, kind, args.book_split)] = tag

        tuned = [r for r in rows if r.kind == "tuned"]
        for row in tuned:
            for lr in SEEDS_NET_GRID:
                submit(("tune", lr), [*row.overrides, f"optimizer.lr={lr:g}", "seed=0"], "tuned")
        # Longest runs first, so that the last ones to finish are short.
        cost = {"ch3_l2_100_60": 4, "ch1_100": 2, "ch3_ce_100": 2, "ch3_l2_100": 2}
        trained = sorted((r for r in rows if r.kind != "tuned"), key=lambda r: -cost.get(r.key, 1))
        for row in trained:
            for seed in row.seeds:
                submit((row.key, seed), [*row.overrides, f"seed={seed}"], row.kind)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                tag = pending.pop(future)
                result = future.result()
                elapsed = time.perf_counter() - started
                print(f"[{elapsed:6.0f} s] {tag}: {result}", flush=True)
                if tag[0] == "tune":
                    tuning[tag[1]] = result
                    if len(tuning) == len(SEEDS_NET_GRID) and tuned:
                        chosen = max(tuning, key=lambda lr: tuning[lr]["final_val"])
                        print(f"seeds_net: lr {chosen:g} chosen on seed 0", flush=True)
                        for seed in tuned[0].seeds:
                            submit(
                                ("seeds_net", seed),
                                [*tuned[0].overrides, f"optimizer.lr={chosen:g}", f"seed={seed}"],
                                "tuned",
                            )
                else:
                    results[tag] = result

    minutes = (time.perf_counter() - started) / 60
    grad_rows = [r for r in rows if r.kind == "grad_norm"]
    lines = [
        f"reproduce_book: {commit_line()}",
        f"python benchmarks/reproduce_book.py --data-path DIR --jobs {args.jobs}"
        + (f" --rows {args.rows}" if args.rows else "")
        + (" --book-split" if args.book_split else "")
        + (f" --extra '{args.extra}'" if args.extra else "")
        + f": {minutes:.1f} min wall clock",
        "MNIST, 50,000 train / 10,000 val / 10,000 test; mean ± 95% CI (Student t) over seeds",
        "validation: the last 10,000 training images, the book's split (--book-split: the "
        "commands below plus that split, which has no config key)"
        if args.book_split
        else "validation: 10,000 training images drawn at random per seed (bpexp's split)",
        "",
        *HEADER,
        *(
            accuracy_line(r, results, chosen if r.kind == "tuned" else None, extra)
            for r in rows
            if r.kind != "grad_norm"
        ),
        "",
        *(line for r in grad_rows for line in grad_norm_lines(r, results, extra)),
        *per_run_lines(rows, results, tuning),
    ]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if not args.no_save:
        out = RESULTS_BOOK_SPLIT if args.book_split else RESULTS
        out.write_text(text)
        print(f"written to {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
