"""Plots from tidy history frames (columns ``metric, step, value`` and optionally ``run_id``).

matplotlib's object API only: every function takes the data and an ``Axes`` and returns the
figure; nothing touches pyplot's global state or a screen (the Agg backend is forced).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def new_axes(width: float = 6.0, height: float = 4.0) -> Axes:
    """A fresh figure with one Axes, not registered with pyplot (no global state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig.add_subplot()


def _layered(history: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Rows of ``prefix``-metrics with the layer number parsed from ``prefix{l}``."""
    rows = history[history["metric"].str.startswith(prefix)].copy()
    rows["layer"] = rows["metric"].str.removeprefix(prefix).astype(int)
    return rows


def loss_curves(history: pd.DataFrame, ax: Axes) -> Figure:
    """``train/loss`` and ``val/loss`` against epoch."""
    for metric in ("train/loss", "val/loss"):
        rows = history[history["metric"] == metric].sort_values("step")
        if not rows.empty:
            ax.plot(rows["step"], rows["value"], label=metric, marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.legend()
    return ax.figure


def grad_norms(history: pd.DataFrame, ax: Axes) -> Figure:
    """``grad_norm/b{l}`` per layer over epochs, log y: the vanishing-gradient picture."""
    rows = _layered(history, "grad_norm/b")
    for layer, group in rows.groupby("layer"):
        group = group.sort_values("step")
        ax.plot(group["step"], group["value"], label=f"layer {layer}", marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||∂C/∂b^l||")
    ax.set_title("gradient norm per layer")
    ax.legend()
    return ax.figure


def saturation(history: pd.DataFrame, ax: Axes) -> Figure:
    """``saturation/{l}`` as a heatmap: layers by epochs, colour = saturated fraction."""
    rows = _layered(history, "saturation/")
    if rows.empty:
        ax.set_title("saturation per layer (no sigmoid, tanh or softmax layer)")
        return ax.figure
    table = rows.pivot_table(index="layer", columns="step", values="value")
    image = ax.imshow(
        table.to_numpy(),
        aspect="auto",
        origin="lower",
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        extent=(
            table.columns.min() - 0.5,
            table.columns.max() + 0.5,
            table.index.min() - 0.5,
            table.index.max() + 0.5,
        ),
    )
    ax.set_yticks(list(table.index))
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer")
    ax.set_title("saturated fraction per layer")
    ax.figure.colorbar(image, ax=ax)
    return ax.figure


RUN_PLOTS = {"loss.png": loss_curves, "grad_norm.png": grad_norms, "saturation.png": saturation}
