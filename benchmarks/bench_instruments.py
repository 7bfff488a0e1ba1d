"""What each instrument group costs: its share of a digits run and of a Fashion-MNIST epoch.

    python benchmarks/bench_instruments.py [--rounds 7] [--real-rounds 3] [--save]

Part 1, digits (the default experiment: 64-30-10 sigmoid, quadratic cost, SGD η = 3, batch 10,
30 epochs, probe 256). Whole runs through ``bpexp.trainer.train``, one per variant and round,
the variants in an order that rotates every round. ``off`` has every instrument off
(``trainer.instruments=false``, ``sharpness_every=0`` and the new keys 0); each other variant
turns one group on. A group's share is the median over rounds of its increment over its
reference variant within the round, over that round's ``off`` run: ``off`` for most,
``instruments`` for the gradient tests and α (they run only with ``instruments``). The Hessian
groups run at every epoch (31 measurements), which gives one measurement's cost in epochs.
A whole digits run lasts half a second, so on a busy machine these shares carry a few
percent of noise; parts 2 and 3 time the same work more finely.

Parts 2 and 3, one epoch of digits and of Fashion-MNIST (``data=fashion_mnist`` with the default
network and trainer: 784-30-10 sigmoid, batch 10, 50,000 training rows, probe 256). The
per-epoch work of each group is timed through the functions the trainer calls (each repeated
until 0.1 s have passed on digits), alternated within each round with one training epoch
(``train_epoch``, no metrics), and given as a share of that epoch (median over rounds).
Fashion-MNIST comes from /usr/share/datasets/fashion-mnist (Debian's ``dataset-fashion-mnist``);
without it, MNIST stands in when ``--mnist-path DIR`` names a folder with its four IDX files
(the same shapes, so the same arithmetic), and the output says so; with neither, part 3 is
skipped.

One thread everywhere (set before NumPy is imported). Prints a table; ``--save`` writes it with
the commit measured to benchmarks/results-instruments.txt. Nothing is asserted.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

if importlib.util.find_spec("bpexp") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bpexp import curvature, instruments  # noqa: E402
from bpexp.app import build, compose  # noqa: E402
from bpexp.datafiles import SYSTEM_FOLDERS  # noqa: E402
from bpexp.optimizer import sharpness_threshold  # noqa: E402
from bpexp.rng import stream  # noqa: E402
from bpexp.trainer import train, train_epoch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NEW_OFF = [
    "trainer.gradient_tests_every=0",
    "trainer.alpha_every=0",
    "trainer.trace_every=0",
    "trainer.top_k_every=0",
    "trainer.spectrum_every=0",
]
OFF = ["trainer.instruments=false", "trainer.sharpness_every=0", *NEW_OFF]
INSTR = ["trainer.instruments=true", "trainer.sharpness_every=0", *NEW_OFF]
# name: (overrides after the defaults, reference variant for the group's increment, what)
VARIANTS: dict[str, tuple[list[str], str | None, str]] = {
    "off": (OFF, None, "no instrument, no sharpness"),
    "instruments": (INSTR, "off", "per-layer probe instruments, noise scale, distances"),
    "gradient_tests": (
        [*INSTR, "trainer.gradient_tests_every=1"],
        "instruments",
        "norm/inner/ortho tests, probe + one batch, every epoch",
    ),
    "alpha": ([*INSTR, "trainer.alpha_every=1"], "instruments", "alpha, update_size, every epoch"),
    "sharpness_15": ([*OFF, "trainer.sharpness_every=15"], "off", "sharpness at 0, 15, 30"),
    "default": ([], "off", "the defaults: instruments, gradient tests, sharpness every 15"),
    "trace_1": ([*OFF, "trainer.trace_every=1"], "off", "Hutch++ trace, 30 H v, every epoch"),
    "top_k_1": ([*OFF, "trainer.top_k_every=1"], "off", "top-5 Lanczos, <=40 H v, every epoch"),
    "spectrum_1": ([*OFF, "trainer.spectrum_every=1"], "off", "SLQ 4 x 30 H v, every epoch"),
}


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


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores (load average {load}), Python "
        f"{platform.python_version()}, numpy {np.__version__}, 1 BLAS thread"
    )


# --- part 1: whole digits runs --------------------------------------------------------------


def digits_run(overrides: list[str]) -> tuple[float, int]:
    """Seconds of one 30-epoch digits run (training and every epoch's metrics; the data are
    loaded and the network built outside the clock), and the run's H v products."""
    exp = build(compose(["tracking.enabled=false", *overrides]))
    cfg = exp.cfg
    start = time.perf_counter()
    result = train(exp.net, cfg.optimizer, exp.cost, exp.data, cfg.trainer, cfg.seed)
    seconds = time.perf_counter() - start
    hvps = sum(
        int(h.get(k, 0) or 0)
        for h in result.history
        for k in ("hessian_trace_hvps", "hessian_top_hvps", "hessian_spectrum_hvps")
        if h.get(k) == h.get(k)  # not NaN
    )
    return seconds, hvps


