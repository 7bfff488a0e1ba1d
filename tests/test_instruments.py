"""Per-layer instruments against hand computations on small networks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bpexp.cost import get_cost
from bpexp.instruments import distances_from_init, gradient_noise, measure, update_ratios
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


def _reference(net: Network, X, Y, cost, epsilon: float) -> dict[str, float]:
    """The instruments' definitions written the plain way (masks, np.std, np.linalg.norm),
    from a forward pass and BP1-BP2 done here, not by the network."""
    a_list, z_list = [X], []
    for W, b, act in zip(net.W, net.b, net.activations, strict=True):
        z = a_list[-1] @ W.T + b
        a = np.empty_like(z)
        act.fn(z, a)
        z_list.append(z)
        a_list.append(a)
    m, L = X.shape[0], net.n_layers
    deltas = [None] * L
    deltas[-1] = cost.delta(
        z_list[-1], a_list[-1], Y, net.activations[-1], np.empty_like(Y), np.empty_like(Y)
    )
    for l in range(L - 1, 0, -1):
        act = net.activations[l - 1]
        prime = act.prime(z_list[l - 1], a_list[l], np.empty_like(z_list[l - 1]))
        deltas[l - 1] = (deltas[l] @ net.W[l]) * prime
    out = {}
    for l in range(1, L + 1):
        act, z, a, d = net.activations[l - 1], z_list[l - 1], a_list[l], deltas[l - 1]
        out[f"grad_norm/W{l}"] = np.linalg.norm(d.T @ a_list[l - 1])
        out[f"grad_norm/b{l}"] = np.linalg.norm(d.sum(axis=0))
        out[f"delta_norm/{l}"] = np.sqrt(np.mean(np.sum((m * d) ** 2, axis=1)))
        out[f"activation_mean/{l}"] = a.mean()
        out[f"activation_std/{l}"] = a.std()
        if act.name in ("sigmoid", "softmax"):
            out[f"saturation/{l}"] = np.mean((a < epsilon) | (a > 1 - epsilon))
        elif act.name == "tanh":
            out[f"saturation/{l}"] = np.mean(np.abs(a) > 1 - 2 * epsilon)
        if l == L and act.name in ("sigmoid", "softmax"):
            wrong = ((a > 1 - epsilon) & (Y == 0)) | ((a < epsilon) & (Y == 1))
            out[f"wrong_saturation/{l}"] = np.mean(wrong)
        if act.name != "softmax":
            out[f"sigma_prime_mean/{l}"] = act.prime(z, a, np.empty_like(z)).mean()
        if act.name == "relu":
            out[f"dead_fraction/{l}"] = np.mean(np.all(z <= 0, axis=0))
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("hidden", "output", "cost_name"),
    [
        ("sigmoid", "sigmoid", "quadratic"),
        ("tanh", "sigmoid", "cross_entropy"),
        ("relu", "softmax", "softmax_cross_entropy"),
        ("linear", "linear", "quadratic"),
    ],
)
def test_one_pass_statistics_match_the_plain_definitions(hidden, output, cost_name, dtype):
    # Weights large enough that many units saturate, some at the wrong end; 0/1 targets.
    rng = np.random.default_rng(3)
    net = Network([6, 8, 8, 4], hidden, output, dtype)
    net.params[...] = 2.5 * rng.standard_normal(net.params.size)
    X = rng.standard_normal((64, 6)).astype(dtype)
    Y = np.eye(4, dtype=dtype)[rng.integers(0, 4, 64)]
    cost = get_cost(cost_name, output)
    out = measure(net, X, Y, cost, epsilon=0.02)
    expected = _reference(net, X.astype("float64"), Y.astype("float64"), cost, 0.02)
    assert sorted(out) == sorted(expected)
    tol = 1e-9 if dtype == "float64" else 2e-5
    saturated = [v for k, v in out.items() if "saturation" in k]
    assert max(saturated, default=1.0) > 0.05  # the test exercises saturated units
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=tol, abs=tol), key


def test_activation_std_of_a_nearly_constant_layer():
    # All activations within 1e-9 of 0.7: Σa² − n·mean² cancels, np.std must step in.
    net = Network([1, 3], "sigmoid", "sigmoid")
    net.b[0][...] = np.log(0.7 / 0.3)
    X = np.linspace(-1.0, 1.0, 50)[:, None] * 1e-8
    net.W[0][...] = [[1.0], [0.5], [-0.2]]
    out = measure(net, X, np.zeros((50, 3)), get_cost("quadratic", "sigmoid"))
    a = 1 / (1 + np.exp(-(X @ net.W[0].T + net.b[0])))
    assert a.std() < 1e-8
    assert out["activation_std/1"] == pytest.approx(a.std(), rel=1e-6)


def _z_where(act_name: str, target: float) -> float:
    """A float z at which this platform's σ(z) is exactly ``target`` (searched among the floats
    next to the true root, because libm's tanh may round the root itself either way)."""
    from bpexp.activation import ACTIVATIONS

    root = {"sigmoid": 2 * np.arctanh(2 * target - 1), "tanh": np.arctanh(target)}[act_name]
    zs = root + np.arange(-500, 501) * np.spacing(root)
    a = np.empty_like(zs)
    ACTIVATIONS[act_name].fn(zs, a)
    (hits,) = np.nonzero(a == target)
    assert hits.size, f"no float z gives {act_name}(z) == {target}"
    return float(zs[hits[0]])


