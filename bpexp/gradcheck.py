"""Gradient check: backprop against centred differences (docs/science.md#gradient-checking).

    python -m bpexp.gradcheck --hidden 5 4 --activation tanh --output-activation softmax \
        --cost softmax_cross_entropy

prints the relative error ``||a − n|| / max(||a||, ||n||)`` of each layer's weight and bias
gradients (the worse of the two per layer), where ``a`` is backprop's gradient and ``n`` the
centred difference ``(C(θ + h) − C(θ − h)) / 2h`` with h = 1e-5 in float64.
"""

from __future__ import annotations

import argparse

import numpy as np

from bpexp.cost import Cost, get_cost
from bpexp.network import Network, add_l2_gradient, initialize, l2_penalty
from bpexp.rng import stream

Array = np.ndarray


def numerical_gradient(
    net: Network,
    X: Array,
    Y: Array,
    cost: Cost,
    *,
    h: float = 1e-5,
    weight_decay: float = 0.0,
    n: int = 1,
) -> Array:
    """Centred differences of C + λ/(2n) Σ‖W‖² (λ = ``weight_decay``) with respect to every
    entry of ``net.params``."""

    def total_cost() -> float:
        return cost.fn(net.forward(X), Y) + l2_penalty(net, weight_decay, n)

    grad = np.zeros_like(net.params)
    for i in range(net.params.size):
        saved = net.params[i]
        net.params[i] = saved + h
        plus = total_cost()
        net.params[i] = saved - h
        minus = total_cost()
        net.params[i] = saved
        grad[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a: Array, n: Array) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(n))
    return float(np.linalg.norm(a - n) / scale) if scale > 0 else 0.0


def check(
    net: Network,
    X: Array,
    Y: Array,
    cost: Cost,
    *,
    weight_decay: float = 0.0,
    n: int = 1,
    h: float = 1e-5,
) -> list[float]:
    """The worst relative error of (∂C/∂W^l, ∂C/∂b^l) for each layer l = 1..L; with λ =
    ``weight_decay`` > 0, of the regularised cost C + λ/(2n) Σ‖W‖² (the trainer's step)."""
    net.backprop(X, Y, cost)
    if weight_decay:
        add_l2_gradient(net, weight_decay / n, [np.empty_like(W) for W in net.W])
    backprop = net.grad.copy()
    numeric = numerical_gradient(net, X, Y, cost, h=h, weight_decay=weight_decay, n=n)
    errors, offset = [], 0
    for W, b in zip(net.W, net.b, strict=True):
        sl_W = slice(offset, offset + W.size)
        sl_b = slice(sl_W.stop, sl_W.stop + b.size)
        offset = sl_b.stop
        errors.append(
            max(
                relative_error(backprop[sl_W], numeric[sl_W]),
                relative_error(backprop[sl_b], numeric[sl_b]),
            )
        )
    return errors


def random_problem(
    sizes: list[int], activation: str, output: str, cost_name: str, m: int = 7, seed: int = 0
) -> tuple[Network, Array, Array, Cost]:
    """A float64 network with ``scaled_normal`` weights and a random batch fitting ``cost``."""
    cost = get_cost(cost_name, output)
    net = Network(sizes, activation, output, "float64")
    rng = stream(seed, "init")
    initialize(net, "scaled_normal", rng)
    X = rng.standard_normal((m, sizes[0]))
    if output == "linear":
        Y = rng.standard_normal((m, sizes[-1]))
    else:  # one-hot targets fit every cost with sigmoid or softmax outputs
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], m)]
    return net, X, Y, cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bpexp.gradcheck", description=__doc__)
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="*", default=[5, 3])
    parser.add_argument("--outputs", type=int, default=3)
    parser.add_argument("--activation", default="sigmoid")
    parser.add_argument("--output-activation", default="sigmoid")
    parser.add_argument("--cost", default="quadratic")
    parser.add_argument("--batch-size", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="λ of C + λ/(2n) Σ‖W‖²")
    parser.add_argument("--n", type=int, default=1, help="n of the L2 term (training-set size)")
    args = parser.parse_args(argv)
    sizes = [args.inputs, *args.hidden, args.outputs]
    net, X, Y, cost = random_problem(
        sizes, args.activation, args.output_activation, args.cost, args.batch_size, args.seed
    )
    errors = check(net, X, Y, cost, weight_decay=args.weight_decay, n=args.n)
    print(
        f"sizes={sizes} activation={args.activation} "
        f"output_activation={args.output_activation} cost={args.cost}"
    )
    for l, err in enumerate(errors, start=1):
        print(f"layer {l}: relative error {err:.2e}")
    worst = max(errors)
    print(f"worst: {worst:.2e} ({'ok' if worst < 1e-7 else 'CHECK'}: < 1e-7 is right)")
    return 0 if worst < 1e-7 else 1


if __name__ == "__main__":
    raise SystemExit(main())