def part_digits(rounds: int) -> list[str]:
    names = list(VARIANTS)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    hvps: dict[str, int] = {}
    digits_run(OFF)  # warm-up: imports, data cache, BLAS
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t, h = digits_run(VARIANTS[name][0])
            seconds[name].append(t)
            hvps[name] = h
        print(
            f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.2f}" for n in names),
            flush=True,
        )
    ratio = {
        n: statistics.median(a / b for a, b in zip(seconds[n], seconds["off"], strict=True))
        for n in names
    }

    def increment(name: str, reference: str) -> float:
        """Median over rounds of (variant − reference) / off, each within its round."""
        rows = zip(seconds[name], seconds[reference], seconds["off"], strict=True)
        return statistics.median((a - b) / c for a, b, c in rows)

    epoch_off = statistics.median(seconds["off"]) / 30
    lines = [
        f"Part 1: digits, 30-epoch default runs, {rounds} rounds; off = "
        f"{statistics.median(seconds['off']):.3f} s a run ({1000 * epoch_off:.1f} ms an epoch)",
        f"{'variant':<15} {'median s':>8} {'/ off':>6} {'share':>7} {'epochs/meas':>11} "
        f"{'H v':>6}  what",
        f"{'-' * 15} {'-' * 8} {'-' * 6} {'-' * 7} {'-' * 11} {'-' * 6}  {'-' * 30}",
    ]
    for n in names:
        overrides, reference, what = VARIANTS[n]
        share = per_measure = ""
        if reference is not None:
            added = increment(n, reference)
            share = f"{100 * added:+.1f}%"
            if n.endswith("_1") or n in ("gradient_tests", "alpha", "instruments"):
                # every epoch: 31 measurements; in training epochs of the off run
                per_measure = f"{added * 30 / 31:.3f}"
            elif n == "sharpness_15":
                per_measure = f"{added * 30 / 3:.3f}"
        lines.append(
            f"{n:<15} {statistics.median(seconds[n]):8.3f} {ratio[n]:6.3f} {share:>7} "
            f"{per_measure:>11} {hvps.get(n, 0) or '':>6}  {what}"
        )
    lines.append(
        "share: the median over rounds of the group's increment over its reference (off, or "
        "instruments for the tests and alpha), in % of that round's off run; epochs/meas: one "
        "measurement, in epochs of the off run."
    )
    return lines


# --- parts 2 and 3: one epoch --------------------------------------------------------------


def real_data(mnist_path: str | None) -> tuple[list[str] | None, str, str]:
    """(overrides, data set name, note) of part 3's data, or None when there are none."""
    if (SYSTEM_FOLDERS["fashion_mnist"] / "train-images-idx3-ubyte.gz").is_file():
        return ["data=fashion_mnist"], "Fashion-MNIST", "from /usr/share/datasets/fashion-mnist"
    missing = "Fashion-MNIST is not installed here (apt-get install dataset-fashion-mnist)"
    if mnist_path and any(Path(mnist_path).glob("train-images-idx3-ubyte*")):
        overrides = ["data=mnist", f"data.path={mnist_path}"]
        return overrides, "MNIST", f"{missing}: MNIST stands in (same shapes, same arithmetic)"
    return None, "", f"{missing} and no --mnist-path: part 3 skipped"


