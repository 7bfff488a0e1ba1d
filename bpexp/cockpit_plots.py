"""A run's cockpit figure and its Hessian spectrum figure (issue 26), in Cockpit's spirit.

- :func:`cockpit_figure`: small multiples of one run against epoch, one panel per instrument
  group (:data:`PANELS`): the losses, α, the gradient tests on the probe and on a batch,
  sharpness against the update rule's threshold (with the top-k eigenvalues when measured),
  the Hessian's trace, the distance from the initial weights and the update size. At most six
  lines a panel; each legend sits under its panel, off the data.
- :func:`spectrum_figure`: the eigenvalue spectral density (stochastic Lanczos quadrature),
  log density over eigenvalue, one line per measured epoch.

Both take plain data: a history frame with one row per epoch and one column per metric (as
``bpexp.run(...).history``; :func:`wide_history` turns the tidy ``metric, step, value`` table of
``history.parquet`` into one), and spectra as ``{epoch: SpectralDensity}`` (the ``spectrum`` of
the trainer's ``EpochRecord``s, ``TrainResult.spectra``) or ``{epoch: (grid, density)}`` (from
``bpexp.curvature.load_spectra``). Each returns a matplotlib ``Figure`` on its own Agg canvas:
nothing here touches pyplot's global state; :func:`save` writes one to a PNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# The panels of the cockpit figure, in reading order (two rows of four).
PANELS = (
    "loss",
    "α: where the step lands",
    "gradient tests on the probe",
    "gradient tests on a batch",
    "sharpness and its threshold",
    "Hessian trace",
    "distance from init",
    "update size",
)
MAX_LINES = 6
TESTS = (
    ("norm_test", "norm"),
    ("inner_product_test", "inner product"),
    ("orthogonality_test", "orthogonality"),
)
COLORS = matplotlib.colormaps["tab10"].colors


def wide_history(tidy: pd.DataFrame) -> pd.DataFrame:
    """One run's tidy history (columns ``metric, step, value``, as in ``history.parquet``) as a
    frame indexed by epoch with one column per metric; ``train/batch_loss`` (counted in steps,
    not epochs) is left out."""
    rows = tidy[tidy["metric"] != "train/batch_loss"]
    wide = rows.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
    wide.index.name, wide.columns.name = "epoch", None
    return wide


def _by_epoch(history: pd.DataFrame) -> pd.DataFrame:
    if "epoch" in history.columns:
        history = history.set_index("epoch")
    return history.sort_index()


def _series(history: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``metric`` where it was logged (finite values only)."""
    if metric not in history.columns:
        return np.array([]), np.array([])
    column = pd.to_numeric(history[metric], errors="coerce")
    column = column[np.isfinite(column)]
    return column.index.to_numpy(dtype=float), column.to_numpy(dtype=float)


def _not_measured(ax: Axes, text: str) -> None:
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", wrap=True
    )
    ax.set_yticks([])


def _legend_below(ax: Axes, below: float = -0.2) -> None:
    """The panel's legend under its x axis, off the data (none without labelled lines);
    ``below``: its top, in axes fractions (lower when tick labels and a label sit there)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, below),
            ncol=min(len(labels), 3 if max(map(len, labels)) < 14 else 2),
            frameon=False,
            fontsize="small",
            handlelength=1.8,
            columnspacing=1.0,
        )


def _log_if_positive(ax: Axes) -> None:
    """Log y when every value drawn is positive and they span more than a factor of 10."""
    drawn = [line.get_ydata() for line in ax.get_lines() if not line.get_label().startswith("_")]
    values = np.concatenate([np.asarray(v, dtype=float) for v in drawn] or [np.array([])])
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() > 10 * values.min():
        _log_axis(ax)


PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def _log_axis(ax: Axes) -> None:
    """Log y with ticks at 1, 2 and 5 times powers of ten, written as plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(NullFormatter())


def loss_panel(history: pd.DataFrame, ax: Axes) -> None:
    """``train/loss`` and ``val/loss``."""
    for i, metric in enumerate(("train/loss", "val/loss")):
        epochs, values = _series(history, metric)
        if epochs.size:
            ax.plot(epochs, values, marker=".", color=COLORS[i], label=metric)
    _log_if_positive(ax)


