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
