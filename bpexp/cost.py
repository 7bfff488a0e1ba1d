"""Costs: the value C and the output error δ^L (BP1), side by side.

C is the mean over the m samples of a batch (docs/science.md#costs). ``delta`` returns
``scale`` · ∂C/∂z^L for the whole batch *including* the 1/m of the mean, so that BP2–BP4 then
sum over the batch and the gradients are already averaged: the factor is applied once, on the
smallest array. ``scale`` (1 by default) lets an optimizer's constant factor ride along (see
``Optimizer.gradient_scale``).

Allowed pairs with the output activation:
- ``quadratic``: sigmoid or linear outputs; δ^L = (a − y) ⊙ σ'(z^L) / m (BP1).
- ``cross_entropy`` (binary): sigmoid outputs only; δ^L = (a − y) / m exactly, the σ' of BP1
  cancels against the cost's 1/(a(1 − a)), so saturated outputs still learn.
- ``softmax_cross_entropy`` (categorical): softmax outputs only; δ^L = (a − y) / m.

``delta_r(z, a, y, act, rz)`` is the directional derivative of δ^L along a change ``rz`` of
z^L (Pearlmutter's R{δ^L}, the output end of a Hessian-vector product, :mod:`bpexp.curvature`):
quadratic (σ'² + (a − y) ⊙ σ'') ⊙ rz / m; cross-entropy σ' ⊙ rz / m; softmax cross-entropy
(a ⊙ (rz − Σ_j a_j rz_j)) / m, the softmax Jacobian applied to rz.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bpexp.activation import Activation
from bpexp.errors import ConfigError, bad_value

Array = np.ndarray


# a is clipped only inside the *value* of the cross-entropies, to the smallest normal number of
# its dtype (1e-308 in float64, 1e-38 in float32), so that a saturated output gives a large finite
# cost instead of inf or NaN; δ^L never divides by a.
def _floor(a: Array) -> float:
    return float(np.finfo(a.dtype).tiny)


@dataclass(frozen=True)
class Cost:
    name: str
    fn: Callable[[Array, Array], float]
    delta: Callable[..., Array]  # (z, a, y, act, out, scratch, scale=1.0) -> out
    delta_r: Callable[[Array, Array, Array, Activation, Array], Array]  # (z, a, y, act, rz)
    outputs: tuple[str, ...]


def _quadratic(a: Array, y: Array) -> float:
    """C = 1/(2m) Σ_x ||y(x) − a(x)||², a and y of shape (m, n_L)."""
    diff = a - y
    return float(0.5 * np.einsum("ij,ij->", diff, diff) / a.shape[0])


def _quadratic_delta(
    z: Array, a: Array, y: Array, act: Activation, out: Array, scratch: Array, scale: float = 1.0
) -> Array:
    np.subtract(a, y, out=out)
    out *= act.prime(z, a, scratch)
    out *= scale / a.shape[0]
    return out


def _quadratic_delta_r(z: Array, a: Array, y: Array, act: Activation, rz: Array) -> Array:
    prime = act.prime(z, a, np.empty_like(a))
    curvature = act.second(z, a, np.empty_like(a))
    curvature *= a - y
    curvature += prime * prime  # ∂δ/∂z = σ'² + (a − y) σ'' (per sample, per output)
    return curvature * rz / a.shape[0]


def _cross_entropy(a: Array, y: Array) -> float:
    """C = −1/m Σ [y ln a + (1 − y) ln(1 − a)], summed over outputs, mean over samples."""
    a_safe = np.clip(a, _floor(a), 1.0 - np.finfo(a.dtype).epsneg)
    total = np.sum(y * np.log(a_safe) + (1.0 - y) * np.log1p(-a_safe))
    return float(-total / a.shape[0])


def _softmax_cross_entropy(a: Array, y: Array) -> float:
    """C = −1/m Σ_x Σ_j y_j ln a_j."""
    return float(-np.sum(y * np.log(np.maximum(a, _floor(a)))) / a.shape[0])


def _a_minus_y_delta(
    z: Array, a: Array, y: Array, act: Activation, out: Array, scratch: Array, scale: float = 1.0
) -> Array:
    np.subtract(a, y, out=out)
    out *= scale / a.shape[0]
    return out


def _sigmoid_delta_r(z: Array, a: Array, y: Array, act: Activation, rz: Array) -> Array:
    return act.prime(z, a, np.empty_like(a)) * rz / a.shape[0]  # R{a − y} = σ' ⊙ rz


def _softmax_delta_r(z: Array, a: Array, y: Array, act: Activation, rz: Array) -> Array:
    # R{a} for a softmax: (diag(a) − a aᵀ) rz per sample.
    return a * (rz - np.sum(a * rz, axis=1, keepdims=True)) / a.shape[0]


COSTS: dict[str, Cost] = {
    "quadratic": Cost(
        "quadratic", _quadratic, _quadratic_delta, _quadratic_delta_r, ("sigmoid", "linear")
    ),
    "cross_entropy": Cost(
        "cross_entropy", _cross_entropy, _a_minus_y_delta, _sigmoid_delta_r, ("sigmoid",)
    ),
    "softmax_cross_entropy": Cost(
        "softmax_cross_entropy",
        _softmax_cross_entropy,
        _a_minus_y_delta,
        _softmax_delta_r,
        ("softmax",),
    ),
}


def get_cost(name: str, output_activation: str) -> Cost:
    """The cost called ``name``, checked against the network's output activation."""
    if name not in COSTS:
        raise bad_value("cost.name", name, COSTS)
    cost = COSTS[name]
    if output_activation not in cost.outputs:
        raise ConfigError(
            f"cost.name={name!r} cannot be used with network.output_activation="
            f"{output_activation!r}; {name} allows output activations: {', '.join(cost.outputs)}"
        )
    return cost