def per_call(fn: Callable[[], None], min_seconds: float) -> float:
    """Seconds per call of ``fn``, called until ``min_seconds`` have passed (once at least)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def part_epoch(
    title: str, overrides: list[str], name: str, note: str, rounds: int, min_seconds: float
) -> list[str]:
    """Each group's per-epoch work against one training epoch, timed side by side."""
    exp = build(compose(["tracking.enabled=false", *overrides]))
    cfg, net, cost, data = exp.cfg.trainer, exp.net, exp.cost, exp.data
    opt = exp.cfg.optimizer
    X, Y = data.X_train, data.Y_train
    n, m = X.shape[0], cfg.batch_size
    probe = np.sort(stream(0, "probe").permutation(n)[: cfg.probe_size])
    Xp, Yp = X[probe], Y[probe]
    state = opt.init(net.params)
    after_first = np.empty_like(net.params)
    order = np.random.default_rng(0).permutation(n)
    init = net.params.copy()
    before: list[np.ndarray] = [net.params.copy()]
    rng = np.random.default_rng(1)

    def epoch() -> None:
        before[0] = net.params.copy()
        train_epoch(net, opt, state, cost, X, Y, m, order=order, first_step=after_first)

    def per_layer() -> None:
        instruments.measure(net, Xp, Yp, cost, cfg.saturation_epsilon)
        instruments.gradient_noise(net, Xp)
        instruments.distances_from_init(net, init)
        instruments.update_ratios(net, before[0])

    def tests() -> None:  # the probe's part reads the backprop of `measure` (not timed here)
        instruments.gradient_tests(net, Xp, "probe")
        rows = rng.choice(n, m, replace=False)
        net.backprop(X[rows], Y[rows], cost)
        instruments.gradient_tests(net, X[rows], "batch")

    def alpha() -> None:
        # The trainer's work: keep a snapshot of the epoch-end probe backprop (the start of the
        # next epoch's first step), then one probe backprop at the first step's end. (Timed on
        # whatever the probe buffers hold: the same arithmetic.)
        kept = instruments.snapshot(net, Xp, Yp, cost, copy=True)
        instruments.step_alpha(net, Xp, Yp, cost, before[0], after_first, kept, None)

    def hessian(what: str) -> Callable[[], None]:
        def measure() -> None:
            H = curvature.HessianOperator(net, Xp, Yp, cost)
            start = rng.standard_normal(H.size)
            if what == "sharpness":
                curvature.sharpness_metrics(
                    net, Xp, Yp, cost, start, cfg.sharpness_iterations, sharpness_threshold(opt)
                )
            elif what == "trace":
                curvature.hutch_plus_plus(H, H.size, cfg.trace_hvps, rng)
            elif what == "top_k":
                curvature.top_eigenvalues(H, start, cfg.top_k, cfg.top_k_iterations)
            else:
                curvature.spectral_density(
                    H, H.size, cfg.spectrum_steps, cfg.spectrum_probes, rng, cfg.spectrum_sigma
                )

        return measure

    groups: dict[str, tuple[Callable[[], None], str]] = {
        "instruments": (per_layer, "per-layer probe instruments (existing), one epoch's worth"),
        "gradient_tests": (tests, "probe (on measure's backprop) and one batch backprop"),
        "alpha": (alpha, "snapshot + step_alpha: one probe backprop"),
        "sharpness": (hessian("sharpness"), f"<= {cfg.sharpness_iterations} H v"),
        "trace": (hessian("trace"), f"Hutch++, {cfg.trace_hvps} H v"),
        "top_k": (hessian("top_k"), f"top-{cfg.top_k}, <= {cfg.top_k_iterations} H v"),
        "spectrum": (
            hessian("spectrum"),
            f"SLQ {cfg.spectrum_probes} x {cfg.spectrum_steps} H v",
        ),
    }
    epoch()  # warm-up and a trained state to measure
    names = ["epoch", *groups]
    seconds: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order_names = names[r % len(names) :] + names[: r % len(names)]
        for k in order_names:
            fn = epoch if k == "epoch" else groups[k][0]
            seconds[k].append(per_call(fn, min_seconds))
        print(f"{name} round {r + 1}/{rounds}: epoch {seconds['epoch'][-1]:.3f} s", flush=True)
    lines = [
        f"{title}: one {name} epoch ({n} training rows, {exp.net.sizes}, batch {m}, probe "
        f"{cfg.probe_size}){note}; {rounds} rounds; a training epoch (no metrics) = "
        f"{statistics.median(seconds['epoch']):.4f} s",
        f"{'group':<15} {'median s':>8} {'share of an epoch':>17}  what",
        f"{'-' * 15} {'-' * 8} {'-' * 17}  {'-' * 30}",
    ]
    for k in groups:
        share = statistics.median(a / b for a, b in zip(seconds[k], seconds["epoch"], strict=True))
        lines.append(
            f"{k:<15} {statistics.median(seconds[k]):8.4f} {100 * share:16.2f}%  {groups[k][1]}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--real-rounds", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--mnist-path", help="a folder with MNIST's IDX files, to stand in")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    header = [
        "bench_instruments: the share of a run taken by each instrument group (issue 26)",
        f"machine: {machine()}",
        source_line(),
    ]
    print("\n".join(header), flush=True)
    start = time.perf_counter()
    lines = part_digits(args.rounds)
    lines += [""] + part_epoch("Part 2", [], "digits", "", args.rounds, 0.1)
    overrides, name, note = real_data(args.mnist_path)
    if args.skip_real:
        lines += ["", "Part 3: skipped (--skip-real)"]
    elif overrides is None:
        lines += ["", "Part 3: " + note]
    else:
        lines += [""] + part_epoch("Part 3", overrides, name, "; " + note, args.real_rounds, 0.0)
    lines.append(f"wall time {time.perf_counter() - start:.0f} s")
    print("\n" + "\n".join(lines))
    if args.save:
        out = ROOT / "benchmarks" / "results-instruments.txt"
        out.write_text("\n".join([*header, "", *lines]) + "\n")
        print(f"written: {out}")


if __name__ == "__main__":
    main()