def alpha_panel(history: pd.DataFrame, ax: Axes) -> None:
    """``alpha`` per epoch (points) with its running median over 5 epochs; reference lines at
    0 (the step lands on the fitted minimum) and 1 (on the far side at the starting height).
    The y axis is linear within ±1 and logarithmic beyond (α of a climbing step can be ≫ 1)."""
    epochs, values = _series(history, "alpha")
    if not epochs.size:
        _not_measured(ax, "not measured\n(trainer.alpha_every=0\nor instruments off)")
        return
    ax.axhline(0.0, color="0.3", lw=1, ls="--", label="0 = the minimum")
    ax.axhline(1.0, color="0.3", lw=1, ls=":", label="1 = the far side")
    ax.plot(epochs, values, ls="none", marker="o", ms=3.5, color=COLORS[0], label="α")
    if epochs.size >= 5:
        median = pd.Series(values).rolling(5, center=True, min_periods=3).median()
        ax.plot(epochs, median.to_numpy(), color=COLORS[1], lw=1.8, label="median of 5")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.yaxis.set_major_formatter(PLAIN)


def _tests_panel(history: pd.DataFrame, ax: Axes, where: str, missing: str) -> None:
    drawn = 0
    for i, (metric, label) in enumerate(TESTS):
        epochs, values = _series(history, f"{metric}/{where}")
        if epochs.size:
            ax.plot(epochs, values, marker=".", color=COLORS[i + 2], label=label)
            drawn += 1
    if not drawn:
        _not_measured(ax, missing)
        return
    ax.axhline(1.0, color="0.3", lw=1, ls=":", label="1 = noise ≈ gradient")
    _log_if_positive(ax)


def tests_probe_panel(history: pd.DataFrame, ax: Axes) -> None:
    """The norm, inner-product and orthogonality tests on the probe (``*/probe``)."""
    _tests_panel(history, ax, "probe", "not measured\n(trainer.gradient_tests_every=0)")


def tests_batch_panel(history: pd.DataFrame, ax: Axes) -> None:
    """The same tests on one mini-batch of ``trainer.batch_size`` rows (``*/batch``)."""
    _tests_panel(
        history, ax, "batch", "not measured\n(gradient_tests_every=0, full batch\nor batch of 1)"
    )


def sharpness_panel(history: pd.DataFrame, ax: Axes) -> None:
    """``sharpness`` against ``sharpness_threshold``; ``hessian_top/2..`` (at most three) as
    thin lines when measured."""
    epochs, values = _series(history, "sharpness")
    tops = sorted(
        (c for c in history.columns if c.startswith("hessian_top/")),
        key=lambda c: int(c.split("/")[1]),
    )
    if not epochs.size and not tops:
        _not_measured(ax, "not measured\n(trainer.sharpness_every=0)")
        return
    if epochs.size:
        ax.plot(epochs, values, marker="o", ms=4, color=COLORS[3], label="λ₁ (sharpness)")
    threshold_epochs, threshold = _series(history, "sharpness_threshold")
    if threshold_epochs.size:
        ax.plot(threshold_epochs, threshold, color="0.2", ls="--", label="threshold")
    shades = ("0.35", "0.55", "0.75")
    for metric, shade in zip(tops[1 : MAX_LINES - 2], shades, strict=False):
        top_epochs, top_values = _series(history, metric)
        label = f"λ{_subscript(metric.split('/')[1])}"
        ax.plot(top_epochs, top_values, color=shade, lw=1, marker=".", ms=3, label=label)
    if not epochs.size:  # top-k alone: its largest stands in for sharpness
        top_epochs, top_values = _series(history, tops[0])
        ax.plot(top_epochs, top_values, marker="o", ms=4, color=COLORS[3], label="λ₁")
    _log_if_positive(ax)


def _subscript(digits: str) -> str:
    return digits.translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def trace_panel(history: pd.DataFrame, ax: Axes) -> None:
    """``hessian_trace`` (Hutch++)."""
    epochs, values = _series(history, "hessian_trace")
    if not epochs.size:
        _not_measured(ax, "not measured\n(trainer.trace_every=0)")
        return
    hvps = _series(history, "hessian_trace_hvps")[1]
    label = f"tr H ({int(hvps[-1])} H v products each)" if hvps.size else "tr H"
    ax.plot(epochs, values, marker="o", ms=4, color=COLORS[4], label=label)
    ax.axhline(0.0, color="0.6", lw=0.8)


def distance_panel(history: pd.DataFrame, ax: Axes) -> None:
    """``distance_from_init/W{l}``, one line per layer (at most six: first and last layers)."""
    layers = sorted(
        (c for c in history.columns if c.startswith("distance_from_init/W")),
        key=lambda c: int(c.removeprefix("distance_from_init/W")),
    )
    if not layers:
        _not_measured(ax, "not measured\n(trainer.instruments=false)")
        return
    if len(layers) > MAX_LINES:
        layers = layers[:3] + layers[-3:]
    for i, metric in enumerate(layers):
        epochs, values = _series(history, metric)
        layer = metric.removeprefix("distance_from_init/W")
        label = f"‖W{_subscript(layer)} − W{_subscript(layer)}(0)‖"
        ax.plot(epochs, values, marker=".", color=COLORS[i % len(COLORS)], label=label)


