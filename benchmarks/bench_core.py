"""Speed of the bpexp NumPy core, as ratios to other trainers timed side by side in one run.

Run ``python benchmarks/bench_core.py`` (about 3-5 minutes) or ``--quick`` (under a minute).
Everything runs on one thread. Contenders are interleaved round by round (the order rotates
every round) and each ratio is the median over rounds of the ratio within a round, so a noisy,
shared machine shifts both sides of a ratio together. Nothing is asserted: each ratio is printed
with its target and PASS or MISS (see benchmarks/README.md for what each one means).

Contenders, all on the same data, network, initial weights and batch order (no shuffle),
sigmoid hidden and output units, quadratic cost C = 1/(2m) Σ_x ||a(x) − y(x)||², classical
momentum (β = 0.9, η = 0.1):
- ``bpexp``: :func:`bpexp.trainer.train_epoch` (no instruments, no per-step loss);
- ``torch``: PyTorch eager, ``nn.Linear`` + ``nn.Sigmoid``, ``torch.optim.SGD(momentum=0.9)``;
- ``minimal``: a naive vectorised NumPy trainer written below in ~40 lines;
- ``nielsen``: the per-sample loop of the classic book's ``network.py`` (column vectors).

The real-data row (target 5) trains on Fashion-MNIST (Debian's ``dataset-fashion-mnist``;
skipped without it): 784-100-10 ReLU, softmax cross-entropy, Xavier initialisation, classical
momentum (β = 0.9, η = 0.01), batch 50, shuffled every epoch, no L2 term, 50,000 training rows.
- ``bpexp``: ``bpexp.run`` with tracking and instruments off (compose, load, train with the
  default per-epoch train/ and val/ metrics, test);
- ``sklearn``: ``MLPClassifier(solver="sgd")`` with the same settings, ``fit`` then ``score``;
- ``torch``: PyTorch eager, the same network, initial weights, batches and update.
Each side is timed end to end (from the cached arrays, load included) and per epoch, and
reports its test accuracy, so that the three are seen to learn the same thing.
"""

import os

# Pin every BLAS/OpenMP pool to one thread *before* numpy or torch is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
# OPENBLAS_CORETYPE is deliberately left as the caller set it (or unset: OpenBLAS then picks the
# kernel for the CPU it detects). To see which kernel is in use:
#   python -c "import threadpoolctl, pprint; pprint.pprint(threadpoolctl.threadpool_info())"
# and read 'architecture' (e.g. SkylakeX, Haswell); it is also printed in the header below.

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

# Without an installed bpexp (or one on PYTHONPATH), measure the working tree's.
if importlib.util.find_spec("bpexp") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import threadpoolctl  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402, N812
except ImportError:  # pragma: no cover - a message for the user, not a code path
    sys.exit("bench_core needs PyTorch: pip install -e '.[bench]' (pins torch==2.13.0, CPU)")

from bpexp import trainer  # noqa: E402
from bpexp.cost import COSTS  # noqa: E402
from bpexp.data import load_dataset  # noqa: E402
from bpexp.network import Network, initialize  # noqa: E402
from bpexp.optimizer import Optimizer  # noqa: E402
from bpexp.rng import stream  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

SEED = 0
LR = 0.1
BETA = 0.9
INIT = "scaled_normal"  # N(0, 1/n_in) weights: hidden units start unsaturated
SAMPLE_SECONDS = 0.2  # a timed sample repeats short epochs until it lasts about this long
Array = np.ndarray


# --- data -----------------------------------------------------------------------------------


