"""Curvature of the cost: exact Hessian-vector products and the Hessian's top eigenvalue.

The Hessian H is that of the batch-mean cost C(θ) on a batch (X, Y), over all parameters θ in
the flat layout of ``Network.params`` (``W1, b1, W2, b2, ...``). H v is computed exactly, never
formed, by Pearlmutter's R-operator (1994): R{f} = d/dε f(θ + ε v) at ε = 0 is carried through
the forward pass and through BP1–BP4, at the cost of about two more passes over the batch.
Layout as in :mod:`bpexp.network`: rows are samples.

Forward (R a^0 = 0):
    R z^l = R a^{l-1} (W^l)^T + a^{l-1} (V_W^l)^T + V_b^l,    R a^l = σ'(z^l) ⊙ R z^l
Backward (BP1–BP4 differentiated; δ carries the batch mean's 1/m as in ``Network.backprop``):
    R δ^L = ``cost.delta_r`` (the derivative of BP1 along R z^L)
    R δ^{l-1} = (R δ^l W^l + δ^l V_W^l) ⊙ σ'(z^{l-1}) + (δ^l W^l) ⊙ σ''(z^{l-1}) ⊙ R z^{l-1}
    (H v)_{W^l} = (R δ^l)^T a^{l-1} + (δ^l)^T R a^{l-1},    (H v)_{b^l} = Σ_x R δ^l

``sharpness`` is the largest eigenvalue of H, by the Lanczos iteration on these products
(:func:`top_eigenvalue`), with an iteration budget and a convergence test whose meaning is exact:
the value returned lies within ``error_bound`` of an eigenvalue of H.

On demand, on the same products (docs/instruments-curvature.md), each with its cost in products:
- the trace tr(H) by Hutch++ (:func:`hutch_plus_plus`, Meyer et al. 2021): a low-rank part
  taken exactly, the rest by Hutchinson's estimator;
- the k largest eigenvalues by Lanczos with full reorthogonalisation (:func:`top_eigenvalues`);
- the eigenvalue spectral density by stochastic Lanczos quadrature (:func:`spectral_density`):
  per probe, the Lanczos tridiagonal's eigenvalues (nodes) and squared first components
  (weights), broadened by a Gaussian on a grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bpexp.cost import Cost
from bpexp.network import Network, param_views

Array = np.ndarray

# Converged when the Ritz value is provably within 1% of an eigenvalue of H (|β_k s_k| ≤ 1% of
# it); the Ritz value's own error is then typically far smaller (it shrinks as the bound squared
# over the gap to the next eigenvalue).
DEFAULT_TOLERANCE = 1e-2
DEFAULT_ITERATIONS = 20


class HessianOperator:
    """v ↦ H v for the batch-mean cost of ``net`` on (X, Y) at the network's current weights.

    X has shape (m, n_0), Y shape (m, n_L). The forward and backward quantities at θ (z^l,
    a^l, σ'(z^l), δ^l) are computed once here, in arrays of its own (not the network's
    working buffers), and each product then costs the two R passes.
    """

    def __init__(self, net: Network, X: Array, Y: Array, cost: Cost) -> None:
        self.W = [W.copy() for W in net.W]
        self.shapes = [W.shape for W in net.W]
        self.size = net.params.size
        self.Y, self.cost = Y, cost
        self.output = net.activations[-1]
        L = net.n_layers
        self.z, self.a = [], [X]
        for W, b, act in zip(net.W, net.b, net.activations, strict=True):
            z = self.a[-1] @ W.T + b
            self.z.append(z)
            self.a.append(act.fn(z, np.empty_like(z)))
        hidden = net.activations[:-1]
        self.prime = [
            act.prime(z, a, np.empty_like(z))
            for act, z, a in zip(hidden, self.z, self.a[1:], strict=False)
        ]
        delta_L = np.empty_like(self.z[-1])
        cost.delta(self.z[-1], self.a[-1], Y, self.output, delta_L, np.empty_like(delta_L))
        self.delta = [delta_L]
        # curv[l-1] = (δ^{l+1} W^{l+1}) ⊙ σ''(z^l): the term of R δ^l that comes from σ' moving.
        self.curv: list[Array] = []
        for l in range(L - 1, 0, -1):  # hidden layer l = L-1 .. 1
            back = self.delta[0] @ self.W[l]
            self.curv.insert(
                0, back * hidden[l - 1].second(self.z[l - 1], self.a[l], np.empty_like(back))
            )
            self.delta.insert(0, back * self.prime[l - 1])

    def __call__(self, v: Array) -> Array:
        """H v for a flat v of ``Network.params``' size and layout; returns a new array."""
        VW, Vb = param_views(v, self.shapes)
        out = np.empty(self.size, np.result_type(v, self.z[0]))
        gW, gb = param_views(out, self.shapes)
        L = len(self.W)
        rz: list[Array] = []
        ra: list[Array | None] = [None]  # R a^0 = 0: the inputs do not move
        for l in range(L):
            z = self.a[l] @ VW[l].T + Vb[l]
            if ra[l] is not None:
                z += ra[l] @ self.W[l].T
            rz.append(z)
            ra.append(self.prime[l] * z if l < L - 1 else None)
        r_delta = self.cost.delta_r(self.z[-1], self.a[-1], self.Y, self.output, rz[-1])
        for l in range(L - 1, -1, -1):
            np.dot(r_delta.T, self.a[l], out=gW[l])
            if ra[l] is not None:
                gW[l] += self.delta[l].T @ ra[l]
            np.sum(r_delta, axis=0, out=gb[l])
            if l > 0:
                r_delta = (r_delta @ self.W[l] + self.delta[l] @ VW[l]) * self.prime[l - 1]
                r_delta += self.curv[l - 1] * rz[l - 1]
        return out