def test_saturation_boundary_is_not_saturated():
    # ε = 0.25 and a ∈ {0.25, 0.75} are exact floats, and so are a(1 − a) = ε(1 − ε) = 0.1875:
    # a unit exactly at the boundary is not saturated ("a < ε or a > 1 − ε" is strict), and an
    # output at exactly |a − y| = 1 − ε is not saturated at the wrong end.
    eps = 0.25
    net = Network([2, 2], "sigmoid", "sigmoid")
    net.W[0][...] = np.eye(2)  # z = x exactly
    X = np.array([[_z_where("sigmoid", 0.25), _z_where("sigmoid", 0.75)], [0.0, 5.0]])
    Y = np.array([[1.0, 0.0], [1.0, 0.0]])  # boundary outputs at |a − y| = 0.75 exactly
    out = measure(net, X, Y, get_cost("quadratic", "sigmoid"), epsilon=eps)
    # a = [[0.25, 0.75], [0.5, σ(5) ≈ 0.9933]]: only σ(5) is saturated, at the wrong end (y = 0).
    assert out["saturation/1"] == 0.25
    assert out["wrong_saturation/1"] == 0.25


def test_tanh_and_softmax_saturation_boundaries():
    # tanh: |a| > 1 − 2ε with ε = 0.25 is |a| > 0.5; a = ±0.5 exactly is on the boundary.
    # softmax: four equal outputs are exactly 0.25 = ε, on the boundary, and |0.25 − 1| = 1 − ε.
    eps = 0.25
    net = Network([2, 2, 4], "tanh", "softmax")
    net.W[0][...] = np.eye(2)
    half = _z_where("tanh", 0.5)
    X = np.array([[half, -half], [0.0, 3.0]])  # a^1 = [[0.5, −0.5], [0, tanh 3 ≈ 0.995]]
    Y = np.eye(4)[[0, 3]]  # W^2 = 0, b^2 = 0: every output is exactly 1/4
    out = measure(net, X, Y, get_cost("softmax_cross_entropy", "softmax"), epsilon=eps)
    assert out["saturation/1"] == 0.25  # only tanh(3)
    assert out["saturation/2"] == 0.0
    assert out["wrong_saturation/2"] == 0.0
    # A few ulps past the boundary on the saturated side, the same units count.
    past = half + 8 * np.spacing(half)
    X[0] = [past, -past]
    out = measure(net, X, Y, get_cost("softmax_cross_entropy", "softmax"), epsilon=eps)
    assert out["saturation/1"] == 0.75


