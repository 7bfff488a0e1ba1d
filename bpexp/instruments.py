"""Per-layer measurements that show BP1–BP4 at work (docs/science.md#instruments).

Measured on a fixed probe batch of training samples. Layers are numbered l = 1..L (docs/science.md).

- ``grad_norm/W{l}``, ``grad_norm/b{l}``: ||∂C/∂W^l||, ||∂C/∂b^l|| of the batch-mean cost.
- ``delta_norm/{l}``: root mean square over samples of the per-sample error ||δ^l(x)||.
- ``saturation/{l}``: fraction of (sample, unit) pairs that are saturated: sigmoid and softmax
  ``a < ε`` or ``a > 1 − ε``; tanh ``|a| > 1 − 2ε``. Not defined for relu and linear layers.
- ``wrong_saturation/{L}``: output layer only, sigmoid or softmax: fraction of (sample, output)
  pairs saturated at the wrong end, ``|a − y| > 1 − ε``: with 0/1 targets, ``a > 1 − ε`` where
  y = 0 or ``a < ε`` where y = 1. These are
  the outputs that BP1's σ' factor all but freezes under the quadratic cost (the learning
  slowdown); cross-entropy's δ^L = a − y moves them at full speed.
- ``sigma_prime_mean/{l}``: mean σ'(z^l) over the probe (not for softmax outputs).
- ``activation_mean/{l}``, ``activation_std/{l}``: of a^l over samples and units.
- ``dead_fraction/{l}``: relu layers: fraction of units with z ≤ 0 for every probe sample.
- ``update_ratio/W{l}``: ||W^l_end − W^l_start|| / ||W^l_start|| over the last epoch.
"""

from __future__ import annotations

import math

import numpy as np

from bpexp.cost import Cost
from bpexp.network import Network, param_views

Array = np.ndarray
DEFAULT_EPSILON = 0.01


def measure(
    net: Network, X: Array, Y: Array, cost: Cost, epsilon: float = DEFAULT_EPSILON
) -> dict[str, float]:
    """All per-layer instruments on the probe batch (X, Y); overwrites ``net.grad``.

    Every statistic is one or two passes over an array: sums and dot products, not ``np.std``
    or boolean masks combined with ``&``/``|`` (the probe runs once an epoch, and on small
    networks it would otherwise cost more than 5% of the epoch).
    """
    net.backprop(X, Y, cost)
    trace = net.trace(X)
    m = X.shape[0]
    out: dict[str, float] = {}
    for l in range(1, net.n_layers + 1):
        act = net.activations[l - 1]
        z, a, delta = trace.z[l - 1], trace.a[l], trace.delta[l - 1]
        size = a.size
        scratch = np.empty_like(a)
        out[f"grad_norm/W{l}"] = _norm(net.gW[l - 1])
        out[f"grad_norm/b{l}"] = _norm(net.gb[l - 1])
        # delta holds δ/m per row: the RMS of per-sample norms is m·||delta||_F/√m.
        out[f"delta_norm/{l}"] = _norm(delta) * math.sqrt(m)
        mean, std = _mean_std(a)
        out[f"activation_mean/{l}"], out[f"activation_std/{l}"] = mean, std
        if act.name in SATURATING:
            # σ' falls monotonically with the distance of a from the middle of its range, so
            # "a within ε of an end" is "σ' below its value there": sigmoid a < ε or a > 1 − ε
            # ⇔ a(1 − a) < ε(1 − ε); tanh |a| > 1 − 2ε ⇔ 1 − a² < 4ε(1 − ε).
            prime = act.prime(z, a, scratch)
            out[f"sigma_prime_mean/{l}"] = float(prime.sum()) / size
            bound = SATURATING[act.name] * epsilon * (1.0 - epsilon)
            out[f"saturation/{l}"] = np.count_nonzero(prime < bound) / size
        elif act.name == "softmax":
            far = np.abs(np.subtract(a, 0.5, out=scratch), out=scratch)
            out[f"saturation/{l}"] = np.count_nonzero(far > 0.5 - epsilon) / size
        else:  # relu, linear
            out[f"sigma_prime_mean/{l}"] = float(act.prime(z, a, scratch).sum()) / size
        if l == net.n_layers and act.name in ("sigmoid", "softmax"):
            # With targets y in {0, 1}: a > 1 − ε where y = 0, or a < ε where y = 1.
            off = np.abs(np.subtract(a, Y, out=scratch), out=scratch)
            out[f"wrong_saturation/{l}"] = np.count_nonzero(off > 1.0 - epsilon) / size
        if act.name == "relu":
            alive = np.count_nonzero(np.any(z > 0.0, axis=0))
            out[f"dead_fraction/{l}"] = (z.shape[1] - alive) / z.shape[1]
    return out


# σ'(z) at a = ε from an end, in units of ε(1 − ε): the saturation bound of each activation.
SATURATING = {"sigmoid": 1.0, "tanh": 4.0}


def _norm(x: Array) -> float:
    """||x|| (Frobenius for a matrix) of a contiguous array, by one BLAS dot product."""
    flat = x.reshape(-1)
    return math.sqrt(float(np.dot(flat, flat)))


def _mean_std(x: Array) -> tuple[float, float]:
    """Mean and standard deviation of all entries, from Σx and Σx² (one pass each).

    Σx²/n − mean² carries a rounding error of about eps·mean²; when that could exceed 1e-6 of
    the variance (a spread tiny next to the mean, or float32 data), ``np.std`` (two passes)
    gives the answer instead.
    """
    flat = x.reshape(-1)
    n = flat.size
    mean = float(flat.sum()) / n
    var = float(np.dot(flat, flat)) / n - mean * mean
    if var <= 1e6 * np.finfo(x.dtype).eps * mean * mean:
        return mean, float(flat.std())
    return mean, math.sqrt(var)


def update_ratios(net: Network, params_before: Array) -> dict[str, float]:
    """``update_ratio/W{l}`` between a saved copy of ``net.params`` and the current weights."""
    before, _ = param_views(params_before, [W.shape for W in net.W])
    out = {}
    for l, (W, W0) in enumerate(zip(net.W, before, strict=True), start=1):
        norm = _norm(W0)
        change = _norm(np.subtract(W, W0))
        out[f"update_ratio/W{l}"] = change / norm if norm > 0 else float("inf")
    return out
