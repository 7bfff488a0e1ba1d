"""Activation functions σ and their derivatives σ', side by side (docs/science.md#activations).

Each activation is a small object with ``fn(z, out)`` (a = σ(z)), ``prime(z, a, out)`` (σ'(z))
and ``second(z, a, out)`` (σ''(z), used only by the Hessian-vector products of
:mod:`bpexp.curvature`). All write into ``out`` so the training step allocates nothing; the
derivatives receive ``a`` as well because they are cheapest from it (sigmoid: σ' = a(1 − a),
σ'' = σ'(1 − 2a); tanh: σ' = 1 − a², σ'' = −2a(1 − a²)).
Softmax is an output activation only: its Jacobian is never formed, because the one cost allowed
with it (categorical cross-entropy) gives δ^L = a^L − y directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bpexp.errors import bad_value

Array = np.ndarray


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[Array, Array], Array]
    prime: Callable[[Array, Array, Array], Array]
    second: Callable[[Array, Array, Array], Array]


def _sigmoid(z: Array, out: Array) -> Array:
    # σ(z) = 1 / (1 + e^{−z}) = (1 + tanh(z/2)) / 2. The tanh form cannot overflow, so unlike
    # e^{−z} it needs no np.errstate context, which costs more than a ufunc at batch 10.
    np.multiply(z, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _sigmoid_prime(z: Array, a: Array, out: Array) -> Array:
    np.subtract(1.0, a, out=out)
    out *= a
    return out


def _sigmoid_second(z: Array, a: Array, out: Array) -> Array:
    np.multiply(a, -2.0, out=out)  # σ'' = a(1 − a)(1 − 2a)
    out += 1.0
    out *= a
    out *= 1.0 - a
    return out


def _tanh(z: Array, out: Array) -> Array:
    return np.tanh(z, out=out)


def _tanh_prime(z: Array, a: Array, out: Array) -> Array:
    np.multiply(a, a, out=out)
    np.subtract(1.0, out, out=out)
    return out


def _tanh_second(z: Array, a: Array, out: Array) -> Array:
    np.multiply(a, a, out=out)  # σ'' = −2a(1 − a²)
    np.subtract(1.0, out, out=out)
    out *= a
    out *= -2.0
    return out


def _relu(z: Array, out: Array) -> Array:
    return np.maximum(z, 0.0, out=out)


def _relu_prime(z: Array, a: Array, out: Array) -> Array:
    # The derivative at the kink z = 0 is taken as 0.
    return np.greater(z, 0.0, out=out, casting="unsafe")


def _zero_second(z: Array, a: Array, out: Array) -> Array:
    # relu and linear are piecewise linear: σ'' = 0 (relu's kink is a set of measure zero).
    out.fill(0.0)
    return out


def _linear(z: Array, out: Array) -> Array:
    np.copyto(out, z)
    return out


def _linear_prime(z: Array, a: Array, out: Array) -> Array:
    out.fill(1.0)
    return out


def _softmax(z: Array, out: Array) -> Array:
    # Row-wise softmax over the outputs of each sample; shifting by the row max avoids overflow.
    np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _softmax_prime(z: Array, a: Array, out: Array) -> Array:
    raise NotImplementedError(
        "softmax has no element-wise derivative; it is only used with softmax_cross_entropy, "
        "whose output error is δ^L = a^L − y"
    )


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", _sigmoid, _sigmoid_prime, _sigmoid_second),
    "tanh": Activation("tanh", _tanh, _tanh_prime, _tanh_second),
    "relu": Activation("relu", _relu, _relu_prime, _zero_second),
    "linear": Activation("linear", _linear, _linear_prime, _zero_second),
    "softmax": Activation("softmax", _softmax, _softmax_prime, _softmax_prime),
}
HIDDEN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "linear")
OUTPUT_ACTIVATIONS = ("sigmoid", "softmax", "linear")


def hidden_activation(name: str, key: str = "network.activation") -> Activation:
    if name not in HIDDEN_ACTIVATIONS:
        raise bad_value(key, name, HIDDEN_ACTIVATIONS)
    return ACTIVATIONS[name]


def output_activation(name: str, key: str = "network.output_activation") -> Activation:
    if name not in OUTPUT_ACTIVATIONS:
        raise bad_value(key, name, OUTPUT_ACTIVATIONS)
    return ACTIVATIONS[name]