def per_example_gradients(net: Network, X, Y, cost) -> np.ndarray:
    """Brute force: one backprop per sample; row x is the full flat gradient of C(x)."""
    rows = []
    for x in range(X.shape[0]):
        net.backprop(X[x : x + 1], Y[x : x + 1], cost)
        rows.append(net.grad.copy())
    return np.array(rows)


@pytest.mark.parametrize(
    ("hidden", "output", "cost_name"),
    [
        ("sigmoid", "sigmoid", "quadratic"),
        ("relu", "softmax", "softmax_cross_entropy"),
    ],
)
def test_grad_noise_scale_against_brute_force_per_example_gradients(hidden, output, cost_name):
    rng = np.random.default_rng(4)
    net = Network([5, 6, 4, 3], hidden, output)
    net.params[...] = rng.standard_normal(net.params.size) * 0.7
    m = 40
    X, Y = rng.standard_normal((m, 5)), np.eye(3)[rng.integers(0, 3, m)]
    cost = get_cost(cost_name, output)
    g = per_example_gradients(net, X, Y, cost)
    measure(net, X, Y, cost)
    out = gradient_noise(net, X)
    G = g.mean(axis=0)
    trace_sigma = np.trace(np.cov(g, rowvar=False, ddof=1))  # unbiased sample covariance
    expected = trace_sigma / (G @ G - trace_sigma / m)
    assert expected > 0
    assert out["grad_noise_scale"] == pytest.approx(expected, rel=1e-9)
    # Layer 2's weights alone: columns of the flat layout W1, b1, W2, b2, W3, b3.
    start = 6 * 5 + 6
    cols = slice(start, start + 4 * 6)
    trace_2 = np.trace(np.cov(g[:, cols], rowvar=False, ddof=1))
    G2 = G[cols]
    assert out["grad_snr/W2"] == pytest.approx((G2 @ G2 - trace_2 / m) / trace_2, rel=1e-9)


def test_grad_noise_scale_is_left_out_when_the_probe_cannot_resolve_the_mean_gradient():
    # Two samples with opposite gradients: the mean gradient is zero, all of it is noise.
    net = Network([1, 1], "linear", "linear")
    net.W[0][...] = 0.0
    X, Y = np.array([[1.0], [1.0]]), np.array([[1.0], [-1.0]])  # g_w = g_b = ±1: mean 0
    net.backprop(X, Y, get_cost("quadratic", "linear"))
    assert "grad_noise_scale" not in gradient_noise(net, X)
    net.backprop(X[:1], Y[:1], get_cost("quadratic", "linear"))
    one = gradient_noise(net, X[:1])
    assert one == {}


def test_distance_from_init():
    net = Network([2, 3, 1], "sigmoid", "sigmoid")
    net.params[...] = np.arange(net.params.size, dtype=float) - 5
    initial = net.params.copy()
    net.W[0][0, 0] += 3.0
    net.W[0][1, 1] -= 4.0
    net.b[1][...] += 100.0  # biases are not part of the weight distance
    out = distances_from_init(net, initial)
    assert out["distance_from_init/W1"] == pytest.approx(5.0)
    assert out["distance_from_init/W2"] == 0.0
    W1_0 = (np.arange(6, dtype=float) - 5).reshape(3, 2)
    assert out["distance_from_init_ratio/W1"] == pytest.approx(5.0 / np.linalg.norm(W1_0))


# --- Cockpit's gradient tests, α and update size (issue 26) ----------------------------------

from bpexp.cost import COSTS  # noqa: E402
from bpexp.curvature import HessianOperator  # noqa: E402
from bpexp.instruments import (  # noqa: E402
    LineObservation,
    fit_alpha,
    gradient_tests,
    observe_line,
    sample_losses,
    snapshot,
    step_alpha,
)

CASES = [
    ("sigmoid", "sigmoid", "quadratic"),
    ("tanh", "sigmoid", "cross_entropy"),
    ("relu", "softmax", "softmax_cross_entropy"),
]


