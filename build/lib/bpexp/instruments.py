"""Per-layer measurements that show BP1–BP4 at work (SCIENCE.md, "Saturation ...").

Measured on a fixed probe batch of training samples. Layers are numbered l = 1..L as in the notes.

- ``grad_norm/W{l}``, ``grad_norm/b{l}``: ||∂C/∂W^l||, ||∂C/∂b^l|| of the batch-mean cost.
- ``delta_norm/{l}``: root mean square over samples of the per-sample error ||δ^l(x)||.
- ``saturation/{l}``: fraction of (sample, unit) pairs that are saturated: sigmoid and softmax
  ``a < ε`` or ``a > 1 − ε``; tanh ``|a| > 1 − 2ε``. Not defined for relu and linear layers.
- ``wrong_saturation/{L}``: output layer only, sigmoid or softmax: fraction of (sample, output)
  pairs saturated at the wrong end, ``a > 1 − ε`` where y = 0 or ``a < ε`` where y = 1. These are
  the outputs that BP1's σ' factor all but freezes under the quadratic cost (the learning
  slowdown); cross-entropy's δ^L = a − y moves them at full speed.
- ``sigma_prime_mean/{l}``: mean σ'(z^l) over the probe (not for softmax outputs).
- ``activation_mean/{l}``, ``activation_std/{l}``: of a^l over samples and units.
- ``dead_fraction/{l}``: relu layers: fraction of units with z ≤ 0 for every probe sample.
- ``update_ratio/W{l}``: ||W^l_end − W^l_start|| / ||W^l_start|| over the last epoch.
"""

from __future__ import annotations

import numpy as np

from bpexp.cost import Cost
from bpexp.network import Network, param_views

Array = np.ndarray
DEFAULT_EPSILON = 0.01


def measure(
    net: Network, X: Array, Y: Array, cost: Cost, epsilon: float = DEFAULT_EPSILON
) -> dict[str, float]:
    """All per-layer instruments on the probe batch (X, Y); overwrites ``net.grad``."""
    net.backprop(X, Y, cost)
    trace = net.trace(X)
    m = X.shape[0]
    out: dict[str, float] = {}
    for l in range(1, net.n_layers + 1):
        act = net.activations[l - 1]
        z, a, delta = trace.z[l - 1], trace.a[l], trace.delta[l - 1]
        out[f"grad_norm/W{l}"] = float(np.linalg.norm(net.gW[l - 1]))
        out[f"grad_norm/b{l}"] = float(np.linalg.norm(net.gb[l - 1]))
        # delta holds δ/m per row: the RMS of per-sample norms is m·||delta||_F/√m.
        out[f"delta_norm/{l}"] = float(np.linalg.norm(delta) * np.sqrt(m))
        out[f"activation_mean/{l}"] = float(a.mean())
        out[f"activation_std/{l}"] = float(a.std())
        if act.name in ("sigmoid", "softmax"):
            out[f"saturation/{l}"] = float(np.mean((a < epsilon) | (a > 1.0 - epsilon)))
        elif act.name == "tanh":
            out[f"saturation/{l}"] = float(np.mean(np.abs(a) > 1.0 - 2.0 * epsilon))
        if l == net.n_layers and act.name in ("sigmoid", "softmax"):
            wrong = ((a > 1.0 - epsilon) & (Y == 0)) | ((a < epsilon) & (Y == 1))
            out[f"wrong_saturation/{l}"] = float(np.mean(wrong))
        if act.name != "softmax":
            out[f"sigma_prime_mean/{l}"] = float(act.prime(z, a, np.empty_like(z)).mean())
        if act.name == "relu":
            out[f"dead_fraction/{l}"] = float(np.mean(np.all(z <= 0.0, axis=0)))
    return out


def update_ratios(net: Network, params_before: Array) -> dict[str, float]:
    """``update_ratio/W{l}`` between a saved copy of ``net.params`` and the current weights."""
    before, _ = param_views(params_before, [W.shape for W in net.W])
    out = {}
    for l, (W, W0) in enumerate(zip(net.W, before, strict=True), start=1):
        norm = float(np.linalg.norm(W0))
        change = float(np.linalg.norm(W - W0))
        out[f"update_ratio/W{l}"] = change / norm if norm > 0 else float("inf")
    return out
