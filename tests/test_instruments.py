"""Per-layer instruments against hand computations on small networks."""

from __future__ import annotations

import numpy as np
import pytest

from bpexp.cost import get_cost
from bpexp.instruments import measure, update_ratios
from bpexp.network import Network


def test_saturation_sigma_prime_and_activation_stats_by_hand():
    # One sigmoid layer 2 -> 2 with weights that put z at chosen values for two samples.
    net = Network([2, 2], "sigmoid", "sigmoid")
    net.W[0][...] = np.eye(2)
    X = np.array([[10.0, 0.0], [-10.0, 0.1]])  # z = X; a(10) > 0.99, a(-10) < 0.01
    Y = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = measure(net, X, Y, get_cost("quadratic", "sigmoid"), epsilon=0.01)
    a = 1 / (1 + np.exp(-X))
    assert out["saturation/1"] == 0.5  # 2 of the 4 (sample, unit) pairs
    assert out["wrong_saturation/1"] == 0.5  # both saturated at the wrong end
    assert out["sigma_prime_mean/1"] == pytest.approx(np.mean(a * (1 - a)))
    assert out["activation_mean/1"] == pytest.approx(a.mean())
    assert out["activation_std/1"] == pytest.approx(a.std())


def test_gradient_and_error_norms_by_hand():
    rng = np.random.default_rng(0)
    net = Network([3, 4, 2], "tanh", "sigmoid")
    net.params[...] = rng.standard_normal(net.params.size)
    X, Y = rng.standard_normal((5, 3)), np.eye(2)[[0, 1, 1, 0, 1]]
    cost = get_cost("cross_entropy", "sigmoid")
    out = measure(net, X, Y, cost)
    # Per-sample errors by hand: δ^2(x) = a^2 − y; δ^1(x) = (W^2)ᵀ δ^2 ⊙ (1 − (a^1)²).
    a1 = np.tanh(X @ net.W[0].T + net.b[0])
    a2 = 1 / (1 + np.exp(-(a1 @ net.W[1].T + net.b[1])))
    d2 = a2 - Y
    d1 = (d2 @ net.W[1]) * (1 - a1**2)
    assert out["delta_norm/2"] == pytest.approx(np.sqrt(np.mean(np.sum(d2**2, axis=1))))
    assert out["delta_norm/1"] == pytest.approx(np.sqrt(np.mean(np.sum(d1**2, axis=1))))
    assert out["grad_norm/b2"] == pytest.approx(np.linalg.norm(d2.mean(axis=0)))
    assert out["grad_norm/W1"] == pytest.approx(np.linalg.norm(d1.T @ X / 5))
    assert out["saturation/1"] == pytest.approx(np.mean(np.abs(a1) > 0.98))


def test_dead_relu_units_and_update_ratio():
    net = Network([2, 3, 1], "relu", "sigmoid")
    net.W[0][...] = [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]
    net.b[0][...] = [0.0, -5.0, 0.0]
    net.W[1][...] = [[1.0, 1.0, 1.0]]
    X = np.array([[1.0, 2.0], [2.0, -1.0]])  # unit 2 has z ≤ 0 on both: dead
    out = measure(net, X, np.array([[1.0], [0.0]]), get_cost("quadratic", "sigmoid"))
    assert out["dead_fraction/1"] == pytest.approx(1 / 3)
    assert "saturation/1" not in out and "saturation/2" in out
    before = net.params.copy()
    net.W[0][...] *= 1.1  # a 10% change of W^1, none of W^2
    ratios = update_ratios(net, before)
    assert ratios["update_ratio/W1"] == pytest.approx(0.1)
    assert ratios["update_ratio/W2"] == 0.0