def _case(hidden, output, cost_name, m=30, seed=5):
    rng = np.random.default_rng(seed)
    net = Network([5, 6, 4, 3], hidden, output)
    net.params[...] = rng.standard_normal(net.params.size) * 0.7
    X, Y = rng.standard_normal((m, 5)), np.eye(3)[rng.integers(0, 3, m)]
    return net, X, Y, get_cost(cost_name, output)


@pytest.mark.parametrize(("hidden", "output", "cost_name"), CASES)
def test_gradient_tests_against_brute_force_per_example_gradients(hidden, output, cost_name):
    net, X, Y, cost = _case(hidden, output, cost_name)
    m = X.shape[0]
    g = per_example_gradients(net, X, Y, cost)  # one backprop per sample, each g_x formed
    G = g.mean(axis=0)
    G2 = G @ G
    # Cockpit's definitions, term by term, on the formed gradients.
    norm = np.sqrt(np.sum((g - G) ** 2) / (m - 1) / (m * G2))
    p = g @ G
    inner = np.sqrt(np.sum((p - G2) ** 2) / (m - 1) / (m * G2**2))
    orthogonal = g - np.outer(p / G2, G)
    ortho = np.sqrt(np.sum(orthogonal**2) / (m - 1) / (m * G2))
    net.backprop(X, Y, cost)
    out = gradient_tests(net, X, "probe")
    assert out["norm_test/probe"] == pytest.approx(norm, rel=1e-9)
    assert out["inner_product_test/probe"] == pytest.approx(inner, rel=1e-9)
    assert out["orthogonality_test/probe"] == pytest.approx(ortho, rel=1e-9)
    # The norm test is the noise scale of gradient_noise seen at batch size m, uncorrected:
    # θ² = tr(Σ)/(m ||Ĝ||²).
    trace_sigma = np.trace(np.cov(g, rowvar=False, ddof=1))
    assert out["norm_test/probe"] ** 2 == pytest.approx(trace_sigma / (m * G2), rel=1e-9)


def test_gradient_tests_are_left_out_without_two_samples_or_a_mean_gradient():
    net = Network([1, 1], "linear", "linear")
    X, Y = np.array([[1.0], [1.0]]), np.array([[1.0], [-1.0]])  # gradients ±1: mean 0
    net.backprop(X, Y, get_cost("quadratic", "linear"))
    assert gradient_tests(net, X, "batch") == {}
    net.backprop(X[:1], Y[:1], get_cost("quadratic", "linear"))
    assert gradient_tests(net, X[:1], "batch") == {}


@pytest.mark.parametrize("name", sorted(COSTS))
def test_sample_losses_are_the_cost_of_each_row(name):
    output = COSTS[name].outputs[0]
    net, X, Y, cost = _case("tanh", output, name)
    a = net.forward(X).copy()
    a[0, 0] = 0.0 if output != "linear" else a[0, 0]  # a clipped value: cross-entropy's floor
    losses = sample_losses(cost, a, Y)
    for i in range(X.shape[0]):
        assert losses[i] == pytest.approx(cost.fn(a[i : i + 1], Y[i : i + 1]), rel=1e-12)
    generic = sample_losses(dataclasses.replace(cost, name="other"), a, Y)
    np.testing.assert_allclose(generic, losses, rtol=1e-12)


@pytest.mark.parametrize(("hidden", "output", "cost_name"), CASES)
def test_line_observation_against_brute_force(hidden, output, cost_name):
    net, X, Y, cost = _case(hidden, output, cost_name)
    u = np.random.default_rng(7).standard_normal(net.params.size)
    u /= np.linalg.norm(u)
    g = per_example_gradients(net, X, Y, cost)
    losses = [cost.fn(net.forward(X[i : i + 1]), Y[i : i + 1]) for i in range(X.shape[0])]
    net.backprop(X, Y, cost)
    seen = observe_line(net, X, Y, cost, u)
    assert seen.f == pytest.approx(np.mean(losses), rel=1e-12)
    assert seen.var_f == pytest.approx(np.var(losses, ddof=1), rel=1e-9)
    assert seen.df == pytest.approx(np.mean(g @ u), rel=1e-9)
    assert seen.var_df == pytest.approx(np.var(g @ u, ddof=1), rel=1e-9)


