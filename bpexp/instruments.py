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
- ``grad_noise_scale``: B_simple = tr(Σ)/||G||² over all parameters, from the per-example
  gradients of the probe (:func:`gradient_noise`); ``grad_snr/W{l}``: ||G_l||²/tr(Σ_l) for the
  weights of layer l alone (1/B of that layer).
- ``distance_from_init/W{l}``: ||W^l − W^l_0||_F from the initial weights, and
  ``distance_from_init_ratio/W{l}``: the same over ||W^l_0||_F (:func:`distances_from_init`).
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


def gradient_noise(net: Network, X: Array) -> dict[str, float]:
    """``grad_noise_scale`` and ``grad_snr/W{l}`` from the last ``backprop`` on the probe X
    (:func:`measure` does one; the trace and ``net.grad`` must still be those of X).

    The per-example gradient of W^l is the outer product δ^l(x) a^{l-1}(x)ᵀ, so its squared
    norm is ||δ^l(x)||² ||a^{l-1}(x)||² (and ||δ^l(x)||² for b^l): Σ_x ||g_x||² costs one pass
    over the trace, no per-example gradient is formed. With m probe samples and Ĝ their mean
    gradient (``net.grad``), both estimates are unbiased (McCandlish et al. 2018):
        tr(Σ) ≈ S = (Σ_x ||g_x||² − m ||Ĝ||²) / (m − 1)   (sample covariance, 1/(m − 1)),
        ||G||² ≈ ||Ĝ||² − S/m                             (E||Ĝ||² = ||G||² + tr(Σ)/m),
    and B_simple = S / (||Ĝ||² − S/m). Where the corrected ||G||² is ≤ 0 the probe cannot tell
    the mean gradient from noise: ``grad_noise_scale`` is then left out (no point is logged
    that epoch) rather than given a meaningless value; with m = 1 nothing is measured.
    """
    trace = net.trace(X)
    m = X.shape[0]
    if m < 2:
        return {}
    out: dict[str, float] = {}
    total_sq, total_mean_sq = 0.0, 0.0
    for l in range(1, net.n_layers + 1):
        # δ rows hold δ(x)/m: the per-example squared norms carry a factor m², undone here.
        delta_sq = np.einsum("ij,ij->i", trace.delta[l - 1], trace.delta[l - 1]) * (m * m)
        a_sq = np.einsum("ij,ij->i", trace.a[l - 1], trace.a[l - 1])
        weight_sq = float(delta_sq @ a_sq)
        mean_sq = _norm(net.gW[l - 1]) ** 2
        variance = (weight_sq - m * mean_sq) / (m - 1)
        if variance > 0:  # else every example has the same gradient: no noise to compare
            out[f"grad_snr/W{l}"] = (mean_sq - variance / m) / variance
        total_sq += weight_sq + float(delta_sq.sum())
        total_mean_sq += mean_sq + _norm(net.gb[l - 1]) ** 2
    variance = (total_sq - m * total_mean_sq) / (m - 1)
    signal = total_mean_sq - variance / m
    if signal > 0:
        out["grad_noise_scale"] = variance / signal
    return out


def distances_from_init(net: Network, params_init: Array) -> dict[str, float]:
    """``distance_from_init/W{l}`` = ||W^l − W^l_0||_F and ``distance_from_init_ratio/W{l}``
    (over ||W^l_0||_F, inf when W^l_0 = 0) against a copy of the initial ``net.params``."""
    initial, _ = param_views(params_init, [W.shape for W in net.W])
    out = {}
    for l, (W, W0) in enumerate(zip(net.W, initial, strict=True), start=1):
        distance = _norm(np.subtract(W, W0))
        norm = _norm(W0)
        out[f"distance_from_init/W{l}"] = distance
        out[f"distance_from_init_ratio/W{l}"] = distance / norm if norm > 0 else float("inf")
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
