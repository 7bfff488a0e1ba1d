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
- ``norm_test/{probe,batch}``, ``inner_product_test/{probe,batch}``,
  ``orthogonality_test/{probe,batch}``: Cockpit's three gradient tests (Byrd et al. 2012,
  Bollapragada et al. 2018) from per-example gradient norms and projections, never forming a
  per-example gradient (:func:`gradient_tests`).
- ``alpha`` and ``update_size``: where one step (the trainer takes each epoch's first) lands
  on a quadratic fitted along it to the probe's loss and slope before and after (Cockpit's α:
  0 = the minimum, 1 = the far side), and ||Δθ|| of that step (:func:`step_alpha`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


# --- Cockpit's gradient tests, α and update size (issue 26) ----------------------------------


def _squares(trace) -> Array:
    """Per-example squared gradient norms ||g_x||² over all parameters, from the trace of the
    last ``backprop`` (scale 1). g_x of W^l is δ^l(x) a^{l-1}(x)ᵀ and of b^l is δ^l(x), so
    ||g_x||² = Σ_l ||δ^l(x)||² (||a^{l-1}(x)||² + 1)."""
    m = trace.a[0].shape[0]
    squares = np.zeros(m)
    for delta, a in zip(trace.delta, trace.a, strict=False):
        squares += np.einsum("ij,ij->i", delta, delta) * (np.einsum("ij,ij->i", a, a) + 1.0)
    return squares * (m * m)  # δ rows hold δ(x)/m


def _projections(net: Network, trace, direction: Array) -> Array:
    """Per-example projections g_x·D of the gradients onto D (flat, the layout of
    ``net.params``) from a trace (scale 1): g_x·D = Σ_l δ^l(x)·(D_W^l a^{l-1}(x) + D_b^l), one
    product of the activations with D_W^l per layer, as a forward pass with D for weights. (The
    pairwise form g_x·g_y = (a_x·a_y)(δ_x·δ_y) gives the same sums at m² cost.)"""
    m = trace.a[0].shape[0]
    DW, Db = param_views(direction, [W.shape for W in net.W])
    projections = np.zeros(m)
    for l, (delta, a) in enumerate(zip(trace.delta, trace.a, strict=False)):
        projections += np.einsum("ij,ij->i", delta, a @ DW[l].T + Db[l])
    return projections * m


def gradient_tests(net: Network, X: Array, where: str) -> dict[str, float]:
    """Cockpit's norm, inner-product and orthogonality tests on the m samples of the last
    ``backprop`` (on X, scale 1; ``net.grad`` is their mean gradient Ĝ), named
    ``norm_test/{where}``, ``inner_product_test/{where}``, ``orthogonality_test/{where}``.

    Each is the largest tolerance for which the test would pass, as Cockpit computes it, with
    g_x the per-example gradients and p_x = g_x·Ĝ:
        norm test (Byrd et al. 2012, eq. 3.9):
            √( Σ_x ||g_x − Ĝ||² / (m − 1) / (m ||Ĝ||²) )
        inner-product test (Bollapragada et al. 2018, eq. 2.6):
            √( Σ_x (p_x − ||Ĝ||²)² / (m − 1) / (m ||Ĝ||⁴) )
        orthogonality test (Bollapragada et al. 2018, eq. 3.3):
            √( Σ_x ||g_x − (p_x/||Ĝ||²) Ĝ||² / (m − 1) / (m ||Ĝ||²) )
    The sums come from ||g_x||² and p_x (:func:`_squares`, :func:`_projections`), no
    per-example gradient is formed: Σ||g_x − Ĝ||² = Σ||g_x||² − m||Ĝ||², Σ(p_x − ||Ĝ||²)² =
    Σp_x² − m||Ĝ||⁴ (the mean of p_x is ||Ĝ||²) and Σ||g_x − (p_x/||Ĝ||²)Ĝ||² =
    Σ||g_x||² − Σp_x²/||Ĝ||². Nothing with m < 2 or Ĝ = 0.
    """
    m = X.shape[0]
    mean_sq = float(np.dot(net.grad, net.grad))
    if m < 2 or not mean_sq > 0:
        return {}
    trace = net.trace(X)
    total_sq = float(_squares(trace).sum())
    projections = _projections(net, trace, net.grad)
    proj_sq = float(projections @ projections)
    norm_var = max(total_sq - m * mean_sq, 0.0) / (m - 1)
    inner_var = max(proj_sq - m * mean_sq * mean_sq, 0.0) / (m - 1)
    ortho_var = max(total_sq - proj_sq / mean_sq, 0.0) / (m - 1)
    return {
        f"norm_test/{where}": math.sqrt(norm_var / (m * mean_sq)),
        f"inner_product_test/{where}": math.sqrt(inner_var / (m * mean_sq * mean_sq)),
        f"orthogonality_test/{where}": math.sqrt(ortho_var / (m * mean_sq)),
    }


def sample_losses(cost: Cost, a: Array, Y: Array) -> Array:
    """The cost of each sample (row) of the outputs ``a``; their mean is ``cost.fn(a, Y)``."""
    if cost.name == "quadratic":
        diff = a - Y
        return 0.5 * np.einsum("ij,ij->i", diff, diff)
    if cost.name == "cross_entropy":
        a_safe = np.clip(a, np.finfo(a.dtype).tiny, 1.0 - np.finfo(a.dtype).epsneg)
        return -np.sum(Y * np.log(a_safe) + (1.0 - Y) * np.log1p(-a_safe), axis=1)
    if cost.name == "softmax_cross_entropy":
        return -np.sum(Y * np.log(np.maximum(a, np.finfo(a.dtype).tiny)), axis=1)
    return np.array([cost.fn(a[i : i + 1], Y[i : i + 1]) for i in range(a.shape[0])])


@dataclass(frozen=True)
class ProbeSnapshot:
    """What a line observation needs from one ``backprop`` on the probe: the inputs of every
    layer ``a`` (a^0 = X .. a^{L-1}), the errors ``delta`` (rows δ/m, scale 1) and the
    per-sample losses. Taken with ``copy=True`` it outlives the network's buffers."""

    a: list[Array]
    delta: list[Array]
    losses: Array


def snapshot(net: Network, X: Array, Y: Array, cost: Cost, copy: bool = False) -> ProbeSnapshot:
    """The :class:`ProbeSnapshot` of the last ``backprop`` on (X, Y) (scale 1)."""
    trace = net.trace(X)
    losses = sample_losses(cost, trace.a[-1], Y)
    a, delta = trace.a[:-1], list(trace.delta)
    if copy:
        a = [a[0], *(x.copy() for x in a[1:])]
        delta = [d.copy() for d in delta]
    return ProbeSnapshot(a, delta, losses)


@dataclass(frozen=True)
class LineObservation:
    """The loss f and its slope f' along a unit direction u at one point, on m samples: the
    means over samples and their variances over samples (ddof 1), as Cockpit's α uses them."""

    f: float
    df: float
    var_f: float
    var_df: float


def observe(net: Network, state: ProbeSnapshot, unit: Array) -> LineObservation:
    """f, f' = ∇C·u and their per-sample variances from a snapshot (``net`` gives the shapes)."""
    slopes = _projections(net, state, unit)
    ddof = 1 if slopes.size > 1 else 0
    return LineObservation(
        float(state.losses.mean()),
        float(slopes.mean()),
        float(state.losses.var(ddof=ddof)),
        float(slopes.var(ddof=ddof)),
    )


def observe_line(net: Network, X: Array, Y: Array, cost: Cost, unit: Array) -> LineObservation:
    """f, f' = ∇C·u and their per-sample variances from the last ``backprop`` on (X, Y)."""
    return observe(net, snapshot(net, X, Y, cost), unit)


# Cockpit's stand-in for a variance of 0 in the fit's weights.
ALPHA_EPS = 1e-10


def fit_alpha(t: float, start: LineObservation, end: LineObservation) -> float | None:
    """Cockpit's α of a step of length t from the observations at its two ends.

    Fits f(τ) = c + bτ + aτ² to f(0), f(t), f'(0), f'(t) by least squares weighted by the
    inverse variances (a variance of 0 is replaced by 1e-10, as Cockpit does). The quadratic
    returns to f(0) at ᾱ = −b/a, its minimum is at ᾱ/2, and α = 2t/ᾱ − 1: −1 for no step,
    0 for a step to the minimum, 1 for a step to the far side at the starting height, above 1
    for a step that climbs. A concave fit (a < 0) gives −1, as in Cockpit; a fit that cannot be
    made (a singular system, e.g. t = 0) gives None, or −1 when t = 0.
    """
    Phi = np.array([[1.0, 0.0, 0.0], [1.0, t, t * t], [0.0, 1.0, 0.0], [0.0, 1.0, 2.0 * t]]).T
    variances = [start.var_f, end.var_f, start.var_df, end.var_df]
    variances = [v if v != 0 else ALPHA_EPS for v in variances]
    observed = np.array([start.f, end.f, start.df, end.df])
    try:
        weights = np.diag(1.0 / np.array(variances))
        mu = np.linalg.solve(Phi @ weights @ Phi.T, Phi @ weights @ observed)
    except np.linalg.LinAlgError:
        return -1.0 if t == 0.0 else None
    if not np.all(np.isfinite(mu)):
        return -1.0 if t == 0.0 else None
    if mu[2] < 0:
        return -1.0
    return float(2.0 * t * mu[2] / -mu[1] - 1.0) if mu[1] != 0 else None


def step_direction(before: Array, after: Array) -> tuple[float, Array]:
    """t = ||after − before|| and the unit vector (after − before)/t (the difference itself
    when t = 0)."""
    step = np.subtract(after, before)
    t = _norm(step)
    return t, (step / t if t > 0 else step)


def step_alpha(
    net: Network,
    X: Array,
    Y: Array,
    cost: Cost,
    before: Array,
    after: Array,
    at_before: ProbeSnapshot | None = None,
    at_after: ProbeSnapshot | None = None,
) -> dict[str, float]:
    """``alpha`` and ``update_size`` of the step from the weights ``before`` to ``after``
    (flat copies of ``net.params``), measured on the samples (X, Y).

    update_size = t = ||after − before|| over all parameters; u = (after − before)/t. f and f'
    along u are observed at both ends (:func:`observe`) and fitted by :func:`fit_alpha`. An end
    without a snapshot (``at_before``, ``at_after``: from a ``backprop`` on (X, Y) at those
    weights) gets one: ``backprop`` on (X, Y) there, then ``net.params`` is put back exactly
    as it was (``net.grad`` and the buffers of X's size are overwritten). α is left out when
    the fit cannot be made or an observation is not finite.
    """
    t, unit = step_direction(before, after)
    out = {"update_size": t}
    if not t > 0 or not math.isfinite(t):
        return out
    current = net.params.copy()
    observations = []
    try:
        for weights, state in ((before, at_before), (after, at_after)):
            if state is None:
                net.params[...] = weights
                net.backprop(X, Y, cost)
                state = snapshot(net, X, Y, cost)
            observations.append(observe(net, state, unit))
    finally:
        net.params[...] = current
    start, end = observations
    if not all(math.isfinite(v) for o in observations for v in vars(o).values()):
        return out
    alpha = fit_alpha(t, start, end)
    if alpha is not None:
        out["alpha"] = alpha
    return out