def _quadratic_observation(h: float, x: float, u: float) -> LineObservation:
    """f(x) = ½hx² and its slope along the unit direction u, from two noisy 'samples' whose
    mean is f: the variances only weight a fit that is exact anyway."""
    return LineObservation(0.5 * h * x * x, h * x * u, 0.3, 0.7)


@pytest.mark.parametrize("eta_h", [0.05, 0.5, 1.0, 1.5, 2.0, 2.5])
def test_alpha_of_a_gradient_step_on_a_quadratic(eta_h):
    # f(x) = ½hx², step x' = x − ηhx. Along u = −sign(x) the step has length t = ηh|x|, the
    # quadratic's minimum is at |x| and it is back at f(x) at ᾱ = 2|x|: α = 2t/ᾱ − 1 = ηh − 1.
    # ηh = 1 jumps to the minimum (α = 0); ηh = 2, SGD's stability edge, to the far side (1).
    h, x = 3.0, -2.0
    x_new = x - (eta_h / h) * h * x
    t, u = abs(x_new - x), np.sign(x_new - x)
    alpha = fit_alpha(t, _quadratic_observation(h, x, u), _quadratic_observation(h, x_new, u))
    assert alpha == pytest.approx(eta_h - 1.0, abs=1e-12)


def test_alpha_of_a_concave_fit_or_no_step_is_minus_one():
    concave = fit_alpha(1.0, LineObservation(0.0, 0.0, 1, 1), LineObservation(-1.0, -2.0, 1, 1))
    assert concave == -1.0
    assert fit_alpha(0.0, LineObservation(1, -1, 1, 1), LineObservation(1, -1, 1, 1)) == -1.0


def test_alpha_and_update_size_of_an_sgd_step_on_a_linear_regression():
    # A linear network under the quadratic cost is a quadratic in θ, so the fit is exact at
    # any weights and whatever the per-sample variances: for the SGD step −ηg, the curvature
    # along the step is gᵀHg/gᵀg and α = η gᵀHg/gᵀg − 1.
    rng = np.random.default_rng(8)
    net = Network([4, 3], "linear", "linear")
    net.params[...] = rng.standard_normal(net.params.size)
    X, Y = rng.standard_normal((25, 4)), rng.standard_normal((25, 3))
    cost = get_cost("quadratic", "linear")
    net.backprop(X, Y, cost)
    g = net.grad.copy()
    H_op = HessianOperator(net, X, Y, cost)
    curvature = g @ H_op(g) / (g @ g)
    before = net.params.copy()
    for eta, expected in ((1.0 / curvature, 0.0), (0.3, 0.3 * curvature - 1.0)):
        after = before - eta * g
        out = step_alpha(net, X, Y, cost, before, after)
        assert out["update_size"] == pytest.approx(eta * np.linalg.norm(g), rel=1e-12)
        assert out["alpha"] == pytest.approx(expected, abs=1e-9)
        np.testing.assert_array_equal(net.params, before)  # put back exactly


def test_alpha_from_snapshots_kept_of_both_ends_is_the_same():
    net, X, Y, cost = _case("sigmoid", "sigmoid", "quadratic")
    net.backprop(X, Y, cost)
    before = net.params.copy()
    at_before = snapshot(net, X, Y, cost, copy=True)
    after = before - 2.0 * net.grad
    plain = step_alpha(net, X, Y, cost, before, after)
    np.testing.assert_array_equal(net.params, before)
    net.params[...] = after
    net.backprop(X, Y, cost)
    at_after = snapshot(net, X, Y, cost, copy=True)
    net.backprop(X[::-1], Y[::-1], cost)  # the buffers move on; the copies stay
    kept = step_alpha(net, X, Y, cost, before, after, at_before, at_after)
    assert kept == plain  # the same arithmetic on the same numbers
    assert set(plain) == {"alpha", "update_size"}
    np.testing.assert_array_equal(net.params, after)