def update_size_panel(history: pd.DataFrame, ax: Axes) -> None:
    """``update_size``: ‖Δθ‖ of the step α judges (one a epoch)."""
    epochs, values = _series(history, "update_size")
    if not epochs.size:
        _not_measured(ax, "not measured\n(trainer.alpha_every=0\nor instruments off)")
        return
    ax.plot(epochs, values, marker=".", color=COLORS[5], label="‖Δθ‖ of one step")
    _log_if_positive(ax)


DRAW = (
    loss_panel,
    alpha_panel,
    tests_probe_panel,
    tests_batch_panel,
    sharpness_panel,
    trace_panel,
    distance_panel,
    update_size_panel,
)


def _new_figure(width: float, height: float, dpi: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no backend switch
    return fig


def cockpit_figure(history: pd.DataFrame, title: str | None = None, dpi: float = 100) -> Figure:
    """The cockpit of one run: the panels of :data:`PANELS` against epoch, two rows of four.

    ``history``: one row per epoch, indexed by epoch (or with an ``epoch`` column), columns
    named by metric. A panel whose metrics were not logged says which key turns them on.
    """
    history = _by_epoch(history)
    fig = _new_figure(16, 8, dpi)
    axes = fig.subplots(2, 4, sharex=True)
    for ax, name, draw in zip(axes.flat, PANELS, DRAW, strict=True):
        draw(history, ax)
        ax.set_title(name, fontsize="medium")
        ax.grid(True, color="0.92", lw=0.8)
        ax.set_axisbelow(True)
    for ax in axes[0]:
        _legend_below(ax, -0.04)  # no tick labels under the top row (shared x)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        _legend_below(ax)
    if title:
        fig.suptitle(title)
    fig.get_layout_engine().set(h_pad=0.12, hspace=0.05)
    return fig


def _grid_density(spectrum) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(spectrum, tuple):
        return np.asarray(spectrum[0]), np.asarray(spectrum[1])
    return np.asarray(spectrum.grid), np.asarray(spectrum.density)


def spectrum_figure(
    spectra: Mapping[int, object], title: str | None = None, dpi: float = 100
) -> Figure:
    """The Hessian's eigenvalue density at each measured epoch: log density over eigenvalue,
    one line per epoch, each in its own strip (one shared eigenvalue axis), the first epoch on
    top. Overlaid, the bulk near 0 of every epoch hides the others' shapes.

    ``spectra``: ``{epoch: SpectralDensity}`` or ``{epoch: (grid, density)}``. Each strip shows
    5 decades under its peak: one eigenvalue of a network's thousands, broadened, stays in view.
    """
    epochs = [e for e in sorted(spectra) if np.isfinite(_grid_density(spectra[e])[1]).any()]
    fig = _new_figure(8, 1.0 + 1.25 * max(len(epochs), 1), dpi)
    if not epochs:
        ax = fig.add_subplot()
        _not_measured(ax, "no spectrum measured (trainer.spectrum_every=0)")
        ax.set_xticks([])
        return fig
    axes = fig.subplots(len(epochs), 1, sharex=True, squeeze=False)[:, 0]
    cmap = matplotlib.colormaps["viridis"]
    span = max(epochs[-1] - epochs[0], 1)
    for ax, epoch in zip(axes, epochs, strict=True):
        grid, density = _grid_density(spectra[epoch])
        color = cmap(0.85 * (epoch - epochs[0]) / span)
        peak = float(np.nanmax(density))
        ax.plot(grid, density, color=color, lw=1.4, label=f"epoch {epoch}")
        ax.fill_between(grid, density, peak * 1e-5, color=color, alpha=0.15, lw=0)
        ax.axvline(0.0, color="0.6", lw=0.8, zorder=0)
        ax.text(
            0.99,
            0.9,
            f"epoch {epoch}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize="small",
            color="0.15",
        )
        _log_axis(ax)
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=4))
        ax.set_ylim(peak * 1e-5, peak * 3)
        ax.grid(True, color="0.92", lw=0.8)
        ax.set_axisbelow(True)
    axes[-1].set_xlabel("eigenvalue λ of the Hessian on the probe set")
    fig.supylabel("density (each integrates to 1)", fontsize="medium")
    axes[0].set_title(title or "Hessian eigenvalue density (stochastic Lanczos quadrature)")
    return fig


def save(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` (a PNG), creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or fig.dpi)
    return path


def panel_lines(fig: Figure) -> dict[str, list[str]]:
    """``{panel title: labels of its labelled lines}``: what each panel of a figure holds."""
    return {
        ax.get_title(): [
            line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")
        ]
        for ax in fig.axes
        if ax.get_title()
    }


__all__ = [
    "PANELS",
    "cockpit_figure",
    "panel_lines",
    "save",
    "spectrum_figure",
    "wide_history",
]