def hessian_vector_product(net: Network, X: Array, Y: Array, cost: Cost, v: Array) -> Array:
    """H v of the batch-mean cost on (X, Y) at ``net``'s weights (flat layout of ``params``)."""
    return HessianOperator(net, X, Y, cost)(v)


@dataclass(frozen=True)
class TopEigenvalue:
    """The Lanczos estimate of the largest eigenvalue of a symmetric operator.

    ``value`` is the largest Ritz value (never above the true largest eigenvalue); some
    eigenvalue lies within ``error_bound`` of it; ``converged`` says whether ``error_bound`` fell
    to ``tolerance · |value|`` within the budget. ``vector`` is the Ritz vector (unit norm).
    """

    value: float
    converged: bool
    iterations: int
    error_bound: float
    vector: Array


def top_eigenvalue(
    matvec: Callable[[Array], Array],
    start: Array,
    max_iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> TopEigenvalue:
    """The largest (algebraic) eigenvalue of the symmetric operator ``matvec`` by Lanczos.

    Starts from ``start`` (any non-zero vector of the operator's size). Each iteration is one
    product; the basis is fully reorthogonalised (the products dominate the cost on bpexp's
    sizes, and without it rounding makes copies of converged eigenvalues). After k products
    the tridiagonal T_k = Q_kᵀ H Q_k has eigenpairs (θ_i, s_i); the residual of the Ritz pair
    is ||H y − θ y|| = β_k |s_{k,i}| (β_k the next off-diagonal), so an eigenvalue of H lies
    within that bound of θ. A non-finite product (a diverged network) gives value NaN,
    not converged.
    """
    n = start.size
    budget = min(max_iterations, n)
    Q = np.zeros((budget + 1, n))
    Q[0] = start / np.linalg.norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    value, bound, s = math.nan, math.inf, np.ones(1)
    k = 0
    for k in range(1, budget + 1):
        w = np.asarray(matvec(Q[k - 1]), dtype=np.float64)
        alphas.append(float(Q[k - 1] @ w))
        basis = Q[:k]
        for _ in range(2):  # classical Gram-Schmidt, twice: enough in float64
            w -= basis.T @ (basis @ w)
        beta = float(np.linalg.norm(w))
        if not (math.isfinite(beta) and all(map(math.isfinite, alphas))):
            return TopEigenvalue(math.nan, False, k, math.inf, np.full(n, math.nan))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        value, s = float(theta[-1]), S[:, -1]
        bound = beta * abs(float(s[-1]))
        # k == n: the Krylov space is the whole space, T_n's eigenvalues are H's.
        if bound <= tolerance * abs(value) or k == n:
            break
        betas.append(beta)
        Q[k] = w / beta
    converged = bound <= tolerance * abs(value) or k == n
    vector = Q[:k].T @ s
    return TopEigenvalue(value, bool(converged), k, bound, vector / np.linalg.norm(vector))


def sharpness(
    net: Network,
    X: Array,
    Y: Array,
    cost: Cost,
    start: Array,
    max_iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = DEFAULT_TOLERANCE,
) -> TopEigenvalue:
    """The largest eigenvalue of the Hessian of the batch-mean cost on (X, Y), over all
    parameters, at ``net``'s weights; ``start`` as for :func:`top_eigenvalue`."""
    return top_eigenvalue(HessianOperator(net, X, Y, cost), start, max_iterations, tolerance)


def sharpness_metrics(
    net: Network,
    X: Array,
    Y: Array,
    cost: Cost,
    start: Array,
    max_iterations: int,
    threshold: float | None,
) -> tuple[dict[str, float], TopEigenvalue]:
    """The epoch metrics ``sharpness``, ``sharpness_converged`` (1 or 0) and, when the update
    rule has one, ``sharpness_threshold``; and the estimate itself (its vector can start the
    next measurement)."""
    top = sharpness(net, X, Y, cost, start, max_iterations)
    out = {"sharpness": top.value, "sharpness_converged": float(top.converged)}
    if threshold is not None:
        out["sharpness_threshold"] = threshold
    return out, top


# --- Hessian trace, top-k eigenvalues and spectral density (issue 26) ------------------------

# A Lanczos step whose new direction is this small against the products' scale found an
# invariant subspace: the tridiagonal is then exact on it, and the iteration stops.
BREAKDOWN = 1e-12
# Points of the grid a spectral density is evaluated on.
SPECTRUM_GRID = 512


def _rademacher(rng: np.random.Generator, n: int, k: int) -> Array:
    """An (n, k) matrix of independent ±1 entries."""
    return rng.integers(0, 2, size=(n, k)).astype(np.float64) * 2.0 - 1.0


def _apply(matvec: Callable[[Array], Array], V: Array) -> Array:
    """matvec applied to every column of V (one product each)."""
    out = np.empty_like(V)
    for j in range(V.shape[1]):
        out[:, j] = matvec(V[:, j])
    return out


@dataclass(frozen=True)
class TraceEstimate:
    """``value`` estimates tr(H) with ``hvps`` products (Hutch++)."""

    value: float
    hvps: int


def hutch_plus_plus(
    matvec: Callable[[Array], Array], n: int, hvps: int, rng: np.random.Generator
) -> TraceEstimate:
    """tr(H) of the symmetric n×n operator ``matvec`` by Hutch++ with a budget of ``hvps``
    products (Meyer, Musco, Musco, Woodruff 2021), k = ``hvps`` // 3 (at least 1).

    With S, G two n×k matrices of random signs: Q = orth(H S) catches the largest
    eigendirections; tr(H) = tr(Qᵀ H Q) + tr((I − QQᵀ) H (I − QQᵀ)), and the second term is
    estimated by Hutchinson with the k vectors (I − QQᵀ) G:
        estimate = tr(Qᵀ H Q) + (1/k) Σ_j g_jᵀ (I − QQᵀ) H (I − QQᵀ) g_j.
    Unbiased; its error falls as 1/budget where Hutchinson's falls as 1/√budget, and it is
    exact when H has rank ≤ k. 3k products, or k + n when k ≥ n (Q is then the whole space:
    the trace is exact and the second term is 0).
    """
    k = max(1, hvps // 3)
    S = _rademacher(rng, n, k)
    G = _rademacher(rng, n, k)
    Q, _ = np.linalg.qr(_apply(matvec, S))
    value = float(np.einsum("ij,ij->", Q, _apply(matvec, Q)))
    used = k + Q.shape[1]
    if Q.shape[1] < n:
        G -= Q @ (Q.T @ G)
        value += float(np.einsum("ij,ij->", G, _apply(matvec, G))) / k
        used += k
    return TraceEstimate(value, used)


@dataclass(frozen=True)
class TopEigenvalues:
    """The Lanczos estimates of the k largest eigenvalues of a symmetric operator.

    ``values`` in descending order (each Ritz value lies below the eigenvalue of the same rank);
    an eigenvalue lies within ``error_bounds[i]`` of ``values[i]``; ``converged`` when every
    bound fell to ``tolerance · |value|`` within the budget; ``hvps`` products were made.
    """

    values: Array
    error_bounds: Array
    converged: bool
    hvps: int


def top_eigenvalues(
    matvec: Callable[[Array], Array],
    start: Array,
    k: int,
    max_iterations: int,
    tolerance: float = DEFAULT_TOLERANCE,
) -> TopEigenvalues:
    """The k largest (algebraic) eigenvalues of the symmetric operator ``matvec`` by Lanczos
    with full reorthogonalisation, as :func:`top_eigenvalue` does for the largest one.

    After j products T_j = Q_jᵀ H Q_j has eigenpairs (θ_i, s_i); the residual of each Ritz pair
    is β_j |s_{j,i}|, and an eigenvalue of H lies within it of θ_i. Stops when the k largest
    Ritz values all have ``bound ≤ tolerance · |θ_i|``, when the budget is spent or when the
    Krylov space is invariant (then its Ritz values are exact eigenvalues). Lanczos from one
    start vector sees one direction of each eigenspace: an eigenvalue of multiplicity r
    appears once. Fewer than k values come back only when the Krylov space is invariant (or
    the whole space) before k steps.
    A non-finite product gives NaN values, not converged.
    """
    n = start.size
    budget = min(max_iterations, n)
    Q = np.zeros((budget + 1, n))
    Q[0] = start / np.linalg.norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    values, bounds = np.full(k, math.nan), np.full(k, math.inf)
    done = False
    j = 0
    for j in range(1, budget + 1):
        w = np.asarray(matvec(Q[j - 1]), dtype=np.float64)
        alphas.append(float(Q[j - 1] @ w))
        basis = Q[:j]
        for _ in range(2):
            w -= basis.T @ (basis @ w)
        beta = float(np.linalg.norm(w))
        if not (math.isfinite(beta) and all(map(math.isfinite, alphas))):
            return TopEigenvalues(np.full(k, math.nan), np.full(k, math.inf), False, j)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        top = slice(None, -k - 1, -1)
        values, bounds = theta[top], beta * np.abs(S[-1, top])
        invariant = beta <= BREAKDOWN * max(np.abs(theta).max(), 1e-300) or j == n
        done = len(values) == k and bool(np.all(bounds <= tolerance * np.abs(values)))
        if done or invariant:
            done = done or invariant
            break
        betas.append(beta)
        Q[j] = w / beta
    return TopEigenvalues(values.copy(), bounds.copy(), bool(done), j)


def lanczos_tridiagonal(
    matvec: Callable[[Array], Array], start: Array, steps: int
) -> tuple[Array, Array]:
    """The diagonal and off-diagonal of T = Qᵀ H Q after ``steps`` Lanczos steps from
    ``start`` (full reorthogonalisation), fewer when the Krylov space is invariant sooner.
    One product a step; non-finite products give NaN diagonals."""
    n = start.size
    steps = min(steps, n)
    Q = np.zeros((steps, n))
    Q[0] = start / np.linalg.norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = np.asarray(matvec(Q[j]), dtype=np.float64)
        alphas.append(float(Q[j] @ w))
        basis = Q[: j + 1]
        for _ in range(2):
            w -= basis.T @ (basis @ w)
        beta = float(np.linalg.norm(w))
        if not math.isfinite(beta) or not math.isfinite(alphas[-1]):
            return np.full(len(alphas), math.nan), np.asarray(betas)
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0), 1e-300)
        if j == steps - 1 or beta <= BREAKDOWN * scale:
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    return np.asarray(alphas), np.asarray(betas)