def digits_data(dtype: str) -> tuple[Array, Array]:
    """scikit-learn's 1,797 8x8 digits, X in [0, 1] of shape (1797, 64), one-hot Y (1797, 10)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = np.ascontiguousarray(digits.data / 16.0, dtype=dtype)
    Y = np.eye(10, dtype=dtype)[digits.target]
    return X, Y


def synthetic_data(n: int, n_in: int, n_out: int, dtype: str) -> tuple[Array, Array]:
    """Random X in [0, 1] of shape (n, n_in) and random one-hot Y of shape (n, n_out)."""
    rng = np.random.default_rng(SEED)
    X = rng.random((n, n_in)).astype(dtype)
    Y = np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, n)]
    return X, Y


# --- contenders: each builds a closure that runs one epoch over (X, Y) in order --------------


def initial_weights(sizes: tuple[int, ...]) -> tuple[list[Array], list[Array]]:
    """W^l (n_l, n_{l-1}) and b^l (n_l,) in float64, drawn once and shared by every contender."""
    net = Network(sizes, "sigmoid", "sigmoid", "float64")
    initialize(net, INIT, stream(SEED, "init"))
    return [W.copy() for W in net.W], [b.copy() for b in net.b]


def bpexp_trainer(sizes, W0, b0, X, Y, batch, dtype):
    net = Network(sizes, "sigmoid", "sigmoid", dtype)
    for W, b, W_init, b_init in zip(net.W, net.b, W0, b0, strict=True):
        W[...] = W_init
        b[...] = b_init
    optimizer = Optimizer("momentum", lr=LR, beta=BETA, form="classical")
    state = optimizer.init(net.params)
    cost = COSTS["quadratic"]

    def epoch() -> None:
        trainer.train_epoch(net, optimizer, state, cost, X, Y, batch)

    return epoch, lambda: [W.copy() for W in net.W]


def torch_trainer(sizes, W0, b0, X, Y, batch, dtype):
    tdtype = getattr(torch, dtype)
    layers = []
    for W_init, b_init in zip(W0, b0, strict=True):
        linear = torch.nn.Linear(W_init.shape[1], W_init.shape[0], dtype=tdtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W_init))
            linear.bias.copy_(torch.from_numpy(b_init))
        layers += [linear, torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=BETA)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    n = Xt.shape[0]

    def epoch() -> None:
        for start in range(0, n, batch):
            xb, yb = Xt[start : start + batch], Yt[start : start + batch]
            optimizer.zero_grad()
            # 0.5 * batch mean of the summed squared error: the quadratic cost of docs/science.md.
            loss = F.mse_loss(model(xb), yb, reduction="sum") * (0.5 / xb.shape[0])
            loss.backward()
            optimizer.step()

    def weights() -> list[Array]:
        return [m.weight.detach().numpy().copy() for m in model if isinstance(m, torch.nn.Linear)]

    return epoch, weights


def minimal_trainer(sizes, W0, b0, X, Y, batch, dtype):
    """What people write first: vectorised over the batch, new arrays everywhere, no reuse."""
    Ws = [W.astype(dtype) for W in W0]
    bs = [b.astype(dtype) for b in b0]
    vWs = [np.zeros_like(W) for W in Ws]
    vbs = [np.zeros_like(b) for b in bs]

    def epoch() -> None:
        for start in range(0, len(X), batch):
            x, y = X[start : start + batch], Y[start : start + batch]
            m = x.shape[0]
            activations = [x]
            a = x
            for W, b in zip(Ws, bs, strict=True):
                z = a @ W.T + b
                a = 1 / (1 + np.exp(-z))
                activations.append(a)
            delta = (a - y) * a * (1 - a) / m
            grads_W, grads_b = [], []
            for l in range(len(Ws) - 1, -1, -1):
                grads_W.insert(0, delta.T @ activations[l])
                grads_b.insert(0, delta.sum(axis=0))
                if l > 0:
                    delta = (delta @ Ws[l]) * activations[l] * (1 - activations[l])
            for l in range(len(Ws)):
                vWs[l] = BETA * vWs[l] - LR * grads_W[l]
                vbs[l] = BETA * vbs[l] - LR * grads_b[l]
                Ws[l] = Ws[l] + vWs[l]
                bs[l] = bs[l] + vbs[l]

    return epoch, lambda: [W.copy() for W in Ws]


def nielsen_trainer(sizes, W0, b0, X, Y, batch, dtype):
    """The classic book's network.py: one sample at a time, column vectors, summed nablas."""
    weights = [W.astype(dtype) for W in W0]
    biases = [b.astype(dtype).reshape(-1, 1) for b in b0]
    vw = [np.zeros(w.shape, dtype) for w in weights]
    vb = [np.zeros(b.shape, dtype) for b in biases]
    # The book's loader hands over a list of (x, y) column-vector pairs.
    data = [(x.reshape(-1, 1), y.reshape(-1, 1)) for x, y in zip(X, Y, strict=True)]

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def sigmoid_prime(z):
        return sigmoid(z) * (1 - sigmoid(z))

    def backprop(x, y):
        nabla_b = [np.zeros(b.shape, dtype) for b in biases]
        nabla_w = [np.zeros(w.shape, dtype) for w in weights]
        activation = x
        activations = [x]
        zs = []
        for b, w in zip(biases, weights, strict=True):
            z = np.dot(w, activation) + b
            zs.append(z)
            activation = sigmoid(z)
            activations.append(activation)
        delta = (activations[-1] - y) * sigmoid_prime(zs[-1])
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].transpose())
        for l in range(2, len(sizes)):
            delta = np.dot(weights[-l + 1].transpose(), delta) * sigmoid_prime(zs[-l])
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].transpose())
        return nabla_b, nabla_w

    def update_mini_batch(mini_batch):
        nabla_b = [np.zeros(b.shape, dtype) for b in biases]
        nabla_w = [np.zeros(w.shape, dtype) for w in weights]
        for x, y in mini_batch:
            delta_nabla_b, delta_nabla_w = backprop(x, y)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b, strict=True)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w, strict=True)]
        scale = LR / len(mini_batch)
        vw[:] = [BETA * v - scale * nw for v, nw in zip(vw, nabla_w, strict=True)]
        vb[:] = [BETA * v - scale * nb for v, nb in zip(vb, nabla_b, strict=True)]
        weights[:] = [w + v for w, v in zip(weights, vw, strict=True)]
        biases[:] = [b + v for b, v in zip(biases, vb, strict=True)]

    def epoch() -> None:
        for k in range(0, len(data), batch):
            update_mini_batch(data[k : k + batch])

    return epoch, lambda: [w.copy() for w in weights]


