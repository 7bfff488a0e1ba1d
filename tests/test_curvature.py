"""Hessian-vector products against finite differences of the gradient, and the Lanczos top
eigenvalue against a dense Hessian's eigvalsh."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bpexp.activation import ACTIVATIONS
from bpexp.cost import get_cost
from bpexp.curvature import HessianOperator, hessian_vector_product, sharpness, top_eigenvalue
from bpexp.network import Network, initialize

# Every (hidden activation, output activation, cost) bpexp allows.
PAIRS = [
    (hidden, output, cost)
    for hidden in ("sigmoid", "tanh", "relu", "linear")
    for output, cost in (
        ("sigmoid", "quadratic"),
        ("linear", "quadratic"),
        ("sigmoid", "cross_entropy"),
        ("softmax", "softmax_cross_entropy"),
    )
]


def tiny(hidden: str, output: str, cost_name: str, sizes=(3, 4, 3, 2), m: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    net = Network(sizes, hidden, output)
    initialize(net, "normal", rng)
    X = rng.standard_normal((m, sizes[0]))
    if cost_name == "quadratic" and output == "linear":
        Y = rng.standard_normal((m, sizes[-1]))
    else:
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], m)]
    return net, X, Y, get_cost(cost_name, output)


def gradient(net: Network, X, Y, cost, params) -> np.ndarray:
    saved = net.params.copy()
    net.params[...] = params
    net.backprop(X, Y, cost)
    g = net.grad.copy()
    net.params[...] = saved
    return g


@pytest.mark.parametrize(("hidden", "output", "cost_name"), PAIRS)
def test_hvp_matches_central_differences_of_the_gradient(hidden, output, cost_name):
    net, X, Y, cost = tiny(hidden, output, cost_name)
    if hidden == "relu":
        # Finite differences across a kink are wrong by construction: keep every z^1 away from
        # 0 by more than the step moves it (the step below moves z by ~1e-5).
        net.b[0][...] += np.sign(net.b[0]) * 0.5
        z = X @ net.W[0].T + net.b[0]
        assert np.abs(z).min() > 1e-3
    v = np.random.default_rng(1).standard_normal(net.params.size)
    hv = hessian_vector_product(net, X, Y, cost, v)
    h = 1e-5
    plus = gradient(net, X, Y, cost, net.params + h * v)
    fd = (plus - gradient(net, X, Y, cost, net.params - h * v)) / (2 * h)
    relative = np.linalg.norm(hv - fd) / max(np.linalg.norm(hv), np.linalg.norm(fd))
    assert relative <= 1e-6, relative
    assert np.linalg.norm(hv) > 1e-3  # not a vacuous match of two zeros


def test_second_derivatives_against_central_differences_of_the_first():
    z = np.linspace(-3, 3, 13).reshape(1, -1) + 0.01  # no point at relu's kink
    h = 1e-5
    for name in ("sigmoid", "tanh", "relu", "linear"):
        act = ACTIVATIONS[name]

        def prime(z, act=act):
            a = act.fn(z, np.empty_like(z))
            return act.prime(z, a, np.empty_like(z)).astype(float)

        a = act.fn(z, np.empty_like(z))
        second = act.second(z, a, np.empty_like(z))
        np.testing.assert_allclose(second, (prime(z + h) - prime(z - h)) / (2 * h), atol=1e-8)


def dense_hessian(net, X, Y, cost) -> np.ndarray:
    """Column j is the central difference of the gradient along parameter j: independent of
    the R-operator."""
    n, h = net.params.size, 1e-5
    H = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = h
        H[:, j] = (
            gradient(net, X, Y, cost, net.params + e) - gradient(net, X, Y, cost, net.params - e)
        ) / (2 * h)
    return (H + H.T) / 2


@pytest.mark.parametrize(
    ("hidden", "output", "cost_name"),
    [
        ("sigmoid", "sigmoid", "quadratic"),
        ("tanh", "softmax", "softmax_cross_entropy"),
        ("sigmoid", "sigmoid", "cross_entropy"),
    ],
)
def test_sharpness_is_the_largest_eigenvalue_of_the_dense_hessian(hidden, output, cost_name):
    net, X, Y, cost = tiny(hidden, output, cost_name, m=8)
    H = dense_hessian(net, X, Y, cost)
    expected = np.linalg.eigvalsh(H)[-1]
    start = np.random.default_rng(2).standard_normal(net.params.size)
    found = sharpness(net, X, Y, cost, start, max_iterations=net.params.size, tolerance=1e-10)
    assert found.converged
    assert found.value == pytest.approx(expected, rel=1e-6)
    # The Ritz vector is an eigenvector of the dense Hessian.
    residual = H @ found.vector - found.value * found.vector
    assert np.linalg.norm(residual) <= 1e-5 * abs(found.value)


def test_lanczos_error_bound_holds_and_the_budget_is_reported():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    eigenvalues = np.concatenate([[10.0, 9.9, 9.8], rng.uniform(-5, 5, 197)])
    A = (Q * eigenvalues) @ Q.T
    start = rng.standard_normal(200)
    few = top_eigenvalue(lambda v: A @ v, start, max_iterations=3, tolerance=1e-12)
    assert not few.converged and few.iterations == 3
    # Ritz values never exceed the top eigenvalue, and one eigenvalue is within the bound.
    assert few.value <= 10.0 + 1e-12
    assert np.min(np.abs(eigenvalues - few.value)) <= few.error_bound + 1e-12
    many = top_eigenvalue(lambda v: A @ v, start, max_iterations=200, tolerance=1e-9)
    assert many.converged and many.value == pytest.approx(10.0, rel=1e-9)
    assert many.iterations < 200


def test_lanczos_finds_the_largest_not_the_largest_in_magnitude():
    A = np.diag([-50.0, 1.0, 2.0, 3.0])
    found = top_eigenvalue(lambda v: A @ v, np.ones(4), max_iterations=4, tolerance=1e-12)
    assert found.converged and found.value == pytest.approx(3.0)


def test_non_finite_products_give_nan_not_converged():
    found = top_eigenvalue(lambda v: np.full_like(v, np.nan), np.ones(5), max_iterations=5)
    assert math.isnan(found.value) and not found.converged


def test_operator_leaves_the_network_and_its_buffers_alone():
    net, X, Y, cost = tiny("sigmoid", "sigmoid", "quadratic")
    net.backprop(X, Y, cost)
    params, grad = net.params.copy(), net.grad.copy()
    z = [z.copy() for z in net.trace(X).z]
    op = HessianOperator(net, X, Y, cost)
    op(np.ones(net.params.size))
    np.testing.assert_array_equal(net.params, params)
    np.testing.assert_array_equal(net.grad, grad)
    for before, after in zip(z, net.trace(X).z, strict=True):
        np.testing.assert_array_equal(before, after)


# --- trace, top-k eigenvalues and spectral density against the dense Hessian (issue 26) ------

from bpexp.curvature import (  # noqa: E402
    hutch_plus_plus,
    load_spectra,
    save_spectra,
    spectral_density,
    top_eigenvalues,
)


@pytest.fixture(scope="module")
def dense_case():
    """A small net (39 parameters) with its operator and its dense Hessian."""
    net, X, Y, cost = tiny("tanh", "softmax", "softmax_cross_entropy", m=8)
    return HessianOperator(net, X, Y, cost), dense_hessian(net, X, Y, cost)


def test_hutch_plus_plus_is_exact_when_its_sketch_spans_the_space(dense_case):
    H_op, H = dense_case
    n = H.shape[0]
    found = hutch_plus_plus(H_op, n, 3 * n, np.random.default_rng(0))
    assert found.value == pytest.approx(np.trace(H), rel=1e-6, abs=1e-9)
    assert found.hvps == 2 * n  # k = n products for H S, n for H Q; the residual is 0


def test_hutch_plus_plus_is_unbiased(dense_case):
    H_op, H = dense_case
    n, budget = H.shape[0], 12
    rng = np.random.default_rng(1)
    estimates = [hutch_plus_plus(H_op, n, budget, rng) for _ in range(300)]
    assert {e.hvps for e in estimates} == {budget}
    values = np.array([e.value for e in estimates])
    error = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - np.trace(H)) <= 4 * error


def test_hutch_plus_plus_beats_hutchinson_when_a_few_eigenvalues_dominate():
    # A Hessian's outliers over a bulk: 5 large eigenvalues, 195 small ones of both signs.
    rng = np.random.default_rng(6)
    n, budget = 200, 30
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.concatenate([[80.0, 40.0, 20.0, 10.0, 5.0], rng.normal(0, 0.3, n - 5)])) @ Q.T
    plus = np.array([hutch_plus_plus(lambda v: A @ v, n, budget, rng).value for _ in range(200)])
    Z = rng.integers(0, 2, size=(200, budget, n)) * 2.0 - 1.0
    hutchinson = np.einsum("rkn,nm,rkm->r", Z, A, Z) / budget
    assert abs(plus.mean() - np.trace(A)) <= 4 * plus.std(ddof=1) / np.sqrt(200)
    assert plus.std() < hutchinson.std() / 5


@pytest.mark.parametrize("k", [1, 4])
def test_top_eigenvalues_are_the_dense_hessians(dense_case, k):
    H_op, H = dense_case
    n = H.shape[0]
    expected = np.linalg.eigvalsh(H)[::-1][:k]
    start = np.random.default_rng(2).standard_normal(n)
    found = top_eigenvalues(H_op, start, k, max_iterations=n, tolerance=1e-10)
    assert found.converged and found.hvps <= n
    np.testing.assert_allclose(found.values, expected, rtol=1e-6)
    assert np.all(found.error_bounds <= 1e-10 * np.abs(found.values))


def test_top_eigenvalues_report_the_budget_and_the_bounds():
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((150, 150)))
    eigenvalues = np.concatenate([[10.0, 9.0, 8.0], rng.uniform(-5, 5, 147)])
    A = (Q * eigenvalues) @ Q.T
    few = top_eigenvalues(lambda v: A @ v, rng.standard_normal(150), 3, 5, tolerance=1e-12)
    assert not few.converged and few.hvps == 5
    for value, bound in zip(few.values, few.error_bounds, strict=True):
        assert np.min(np.abs(eigenvalues - value)) <= bound + 1e-12
    many = top_eigenvalues(lambda v: A @ v, rng.standard_normal(150), 3, 150, tolerance=1e-9)
    assert many.converged and many.hvps < 150
    np.testing.assert_allclose(many.values, [10.0, 9.0, 8.0], rtol=1e-9)
    nan = top_eigenvalues(lambda v: np.full_like(v, np.nan), np.ones(5), 2, 5)
    assert np.all(np.isnan(nan.values)) and not nan.converged


def test_one_probe_of_full_length_is_the_dense_quadrature_exactly(dense_case):
    # With as many Lanczos steps as parameters, Gauss quadrature is exact for any function:
    # the broadened density is Σ_i (u_i·v̂)² g(t − λ_i) for the probe v drawn.
    H_op, H = dense_case
    n = H.shape[0]
    found = spectral_density(H_op, n, n, 1, np.random.default_rng(4))
    v = np.random.default_rng(4).standard_normal(n)
    lam, U = np.linalg.eigh(H)
    w = (U.T @ v) ** 2 / (v @ v)
    g = np.exp(-0.5 * ((found.grid[:, None] - lam[None, :]) / found.sigma) ** 2)
    expected = g @ w / (found.sigma * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(found.density, expected, atol=1e-6 * expected.max())
    # The softmax's shift invariance gives H repeated (zero) eigenvalues: the Krylov space is
    # invariant after as many steps as H has distinct eigenvalues, and Lanczos stops there.
    distinct = np.count_nonzero(np.diff(lam) > 1e-7 * np.abs(lam).max()) + 1
    assert found.hvps == np.isfinite(found.nodes).sum() == distinct < n
    assert found.probes == 1 and found.steps == n
    assert found.weights.sum() == pytest.approx(1.0)


def test_spectral_density_matches_the_dense_eigenvalue_histogram(dense_case):
    H_op, H = dense_case
    n = H.shape[0]
    lam = np.linalg.eigvalsh(H)
    found = spectral_density(H_op, n, 20, 200, np.random.default_rng(5))
    assert found.hvps == 20 * 200
    assert np.trapezoid(found.density, found.grid) == pytest.approx(1.0, abs=1e-3)
    # The quadrature's mass in each of 6 bins against the fraction of eigenvalues there.
    edges = np.linspace(lam[0] - 1e-9, lam[-1] + 1e-9, 7)
    dense = np.histogram(lam, edges)[0] / n
    nodes = np.where(np.isfinite(found.nodes), found.nodes, np.inf)
    slq = np.histogram(nodes.ravel(), edges, weights=found.weights.ravel())[0] / 200
    np.testing.assert_allclose(slq, dense, atol=0.03)
    # And the broadened densities agree on the grid.
    g = np.exp(-0.5 * ((found.grid[:, None] - lam[None, :]) / found.sigma) ** 2)
    expected = g.mean(axis=1) / (found.sigma * np.sqrt(2 * np.pi))
    l1 = np.trapezoid(np.abs(found.density - expected), found.grid)
    assert l1 < 0.1, l1


def test_spectra_round_trip_through_one_file(dense_case, tmp_path):
    H_op, H = dense_case
    spectra = {
        e: spectral_density(H_op, H.shape[0], 5, 2, np.random.default_rng(e)) for e in (0, 3)
    }
    save_spectra(str(tmp_path / "s.npz"), spectra)
    loaded = load_spectra(str(tmp_path / "s.npz"))
    assert sorted(loaded) == [0, 3]
    for e, (grid, density) in loaded.items():
        np.testing.assert_array_equal(grid, spectra[e].grid)
        np.testing.assert_array_equal(density, spectra[e].density)
