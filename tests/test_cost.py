"""Costs: values against their formulas, δ^L (BP1) and the allowed pairs."""

import numpy as np
import pytest

from bpexp.activation import ACTIVATIONS
from bpexp.cost import COSTS, get_cost
from bpexp.errors import ConfigError

Z = np.array([[2.0, -1.0, 0.5], [0.0, 40.0, -40.0]])
Y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_values_match_formulas():
    a = sigmoid(Z / 10)
    assert COSTS["quadratic"].fn(a, Y) == pytest.approx(np.sum((a - Y) ** 2) / 4)
    bce = -np.sum(Y * np.log(a) + (1 - Y) * np.log(1 - a)) / 2
    assert COSTS["cross_entropy"].fn(a, Y) == pytest.approx(bce, rel=1e-9)
    soft = np.exp(Z / 10) / np.exp(Z / 10).sum(axis=1, keepdims=True)
    assert COSTS["softmax_cross_entropy"].fn(soft, Y) == pytest.approx(
        -np.sum(Y * np.log(soft)) / 2
    )


@pytest.mark.parametrize(
    ("cost", "act"), [("cross_entropy", "sigmoid"), ("softmax_cross_entropy", "softmax")]
)
def test_cross_entropy_delta_is_a_minus_y_exactly(cost, act):
    activation = ACTIVATIONS[act]
    a = activation.fn(Z, np.empty_like(Z))
    delta = COSTS[cost].delta(Z, a, Y, activation, np.empty_like(Z), np.empty_like(Z))
    assert np.array_equal(delta, (a - Y) * (1.0 / 2))
    # A saturated wrong output (z = −40 → a ≈ 4e-18, y = 1 would be wrong) still has a finite,
    # full-size error: no σ' factor, no division by a.
    assert np.all(np.isfinite(delta))


def test_quadratic_delta_has_sigma_prime_factor():
    act = ACTIVATIONS["sigmoid"]
    a = sigmoid(Z)
    delta = COSTS["quadratic"].delta(Z, a, Y, act, np.empty_like(Z), np.empty_like(Z))
    np.testing.assert_allclose(delta, (a - Y) * a * (1 - a) / 2)
    # Make row 1's output 2 wrong (target 1 at z = −40): the σ' factor all but stops learning,
    # the slowdown of saturated neurons that cross-entropy removes.
    Y_wrong = Y.copy()
    Y_wrong[1, 2] = 1.0
    delta = COSTS["quadratic"].delta(Z, a, Y_wrong, act, np.empty_like(Z), np.empty_like(Z))
    assert abs(delta[1, 2]) < 1e-16
    ce = COSTS["cross_entropy"].delta(Z, a, Y_wrong, act, np.empty_like(Z), np.empty_like(Z))
    assert ce[1, 2] == pytest.approx(-0.5)


def test_binary_cross_entropy_is_finite_when_saturated():
    a = np.array([[1.0, 0.0]])
    assert np.isfinite(COSTS["cross_entropy"].fn(a, np.array([[0.0, 1.0]])))


@pytest.mark.parametrize(
    ("cost", "output"),
    [
        ("cross_entropy", "softmax"),
        ("cross_entropy", "linear"),
        ("quadratic", "softmax"),
        ("softmax_cross_entropy", "sigmoid"),
    ],
)
def test_incompatible_pairs_are_rejected(cost, output):
    with pytest.raises(ConfigError, match=rf"cost.name='{cost}'.*network.output_activation"):
        get_cost(cost, output)


def test_unknown_cost_names_the_key():
    with pytest.raises(ConfigError, match="cost.name='hinge'"):
        get_cost("hinge", "sigmoid")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("cost", "act"), [("cross_entropy", "sigmoid"), ("softmax_cross_entropy", "softmax")]
)
def test_cross_entropy_is_finite_for_exact_zeros_and_ones(dtype, cost, act):
    # A saturated sigmoid or softmax output is exactly 0 or 1 in float32 already at |z| ≈ 17.
    a = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=dtype)
    y = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    value = COSTS[cost].fn(a, y)
    assert np.isfinite(value) and value > 10  # the wrong, saturated sample costs a lot
    z = np.array([[-40.0, 40.0]], dtype=dtype)
    out = ACTIVATIONS[act].fn(z, np.empty_like(z))
    assert np.isfinite(COSTS[cost].fn(out, np.array([[1.0, 0.0]], dtype=dtype)))