TRAINERS = {
    "bpexp": bpexp_trainer,
    "torch": torch_trainer,
    "minimal": minimal_trainer,
    "nielsen": nielsen_trainer,
}


# --- timing ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Timings:
    """Seconds per unit of work (an epoch, or one GEMM) of each contender, one list per round."""

    seconds: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of seconds(a) / seconds(b) measured in the same round."""
        return statistics.median(
            x / y for x, y in zip(self.seconds[a], self.seconds[b], strict=True)
        )


def warm_up(work: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Call each contender once, untimed for the tables (buffers, caches, lazy imports)."""
    seconds = {}
    for name, fn in work.items():
        start = time.perf_counter()
        fn()
        seconds[name] = time.perf_counter() - start
    return seconds


def interleave(
    work: dict[str, Callable[[], None]],
    rounds: int,
    warm: dict[str, float],
    sample_seconds: float = SAMPLE_SECONDS,
) -> Timings:
    """Time every callable once per round, rotating the order (ABC, BCA, CAB, ...).

    A callable whose warm-up took less than ``sample_seconds`` is repeated within its sample,
    and its time is divided by the repeat count.
    """
    repeats = {name: max(1, math.ceil(sample_seconds / max(warm[name], 1e-6))) for name in work}
    names = list(work)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, count = work[name], repeats[name]
            start = time.perf_counter()
            for _ in range(count):
                fn()
            seconds[name].append((time.perf_counter() - start) / count)
    return Timings(seconds)


def max_weight_difference(reference: list[Array], other: list[Array]) -> float:
    return max(float(np.max(np.abs(a - b))) for a, b in zip(reference, other, strict=True))


# --- the benchmark --------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the ratio table."""

    target: str
    case: str
    ratio: float
    goal: str  # "<= 0.25" or ">= 6"

    @property
    def verdict(self) -> str:
        op, bound = self.goal.split()
        ok = self.ratio <= float(bound) if op == "<=" else self.ratio >= float(bound)
        return "PASS" if ok else "MISS"


def layer_flops(sizes: tuple[int, ...], m: int) -> int:
    """FLOPs of one training step: forward and BP4 GEMMs in every layer, BP2 after the first."""
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    return 4 * m * sum(i * o for i, o in pairs) + 2 * m * sum(i * o for i, o in pairs[1:])


