"""Fully-connected networks: the forward pass and the four equations of backpropagation.

Layout (docs/science.md): row-major, one row per sample. For a mini-batch of m samples
``A^{l-1}`` has shape (m, n_{l-1}), ``Z^l = A^{l-1} (W^l)^T + b^l`` and ``A^l = σ(Z^l)`` have
shape (m, n_l). ``W^l`` has shape (n_l, n_{l-1}) and ``b^l`` shape (n_l,), exactly as in the
notes, so ``W[l-1][j, k]`` is w^l_jk. Layers are numbered 1..L; lists here are 0-based, so
``W[0]`` is W^1.

All parameters live in one flat buffer ``params`` (and all gradients in ``grad``); ``W``/``b``
and ``gW``/``gb`` are views into them. An optimizer then updates every layer with a handful of
whole-buffer NumPy calls, in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bpexp.activation import Activation, hidden_activation, output_activation
from bpexp.cost import Cost
from bpexp.datafiles import check_size, read_npz
from bpexp.errors import ConfigError, bad_value

Array = np.ndarray

INITS = ("normal", "scaled_normal", "uniform", "xavier", "he", "file")
# Arrays of the parameters' size a run holds at least: the weights, the gradient and up to two
# optimizer buffers (Adam's moments). More than memory holds is refused before allocating.
PARAMETER_COPIES = 4
DTYPES = ("float64", "float32")


@dataclass
class Trace:
    """Per-layer quantities of the last pass, index l-1 for layer l (index 0 of ``a`` is a^0).

    The arrays are the network's working buffers: the next pass over a batch of the same size
    overwrites them. ``delta`` holds ∂C/∂z^l for the batch-mean cost C, so each row carries the
    factor 1/m; the per-sample error δ^l(x) is ``m * delta[l-1][x]``.
    """

    z: list[Array]
    a: list[Array]
    delta: list[Array]


class _Buffers:
    """Working arrays for one batch size m, allocated once and reused every step."""

    def __init__(self, sizes: tuple[int, ...], m: int, dtype: np.dtype) -> None:
        self.z = [np.empty((m, n), dtype) for n in sizes[1:]]
        self.a = [np.empty((m, n), dtype) for n in sizes[1:]]
        self.delta = [np.empty((m, n), dtype) for n in sizes[1:]]
        self.scratch = [np.empty((m, n), dtype) for n in sizes[1:]]
        self.ones = np.ones(m, dtype)  # BP3 as 1ᵀ δ: a BLAS call, not a strided reduction
        self.delta_T = [d.T for d in self.delta]  # views, made once: a step makes none


class Network:
    """A fully-connected network with ``sizes = (n_0, n_1, ..., n_L)``.

    Hidden layers use ``activation``, layer L uses ``output_activation``.
    """

    def __init__(
        self,
        sizes: tuple[int, ...] | list[int],
        activation: str = "sigmoid",
        output_activation_name: str = "sigmoid",
        dtype: str = "float64",
    ) -> None:
        sizes = tuple(int(n) for n in sizes)
        if len(sizes) < 2 or any(n < 1 for n in sizes):
            raise ConfigError(
                f"network sizes {list(sizes)} are not allowed; need an input size, an output size "
                "and hidden sizes that are all >= 1"
            )
        if dtype not in DTYPES:
            raise bad_value("trainer.dtype", dtype, DTYPES)
        self.sizes = sizes
        self.dtype = np.dtype(dtype)
        hidden = hidden_activation(activation)
        output = output_activation(output_activation_name)
        self.activations: list[Activation] = [hidden] * (len(sizes) - 2) + [output]

        shapes = [(n_out, n_in) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)]
        total = sum(r * c + r for r, c in shapes)
        check_size(
            PARAMETER_COPIES * total * self.dtype.itemsize,
            f"a network of sizes {list(sizes)} ({total:,} parameters, {PARAMETER_COPIES} "
            "copies: weights, gradient, optimizer state)",
            lambda message: ConfigError(f"network.hidden: {message}"),
        )
        self.params = np.zeros(total, self.dtype)
        self.grad = np.zeros(total, self.dtype)
        self.W, self.b = param_views(self.params, shapes)
        self.gW, self.gb = param_views(self.grad, shapes)
        self._W_T = [W.T for W in self.W]
        self._buffers: dict[int, _Buffers] = {}

    @property
    def n_layers(self) -> int:
        """L: the number of layers with weights (input is not a layer)."""
        return len(self.sizes) - 1

    def _buffers_for(self, m: int) -> _Buffers:
        buffers = self._buffers.get(m)
        if buffers is None:
            buffers = self._buffers[m] = _Buffers(self.sizes, m, self.dtype)
        return buffers

    def forward(self, X: Array) -> Array:
        """a^L for a batch X of shape (m, n_0); returns a working buffer of shape (m, n_L)."""
        return self._forward(X, self._buffers_for(X.shape[0]))

    def _forward(self, X: Array, buf: _Buffers) -> Array:
        a_prev = X
        for W_T, b, act, z, a in zip(
            self._W_T, self.b, self.activations, buf.z, buf.a, strict=True
        ):
            np.dot(a_prev, W_T, out=z)  # Z^l = A^{l-1} (W^l)^T + b^l
            z += b
            act.fn(z, a)
            a_prev = a
        return a_prev

    def backprop(
        self, X: Array, Y: Array, cost: Cost, *, loss: bool = False, scale: float = 1.0
    ) -> float | None:
        """Fill ``grad`` with ∇C of the batch-mean cost on (X, Y); BP1–BP4 for the whole batch.

        X has shape (m, n_0), Y shape (m, n_L). Returns C on the batch when ``loss`` is true
        (it costs a few extra NumPy calls, so the training step asks for it only when needed).
        With ``scale`` ≠ 1, ``grad`` (and the trace's δ) hold ``scale`` · ∇C: the trainer passes
        ``Optimizer.gradient_scale`` so that the update needs no pass to scale the gradient.
        """
        buf = self._buffers_for(X.shape[0])
        a_out = self._forward(X, buf)
        L = self.n_layers
        # BP1: δ^L = ∇_a C ⊙ σ'(z^L), with the batch mean's 1/m (and scale) folded in once, here.
        cost.delta(buf.z[-1], a_out, Y, self.activations[-1], buf.delta[-1], buf.scratch[-1], scale)
        for l in range(L, 0, -1):
            a_prev = X if l == 1 else buf.a[l - 2]
            delta = buf.delta[l - 1]
            np.dot(buf.delta_T[l - 1], a_prev, out=self.gW[l - 1])  # BP4: Σ_x δ^l (a^{l-1})^T
            np.dot(buf.ones, delta, out=self.gb[l - 1])  # BP3: ∂C/∂b^l = Σ_x δ^l
            if l > 1:
                # BP2: δ^{l-1} = ((W^l)^T δ^l) ⊙ σ'(z^{l-1}); rows are samples, hence δ W.
                prev = np.dot(delta, self.W[l - 1], out=buf.delta[l - 2])
                prev *= self.activations[l - 2].prime(
                    buf.z[l - 2], buf.a[l - 2], buf.scratch[l - 2]
                )
        return cost.fn(a_out, Y) if loss else None

    def trace(self, X: Array) -> Trace:
        """The z, a and δ of the last ``backprop`` or ``forward`` on a batch of X's size."""
        buf = self._buffers_for(X.shape[0])
        return Trace(z=buf.z, a=[X, *buf.a], delta=buf.delta)


def l2_penalty(net: Network, weight_decay: float, n: int) -> float:
    """λ/(2n) Σ_l ‖W^l‖²: the L2 term of the regularised cost, over weights only (no biases),
    with λ = ``weight_decay`` and n the training-set size (Nielsen's chapter 3)."""
    return weight_decay / (2 * n) * sum(float(np.vdot(W, W)) for W in net.W)


def add_l2_gradient(net: Network, coefficient: float, scratch: list[Array]) -> None:
    """``gW^l += coefficient · W^l`` for every layer; biases untouched.

    ∂/∂W of λ/(2n) Σ‖W‖² is (λ/n) W; the trainer passes ``coefficient = gradient_scale · λ/n``
    because ``grad`` holds the scaled gradient. ``scratch`` holds one array shaped like each
    W^l, so a step allocates nothing.
    """
    for W, gW, tmp in zip(net.W, net.gW, scratch, strict=True):
        gW += np.multiply(W, coefficient, out=tmp)


def param_views(flat: Array, shapes: list[tuple[int, int]]) -> tuple[list[Array], list[Array]]:
    """Views W^l (shape (n_l, n_{l-1})) and b^l into a flat parameter buffer laid out as
    ``W1, b1, W2, b2, ...`` (the layout of ``Network.params`` and ``Network.grad``)."""
    W, b, offset = [], [], 0
    for rows, cols in shapes:
        W.append(flat[offset : offset + rows * cols].reshape(rows, cols))
        offset += rows * cols
        b.append(flat[offset : offset + rows])
        offset += rows
    return W, b


def initialize(net: Network, init: str, rng: np.random.Generator, path: str | None = None) -> None:
    """Set every W^l, b^l by the scheme ``init`` (docs/science.md#initialisers).

    Draws are made in float64 and then cast, so float32 and float64 runs with the same seed
    start from the same weights (up to rounding).
    """
    if init not in INITS:
        raise bad_value("network.init", init, INITS)
    if init == "file":
        load_weights(net, path)
        return
    for W, b in zip(net.W, net.b, strict=True):
        n_out, n_in = W.shape
        if init == "normal":
            W[...] = rng.standard_normal(W.shape)
            b[...] = rng.standard_normal(b.shape)
        elif init == "scaled_normal":
            W[...] = rng.standard_normal(W.shape) / np.sqrt(n_in)
            b[...] = rng.standard_normal(b.shape)
        elif init == "uniform":
            W[...] = rng.uniform(-1.0, 1.0, W.shape)
            b[...] = rng.uniform(-1.0, 1.0, b.shape)
        elif init == "xavier":
            limit = np.sqrt(6.0 / (n_in + n_out))
            W[...] = rng.uniform(-limit, limit, W.shape)
            b[...] = 0.0
        else:  # he
            W[...] = rng.standard_normal(W.shape) * np.sqrt(2.0 / n_in)
            b[...] = 0.0


def weights(net: Network) -> dict[str, Array]:
    """Copies of ``W1, b1, ..., WL, bL`` (W^l of shape (n_l, n_{l-1}))."""
    out = {}
    for l, (W, b) in enumerate(zip(net.W, net.b, strict=True), start=1):
        out[f"W{l}"], out[f"b{l}"] = W.copy(), b.copy()
    return out


def save_weights(net_or_weights: Network | dict[str, Array], path: str | Path) -> None:
    """Write ``W1, b1, ..., WL, bL`` to an ``.npz``: the format ``network.init=file`` loads."""
    arrays = weights(net_or_weights) if isinstance(net_or_weights, Network) else net_or_weights
    np.savez(path, **arrays)


def load_weights(net: Network, path: str | Path | None) -> None:
    """Load ``W1, b1, ..., WL, bL`` from an ``.npz`` into ``net``, checking every shape."""
    if path is None or str(path) == "":
        raise ConfigError("network.init='file' needs network.init_path: the .npz to load")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"network.init_path={str(path)!r}: no such file")
    arrays = read_npz(  # shapes checked before any array is read; nothing unpickled
        path, lambda message: ConfigError(f"network.init_path={str(path)!r} {message}")
    )
    for l, (W, b) in enumerate(zip(net.W, net.b, strict=True), start=1):
        for key, target in ((f"W{l}", W), (f"b{l}", b)):
            if key not in arrays:
                raise ConfigError(
                    f"{path}: missing array {key!r}; a network with sizes {list(net.sizes)} needs "
                    f"W1..W{net.n_layers} and b1..b{net.n_layers}"
                )
            if arrays[key].shape != target.shape:
                raise ConfigError(
                    f"{path}: array {key!r} has shape {arrays[key].shape}, but the network with "
                    f"sizes {list(net.sizes)} needs {target.shape}"
                )
            if not np.all(np.isfinite(arrays[key])):
                raise ConfigError(f"{path}: array {key!r} contains NaN or inf")
            target[...] = arrays[key]
    extra = set(arrays) - {f"{p}{l}" for l in range(1, net.n_layers + 1) for p in "Wb"}
    if extra:
        raise ConfigError(
            f"{path}: unexpected arrays {sorted(extra)} for a {net.n_layers}-layer network"
        )
