"""Two demonstrations of momentum (docs/science.md), computed with bpexp's own update rules.

1. Exponentially weighted averages: a noisy cosine smoothed with β = 0.5, 0.9, 0.98, with and
   without bias correction. The average is read off :class:`bpexp.optimizer.Optimizer`'s
   momentum in its EMA form: with η = 1 and w set to 0 before each step, the step
   w ← w − η v (or w − η v / (1 − β^t) with ``bias_correction``) leaves w = −V_t (or −V̂_t),
   where v ← β v + (1 − β) S_t is the running average of the "gradients" S_t.
2. A ravine, f(x, y) = x²/20 + y² from (−7, 2): gradient descent ("sgd"), classical momentum
   and Nesterov, each stepping with ``Optimizer.step(w, g, state)``. Learning-rate
   convention: SGD uses η; momentum and Nesterov use η (1 − β), so that all three take the same
   long-run step η g in a constant gradient (EMA(η, β) ≡ classical(η (1 − β)), docs/science.md).
   Near SGD's stability limit across the valley (η < 2 / f_yy = 1) it zig-zags in y; momentum
   damps the zig-zag and, with β = 0.5, ends lower after the same number of steps. With
   β = 0.9 it would not here: the valley is only 20 times steeper across than along, and
   β = 0.9 caps the convergence rate at √β ≈ 0.95 a step.

``python -m bpexp.demos [--out DIR]`` writes ``ema.png`` and ``ravine.png`` (default ``demos/``)
and prints their paths.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bpexp.optimizer import Optimizer

EMA_BETAS = (0.5, 0.9, 0.98)
RAVINE_START = (-7.0, 2.0)
RAVINE_LR = 0.9  # SGD's stability limit across the valley is 1.0
RAVINE_BETA = 0.5
RAVINE_STEPS = 40


def noisy_cosine(n: int = 200, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """One period of a cosine sampled at n points, plus N(0, noise²) noise; shape (n,)."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return np.cos(2 * np.pi * t / n) + noise * rng.standard_normal(n)


def ema(series: np.ndarray, beta: float, bias_correction: bool = False) -> np.ndarray:
    """V_t = β V_{t−1} + (1 − β) S_t, V_0 = 0 (or V_t / (1 − β^t)), for t = 1..n; shape (n,).

    Computed by the momentum rule in its EMA form (see the module docstring).
    """
    rule = Optimizer("momentum", lr=1.0, beta=beta, form="ema", bias_correction=bias_correction)
    w = np.zeros(1)
    state = rule.init(w)
    out = np.empty(len(series))
    for i, s in enumerate(np.asarray(series, dtype=float)):
        w[0] = 0.0
        rule.step(w, np.array([s]), state)
        out[i] = -w[0]
    return out


def ema_demo(series: np.ndarray | None = None, betas: Sequence[float] = EMA_BETAS) -> pd.DataFrame:
    """The EMA of ``series`` (default :func:`noisy_cosine`) for each beta, both corrections.

    Columns: ``step`` (t = 1..n), ``signal`` (S_t), ``beta``, ``bias_correction``, ``ema``.
    """
    series = noisy_cosine() if series is None else np.asarray(series, dtype=float)
    steps = np.arange(1, len(series) + 1)
    parts = [
        pd.DataFrame(
            {
                "step": steps,
                "signal": series,
                "beta": beta,
                "bias_correction": corrected,
                "ema": ema(series, beta, corrected),
            }
        )
        for corrected in (False, True)
        for beta in betas
    ]
    return pd.concat(parts, ignore_index=True)


def ravine_f(w: np.ndarray) -> float:
    """f(x, y) = x²/20 + y²."""
    return float(w[0] ** 2 / 20 + w[1] ** 2)


def ravine_gradient(w: np.ndarray) -> np.ndarray:
    """∇f = (x/10, 2y); shape (2,)."""
    return np.array([w[0] / 10, 2 * w[1]])


def trajectory(
    rule: Optimizer, steps: int = RAVINE_STEPS, start: Sequence[float] = RAVINE_START
) -> np.ndarray:
    """The points w_0 = start, w_1, ..., w_steps of ``rule`` on the ravine; shape (steps+1, 2)."""
    w = np.array(start, dtype=float)
    state = rule.init(w)
    path = [w.copy()]
    for _ in range(steps):
        rule.step(w, ravine_gradient(w), state)
        path.append(w.copy())
    return np.array(path)


def ravine_rules(lr: float = RAVINE_LR, beta: float = RAVINE_BETA) -> dict[str, Optimizer]:
    """SGD at ``lr``; momentum and Nesterov at ``lr (1 − beta)``: the same long-run step."""
    return {
        "sgd": Optimizer("sgd", lr=lr),
        "momentum": Optimizer("momentum", lr=lr * (1 - beta), beta=beta),
        "nesterov": Optimizer("nesterov", lr=lr * (1 - beta), beta=beta),
    }


def ravine_demo(
    lr: float = RAVINE_LR, beta: float = RAVINE_BETA, steps: int = RAVINE_STEPS
) -> pd.DataFrame:
    """Trajectories of :func:`ravine_rules`. Columns: ``optimizer, step, x, y, f``."""
    parts = []
    for name, rule in ravine_rules(lr, beta).items():
        path = trajectory(rule, steps)
        parts.append(
            pd.DataFrame(
                {
                    "optimizer": f"{name} (lr={rule.lr:g}"
                    + (f", beta={beta:g})" if name != "sgd" else ")"),
                    "step": np.arange(len(path)),
                    "x": path[:, 0],
                    "y": path[:, 1],
                    "f": path[:, 0] ** 2 / 20 + path[:, 1] ** 2,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def write_demos(out: Path) -> list[Path]:
    """Draw both demonstrations into ``out`` (created); returns the PNG paths."""
    from bpexp.plots import ema_curves, new_axes, new_figure, ravine_paths

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = ema_demo()
    fig = new_figure(12.0, 4.0)
    left, right = fig.subplots(1, 2, sharey=True)
    ema_curves(frame, left, bias_correction=False)
    ema_curves(frame, right, bias_correction=True)
    paths = [out / "ema.png", out / "ravine.png"]
    fig.savefig(paths[0], dpi=100)
    ravine_paths(ravine_demo(), new_axes(8.0, 4.5)).savefig(paths[1], dpi=100)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bpexp.demos",
        description="Draw the EMA and ravine demonstrations of bpexp's update rules as PNG files.",
    )
    parser.add_argument("--out", default="demos", help="folder for the PNGs (default: demos/)")
    args = parser.parse_args(argv)
    for path in write_demos(Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