@dataclass(frozen=True)
class SpectralDensity:
    """The eigenvalue density of H by stochastic Lanczos quadrature.

    ``nodes[p, j]`` and ``weights[p, j]``: the Ritz values of probe p and their quadrature
    weights (each row sums to 1; rows padded with NaN nodes and 0 weights when a probe's Krylov
    space was invariant before ``steps``). ``density`` on ``grid``: the nodes broadened by a
    Gaussian of standard deviation ``sigma``, averaged over probes; it integrates to 1 (its
    integral over an interval estimates the fraction of H's n eigenvalues in it).
    ``hvps`` products were made, ``steps`` a probe at most.
    """

    grid: Array
    density: Array
    nodes: Array
    weights: Array
    sigma: float
    steps: int
    probes: int
    hvps: int


def spectral_density(
    matvec: Callable[[Array], Array],
    n: int,
    steps: int,
    probes: int,
    rng: np.random.Generator,
    relative_sigma: float = 0.02,
    grid_points: int = SPECTRUM_GRID,
) -> SpectralDensity:
    """The eigenvalue spectral density of the symmetric n×n operator ``matvec`` by stochastic
    Lanczos quadrature (Golub and Meurant; Ghorbani, Krishnan, Xiao 2019; PyHessian).

    For a unit Gaussian probe v, vᵀ f(H) v = Σ_i (v·u_i)² f(λ_i) is approximated by Gauss
    quadrature: T = ``steps`` Lanczos steps from v, with eigenpairs (θ_j, s_j), gives
    Σ_j s_{1j}² f(θ_j), exact for polynomials f of degree < 2·steps. Since E[(v·u_i)²] = 1/n,
    the mean over ``probes`` probes of Σ_j s_{1j}² g(t − θ_j), g a Gaussian, estimates the
    broadened density (1/n) Σ_i g(t − λ_i). The Gaussian's standard deviation is
    σ = ``relative_sigma`` · max(θ_max − θ_min, |θ_max|, |θ_min|) over the nodes (the spectrum's
    scale: its width, or its distance from 0 when that is larger; 1 when every node is 0); the
    grid runs from 5σ below the smallest node to 5σ above the largest. Costs probes · steps
    products at most.
    """
    steps = min(steps, n)
    nodes = np.full((probes, steps), math.nan)
    weights = np.zeros((probes, steps))
    hvps = 0
    for p in range(probes):
        alphas, betas = lanczos_tridiagonal(matvec, rng.standard_normal(n), steps)
        hvps += len(alphas)
        if not np.all(np.isfinite(alphas)):
            continue
        theta, S = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        nodes[p, : len(theta)], weights[p, : len(theta)] = theta, S[0] ** 2
    finite = np.isfinite(nodes)
    if not finite.any():
        grid = np.full(grid_points, math.nan)
        return SpectralDensity(grid, grid.copy(), nodes, weights, math.nan, steps, probes, hvps)
    low, high = float(nodes[finite].min()), float(nodes[finite].max())
    sigma = relative_sigma * (max(high - low, abs(high), abs(low)) or 1.0)  # H = 0: unit scale
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, grid_points)
    used = np.where(finite, nodes, 0.0)
    density = np.zeros(grid_points)
    for p in range(probes):
        gauss = np.exp(-0.5 * ((grid[:, None] - used[p][None, :]) / sigma) ** 2)
        density += gauss @ weights[p]
    density /= probes * sigma * math.sqrt(2 * math.pi)
    return SpectralDensity(grid, density, nodes, weights, sigma, steps, probes, hvps)


def save_spectra(path: str, spectra: dict[int, SpectralDensity]) -> None:
    """Write spectra measured at several epochs to one ``.npz``: ``epochs`` and, per epoch e,
    ``grid_e``, ``density_e``, ``nodes_e``, ``weights_e`` (the format :func:`load_spectra`
    reads and ``bpexp.cockpit_plots.spectrum_figure`` draws)."""
    arrays: dict[str, Array] = {"epochs": np.array(sorted(spectra), dtype=np.int64)}
    for epoch, s in spectra.items():
        arrays |= {
            f"grid_{epoch}": s.grid,
            f"density_{epoch}": s.density,
            f"nodes_{epoch}": s.nodes,
            f"weights_{epoch}": s.weights,
        }
    np.savez(path, **arrays)


def load_spectra(path: str) -> dict[int, tuple[Array, Array]]:
    """``{epoch: (grid, density)}`` from a file written by :func:`save_spectra`."""
    with np.load(path, allow_pickle=False) as npz:
        return {int(e): (npz[f"grid_{e}"], npz[f"density_{e}"]) for e in npz["epochs"].tolist()}