def gemms_only(sizes: tuple[int, ...], X: Array, batch: int, dtype: str) -> Callable[[], None]:
    """An epoch of only the matrix products of training: per batch and layer, Z = A Wᵀ and
    ∂C/∂W = δᵀ A, and δ W after the first layer, on the real batches (no σ, no update)."""
    rng = np.random.default_rng(SEED)
    Ws = [rng.random((o, i)).astype(dtype) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    acts = [rng.random((batch, n)).astype(dtype) for n in sizes[1:]]
    deltas = [rng.random((batch, n)).astype(dtype) for n in sizes[1:]]
    grads = [np.empty_like(W) for W in Ws]
    back = [np.empty((batch, n), dtype) for n in sizes[1:-1]]

    def epoch() -> None:
        for start in range(0, len(X) - batch + 1, batch):
            a_prev = X[start : start + batch]
            for W, a in zip(Ws, acts, strict=True):
                np.dot(a_prev, W.T, out=a)
                a_prev = a
            for l in range(len(Ws) - 1, -1, -1):
                np.dot(
                    deltas[l].T, X[start : start + batch] if l == 0 else acts[l - 1], out=grads[l]
                )
                if l > 0:
                    np.dot(deltas[l], Ws[l], out=back[l - 1])

    return epoch


def compare_trainers(args, rows: list[Row], epoch_table: list[list[str]]) -> None:
    """Target 1 (vs torch and vs minimal) and target 2 (fraction of GEMM peak)."""
    n_synthetic = 6_000 if args.quick else 60_000
    nets = [
        ("digits 64-30-10", (64, 30, 10), digits_data),
        ("784-30-10", (784, 30, 10), lambda d: synthetic_data(n_synthetic, 784, 10, d)),
        ("784-100-10", (784, 100, 10), lambda d: synthetic_data(n_synthetic, 784, 10, d)),
    ]
    torch_goal_b10 = {"digits 64-30-10": "<= 0.1", "784-30-10": "<= 0.25", "784-100-10": "<= 0.4"}
    rng = np.random.default_rng(SEED)
    A = rng.random((2048, 2048), dtype=np.float32)
    B = rng.random((2048, 2048), dtype=np.float32)
    gemm_flops = 2 * 2048**3

    for dtype in ("float64", "float32"):
        for net_name, sizes, make_data in nets:
            X, Y = make_data(dtype)
            W0, b0 = initial_weights(sizes)
            for batch in (10, 1000):
                case = f"{net_name} b{batch} f{dtype[-2:]}"
                work, weights = {}, {}
                for name in ("bpexp", "torch", "minimal"):
                    work[name], weights[name] = TRAINERS[name](sizes, W0, b0, X, Y, batch, dtype)
                peak_case = net_name == "784-100-10" and batch == 1000 and dtype == "float32"
                if peak_case:
                    work["gemm2048"] = lambda: np.matmul(A, B)
                    work["gemms only"] = gemms_only(sizes, X, batch, dtype)
                progress(f"{case}: {len(X)} samples")
                warm = warm_up(work)  # one epoch each from the same weights: compare them
                ref = weights["bpexp"]()
                diffs = {n: max_weight_difference(ref, weights[n]()) for n in ("torch", "minimal")}
                timings = interleave(work, args.rounds, warm)
                epoch_table.append(
                    [
                        case,
                        str(len(X)),
                        *(f"{timings.median(name):.4f}" for name in ("bpexp", "torch", "minimal")),
                        "",
                        f"torch {diffs['torch']:.0e}, minimal {diffs['minimal']:.0e}",
                    ]
                )
                goal = torch_goal_b10[net_name] if batch == 10 else "<= 0.8"
                rows.append(Row("1 bpexp/torch", case, timings.ratio("bpexp", "torch"), goal))
                rows.append(
                    Row("1 bpexp/minimal", case, timings.ratio("bpexp", "minimal"), "<= 1.0")
                )
                if peak_case:
                    steps = math.ceil(len(X) / batch)
                    flops = layer_flops(sizes, batch) * steps
                    fractions = [
                        (flops / t) / (gemm_flops / g)
                        for t, g in zip(
                            timings.seconds["bpexp"], timings.seconds["gemm2048"], strict=True
                        )
                    ]
                    peak = gemm_flops / timings.median("gemm2048") / 1e9
                    achieved = flops / timings.median("bpexp") / 1e9
                    rows.append(
                        Row(
                            "2 GFLOP/s / GEMM peak",
                            f"{case}: {achieved:.1f} of {peak:.1f} GFLOP/s",
                            statistics.median(fractions),
                            ">= 0.8",
                        )
                    )
                    # The same products alone (same shapes, same batches streamed from memory):
                    # the most any trainer built on NumPy's GEMM could reach on this network.
                    bare = flops / timings.median("gemms only") / 1e9
                    rows.append(
                        Row(
                            "2 GFLOP/s / same GEMMs",
                            f"{case}: {achieved:.1f} of {bare:.1f} GFLOP/s (products alone)",
                            timings.ratio("gemms only", "bpexp"),
                            ">= 0.8",
                        )
                    )


REAL_SIZES = (784, 100, 10)
REAL_LR = 0.01
REAL_BATCH = 50


def real_data(dtype: str):
    from bpexp.datafiles import SYSTEM_FOLDERS

    if not (SYSTEM_FOLDERS["fashion_mnist"] / "train-images-idx3-ubyte.gz").is_file():
        return None
    return load_dataset("fashion_mnist", val_fraction=1 / 6, seed=SEED, dtype=dtype)


def real_bpexp(epochs: int, dtype: str, shuffle: bool = True, seed: int = SEED):
    """``bpexp.run`` as a user calls it; per-epoch seconds from the epoch records' times."""
    import bpexp
    from bpexp.trainer import EpochRecord

    overrides = [
        "data=fashion_mnist",
        "network.hidden=[100]",
        "network.activation=relu",
        "network.output_activation=softmax",
        "network.init=xavier",
        "cost=softmax_cross_entropy",
        "optimizer=momentum",
        f"optimizer.lr={REAL_LR}",
        "optimizer.beta=0.9",
        f"trainer.batch_size={REAL_BATCH}",
        f"trainer.epochs={epochs}",
        f"trainer.dtype={dtype}",
        f"trainer.shuffle={str(shuffle).lower()}",
        "trainer.instruments=false",
        "tracking.enabled=false",
        f"seed={seed}",
    ]

    def go() -> tuple[float, float]:
        stamps = []
        result = bpexp.run(
            overrides,
            listeners=[
                lambda r: stamps.append(time.perf_counter()) if isinstance(r, EpochRecord) else None
            ],
        )
        return statistics.median(np.diff(stamps)), result.metrics["test/accuracy"]

    return go


def real_sklearn(epochs: int, dtype: str):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    def go() -> tuple[float, float]:
        data = real_data(dtype)
        model = MLPClassifier(
            hidden_layer_sizes=(100,),
            activation="relu",
            solver="sgd",
            alpha=0.0,
            batch_size=REAL_BATCH,
            learning_rate="constant",
            learning_rate_init=REAL_LR,
            momentum=0.9,
            nesterovs_momentum=False,
            shuffle=True,
            max_iter=epochs,
            tol=0.0,
            n_iter_no_change=epochs + 1,
            random_state=SEED,
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(data.X_train, data.Y_train.argmax(axis=1))
        per_epoch = (time.perf_counter() - start) / epochs
        return per_epoch, model.score(data.X_test, data.Y_test.argmax(axis=1))

    return go


def real_torch(epochs: int, dtype: str):
    def go() -> tuple[float, float]:
        data = real_data(dtype)
        net = Network(REAL_SIZES, "relu", "softmax", "float64")
        initialize(net, "xavier", stream(SEED, "init"))
        tdtype = getattr(torch, dtype)
        model = torch.nn.Sequential(
            torch.nn.Linear(784, 100, dtype=tdtype),
            torch.nn.ReLU(),
            torch.nn.Linear(100, 10, dtype=tdtype),
        )
        with torch.no_grad():
            for linear, W, b in zip(model[::2], net.W, net.b, strict=True):
                linear.weight.copy_(torch.from_numpy(W))
                linear.bias.copy_(torch.from_numpy(b))
        optimizer = torch.optim.SGD(model.parameters(), lr=REAL_LR, momentum=0.9)
        Xt = torch.from_numpy(data.X_train)
        labels = torch.from_numpy(data.Y_train.argmax(axis=1))
        shuffle = stream(SEED, "shuffle")  # the batches bpexp sees
        seconds = []
        for _ in range(epochs):
            start = time.perf_counter()
            order = torch.from_numpy(shuffle.permutation(len(Xt)))
            for k in range(0, len(Xt), REAL_BATCH):
                rows = order[k : k + REAL_BATCH]
                optimizer.zero_grad()
                F.cross_entropy(model(Xt[rows]), labels[rows]).backward()
                optimizer.step()
            seconds.append(time.perf_counter() - start)
        with torch.no_grad():
            predicted = model(torch.from_numpy(data.X_test)).argmax(dim=1).numpy()
        accuracy = float(np.mean(predicted == data.Y_test.argmax(axis=1)))
        return statistics.median(seconds), accuracy

    return go


def compare_real_data(args, rows: list[Row], real_table: list[list[str]]) -> None:
    """Target 5: Fashion-MNIST end to end and per epoch, bpexp vs sklearn vs torch."""
    if real_data("float32") is None:
        progress("real data: no Fashion-MNIST (apt-get install dataset-fashion-mnist); skipped")
        return
    epochs = 2 if args.quick else 10
    work = {
        "bpexp": real_bpexp(epochs, "float64"),
        "sklearn": real_sklearn(epochs, "float64"),
        "torch": real_torch(epochs, "float64"),
        "bpexp f32": real_bpexp(epochs, "float32"),
        "bpexp unshuffled": real_bpexp(epochs, "float64", shuffle=False),
    }
    progress(f"Fashion-MNIST 784-100-10 b{REAL_BATCH}, {epochs} epochs, {args.real_rounds} rounds")
    names = list(work)
    total: dict[str, list[float]] = {name: [] for name in names}
    per_epoch: dict[str, list[float]] = {name: [] for name in names}
    accuracy: dict[str, float] = {}
    for r in range(args.real_rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            per_epoch[name].append(0.0)
            per_epoch[name][-1], accuracy[name] = work[name]()
            total[name].append(time.perf_counter() - start)
    ends, epochs_ = Timings(total), Timings(per_epoch)
    for name in names:
        real_table.append(
            [
                name,
                f"{epochs_.median(name):.3f}",
                f"{ends.median(name):.1f}",
                f"{accuracy[name]:.4f}",
            ]
        )
    case = f"Fashion-MNIST 784-100-10 b{REAL_BATCH} f64, {epochs} epochs"
    rows.append(Row("5 bpexp/sklearn epoch", case, epochs_.ratio("bpexp", "sklearn"), "<= 0.6"))
    rows.append(Row("5 bpexp/sklearn end to end", case, ends.ratio("bpexp", "sklearn"), "<= 1.0"))
    rows.append(Row("5 bpexp/torch epoch", case, epochs_.ratio("bpexp", "torch"), "<= 1.0"))
    rows.append(
        Row(
            "5 shuffled/unshuffled epoch",
            case,
            epochs_.ratio("bpexp", "bpexp unshuffled"),
            "<= 1.05",
        )
    )
    rows.append(Row("6 f32/f64 epoch", case, epochs_.ratio("bpexp f32", "bpexp"), "<= 1.0"))
    gap = abs(accuracy["bpexp f32"] - accuracy["bpexp"]) * 100
    rows.append(Row("6 |acc f32 - acc f64|, points", case, gap, "<= 0.3"))


def compare_per_sample(args, rows: list[Row], epoch_table: list[list[str]]) -> None:
    """Target 3: the vectorised step against the book's per-sample loop, 784-30-10, batch 10."""
    n = 1_000 if args.quick else 5_000
    sizes, batch, dtype = (784, 30, 10), 10, "float64"
    X, Y = synthetic_data(n, 784, 10, dtype)
    W0, b0 = initial_weights(sizes)
    work, weights = {}, {}
    for name in ("bpexp", "nielsen"):
        work[name], weights[name] = TRAINERS[name](sizes, W0, b0, X, Y, batch, dtype)
    case = f"784-30-10 b{batch} f64"
    progress(case + " (per-sample loop)")
    warm = warm_up(work)
    diff = max_weight_difference(weights["bpexp"](), weights["nielsen"]())
    timings = interleave(work, args.rounds, warm)
    per_sample = {name: timings.median(name) / n * 1e6 for name in work}
    epoch_table.append(
        [
            case,
            str(n),
            f"{timings.median('bpexp'):.4f}",
            "",
            "",
            f"{timings.median('nielsen'):.4f}",
            f"nielsen {diff:.0e}",
        ]
    )
    rows.append(
        Row(
            "3 nielsen/bpexp",
            f"{case}: {per_sample['nielsen']:.1f} vs {per_sample['bpexp']:.2f} us/sample",
            timings.ratio("nielsen", "bpexp"),
            ">= 6",
        )
    )


def compare_instruments(args, rows: list[Row], epoch_table: list[list[str]]) -> None:
    """Target 4: the full loop with instruments / per-step loss on and off, digits 64-30-10."""
    epochs = trainer.TrainerConfig().epochs  # the default run length, hence the default stride
    data = load_dataset("digits", seed=SEED, dtype="float64")
    sizes = (64, 30, 10)
    W0, b0 = initial_weights(sizes)
    cost = COSTS["quadratic"]
    optimizer = Optimizer("momentum", lr=LR, beta=BETA, form="classical")
    never = 10**12  # a stride longer than the run: no batch loss is ever computed

    def run(instruments: bool, stride: int | None) -> Callable[[], None]:
        cfg = trainer.TrainerConfig(
            epochs=epochs, batch_size=10, instruments=instruments, sharpness_every=0
        )

        def go() -> None:
            net = Network(sizes, "sigmoid", "sigmoid", "float64")
            for W, b, W_init, b_init in zip(net.W, net.b, W0, b0, strict=True):
                W[...] = W_init
                b[...] = b_init
            records = []
            trainer.train(
                net, optimizer, cost, data, cfg, SEED, records.append, log_every_n_steps=stride
            )

        return go

    case = f"digits 64-30-10 b10 f64, train() {epochs} epochs"
    progress(case)
    work = {
        "instruments on": run(True, never),
        "instruments off": run(False, never),
        "step loss auto": run(False, None),
    }
    # One run lasts ~0.2 s; a timed sample repeats it to ~1 s (0.3 s with --quick).
    timings = interleave(work, args.rounds, warm_up(work), 0.3 if args.quick else 1.0)
    n_train = data.X_train.shape[0]
    for name in work:
        seconds = f"{timings.median(name) / epochs:.4f}"
        epoch_table.append([f"train(): {name}", str(n_train), seconds, "", "", "", ""])
    stride = trainer.log_stride(trainer.TrainerConfig(epochs=epochs, batch_size=10), n_train)
    rows.append(
        Row(
            "4 instruments on/off",
            f"{case} (step loss off)",
            timings.ratio("instruments on", "instruments off"),
            "<= 1.05",
        )
    )
    rows.append(
        Row(
            "4 step loss auto/off",
            f"{case} (stride {stride}, instruments off)",
            timings.ratio("step loss auto", "instruments off"),
            "<= 1.05",
        )
    )


def compare_curvature(args, rows: list[Row], epoch_table: list[list[str]]) -> None:
    """Target 5: the curvature and noise instruments, per measurement against one training
    epoch, and a default digits run (instruments on) with sharpness at its default
    ``trainer.sharpness_every`` against never."""
    from bpexp import curvature, instruments

    defaults = trainer.TrainerConfig()
    epochs, every = defaults.epochs, defaults.sharpness_every
    data = load_dataset("digits", seed=SEED, dtype="float64")
    sizes = (64, 30, 10)
    W0, b0 = initial_weights(sizes)
    cost = COSTS["quadratic"]
    optimizer = Optimizer("sgd", lr=3.0)  # the default run: SGD, lr 3, batch 10

    def fresh() -> Network:
        net = Network(sizes, "sigmoid", "sigmoid", "float64")
        for W, b, W_init, b_init in zip(net.W, net.b, W0, b0, strict=True):
            W[...] = W_init
            b[...] = b_init
        return net

    def run(sharpness_every: int) -> Callable[[], None]:
        cfg = trainer.TrainerConfig(epochs=epochs, sharpness_every=sharpness_every)
        return lambda: trainer.train(fresh(), optimizer, cost, data, cfg, SEED)

    # One measurement each on a net trained for 3 epochs (not at its initial weights, where
    # Lanczos may converge unusually fast), probe = the default 256 training samples.
    net = fresh()
    trainer.train(net, optimizer, cost, data, trainer.TrainerConfig(epochs=3), SEED)
    X, Y = data.X_train, data.Y_train
    probe = np.sort(stream(SEED, "probe").permutation(len(X))[: defaults.probe_size])
    Xp, Yp = X[probe], Y[probe]
    start = stream(SEED, "sharpness").standard_normal(net.params.size)
    params_init = net.params.copy()
    state = optimizer.init(net.params)
    lanczos = curvature.sharpness(net, Xp, Yp, cost, start, defaults.sharpness_iterations)

    def noise() -> None:
        net.backprop(Xp, Yp, cost)
        instruments.gradient_noise(net, Xp)

    case = f"digits 64-30-10 b10 f64, train() {epochs} epochs"
    progress(f"{case}, sharpness every {every} / never")
    work = {
        "epoch": lambda: trainer.train_epoch(net, optimizer, state, cost, X, Y, 10),
        "sharpness": lambda: curvature.sharpness(
            net, Xp, Yp, cost, start, defaults.sharpness_iterations
        ),
        "grad_noise_scale": noise,  # with the probe backprop it needs (shared in train())
        "distance_from_init": lambda: instruments.distances_from_init(net, params_init),
        f"run, sharpness every {every}": run(every),
        "run, sharpness never": run(0),
    }
    timings = interleave(work, args.rounds, warm_up(work), 0.3 if args.quick else 1.0)
    for name in work:
        unit = epochs if name.startswith("run") else 1
        label = f"{name} ({lanczos.iterations} H v)" if name == "sharpness" else name
        seconds = f"{timings.median(name) / unit:.5f}"
        epoch_table.append([f"curvature: {label}", str(len(X)), seconds, "", "", "", ""])
    measured = f"probe {len(Xp)}, per measurement / one training epoch"
    rows.append(
        Row(
            "5 sharpness/epoch",
            f"{measured} ({lanczos.iterations} Lanczos steps)",
            timings.ratio("sharpness", "epoch"),
            "<= 1.0",
        )
    )
    for name in ("grad_noise_scale", "distance_from_init"):
        rows.append(Row(f"5 {name}/epoch", measured, timings.ratio(name, "epoch"), "<= 0.05"))
    rows.append(
        Row(
            f"5 sharpness every {every}/never",
            f"{case}, instruments on, {epochs // every + 1} measurements",
            timings.ratio(f"run, sharpness every {every}", "run, sharpness never"),
            "<= 1.10",
        )
    )


# --- output ---------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_line() -> str:
    """Which bpexp was measured: its folder and, for a git checkout, the commit."""
    import bpexp

    root = Path(bpexp.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return f"bpexp from {root} ({commit})"


def machine_lines() -> list[str]:
    # numpy's own BLAS comes first; scipy (imported by scikit-learn) may bring a second one.
    blas = [
        f"{p.get('internal_api')} {p.get('version')} in {Path(p['filepath']).parent.name} "
        f"({p.get('architecture', '?')} kernel, {p.get('num_threads')} thread)"
        for p in threadpoolctl.threadpool_info()
        if p.get("user_api") == "blas"
    ]
    return [
        f"cpu: {cpu_model()}, {os.cpu_count()} cores",
        f"python {platform.python_version()}, numpy {np.__version__}",
        f"BLAS: {'; '.join(blas)}",
        f"torch {torch.__version__}, {torch.get_num_threads()} thread, "
        f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}",
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}",
        source_line(),
    ]


def format_table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(row) for row in lines)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per comparison")
    parser.add_argument("--real-rounds", type=int, default=None, help="rounds of the real-data row")
    parser.add_argument("--only-real", action="store_true", help="only the real-data row")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated sections to run: trainers, per_sample, instruments, curvature",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.real_rounds is None:
        args.real_rounds = 1 if args.quick else 3

    started = time.perf_counter()
    rows: list[Row] = []
    epoch_table: list[list[str]] = []
    real_table: list[list[str]] = []
    sections = {
        "trainers": compare_trainers,
        "per_sample": compare_per_sample,
        "instruments": compare_instruments,
        "curvature": compare_curvature,
    }
    chosen = args.only.split(",") if args.only else ([] if args.only_real else list(sections))
    for name in chosen:
        if name not in sections:
            parser.error(f"--only {name!r}: allowed: {', '.join(sections)}")
        sections[name](args, rows, epoch_table)
    if args.only_real or not args.only:
        compare_real_data(args, rows, real_table)

    print("bench_core: bpexp NumPy core vs other trainers, one thread, timed side by side")
    print("\n".join(machine_lines()))
    print(
        f"mode: {'quick' if args.quick else 'full'}, {args.rounds} interleaved rounds "
        f"({args.real_rounds} for the real-data row), sections: {', '.join(chosen) or 'none'}, "
        f"median of per-round ratios; wall time {time.perf_counter() - started:.0f} s"
    )
    if real_table:
        print()
        print("Fashion-MNIST, same settings on every side (median over rounds)")
        header = ["trainer", "s/epoch", "end to end s", "test accuracy"]
        print(format_table(header, real_table))
    if epoch_table:
        print()
        print("Seconds per epoch (median over rounds)")
        print(
            format_table(
                [
                    "case",
                    "samples",
                    "bpexp",
                    "torch",
                    "minimal",
                    "nielsen",
                    "max|W - W_bpexp|, epoch 1",
                ],
                epoch_table,
            )
        )
    print()
    print("Ratios (time ratio unless named otherwise)")
    print(
        format_table(
            ["target", "case", "ratio", "goal", "verdict"],
            [[r.target, r.case, f"{r.ratio:.3f}", r.goal, r.verdict] for r in rows],
        )
    )
    missed = [r for r in rows if r.verdict == "MISS"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} targets met")


if __name__ == "__main__":
    main()
