"""Plots from tidy frames: one run's history, a sweep's runs and histories, the two demos.

matplotlib's object API only: every function takes a DataFrame and an ``Axes`` and returns the
figure; nothing touches pyplot's global state, a screen or the process's backend: each figure
draws on its own Agg canvas, so importing this module leaves a notebook's backend as it was.

- one run (``RUN_PLOTS``, history columns ``metric, step, value``): :func:`loss_curves`,
  :func:`grad_norms`, :func:`saturation`; :func:`save_run_plots` writes the three PNGs a
  tracked run logs with ``tracking.plots=true``;
- a sweep (history columns ``run_id, metric, step, value, arm``; runs frames from
  :mod:`bpexp.analysis` with an ``arm`` column): :func:`arm_curves`, :func:`lr_sensitivity`,
  :func:`arm_grad_norms`, :func:`arm_saturation`;
- curvature (history with ``arm`` and ``optimizer.lr`` columns): :func:`sharpness_vs_threshold`
  on a grid of Axes from :func:`new_axes_grid`;
- the demonstrations of docs/science.md (:mod:`bpexp.demos`): :func:`ema_curves`,
  :func:`ravine_paths`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory


def new_figure(width: float = 6.0, height: float = 4.0, **options: object) -> Figure:
    """A fresh figure on its own Agg canvas, not registered with pyplot; add Axes to it
    (``fig.subplots(1, 2)``) for small multiples. ``options`` go to matplotlib's ``Figure``
    (``layout`` is "constrained" unless given)."""
    fig = Figure(figsize=(width, height), **{"layout": "constrained", **options})
    # A canvas of its own: the figure draws without pyplot or a backend switch.
    FigureCanvasAgg(fig)
    return fig


def new_axes(
    width: float = 6.0,
    height: float = 4.0,
    *,
    layout: str | None = "constrained",
    dpi: float | None = None,
) -> Axes:
    """A fresh figure (:func:`new_figure`) with one Axes.

    ``layout=None`` uses fixed margins instead of constrained layout: about 40% less time to
    draw, which matters for the three plots every run logs.
    """
    fig = new_figure(width, height, layout=layout, dpi=dpi)
    if layout is None:
        fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.91)
    return fig.add_subplot()


def _layered(history: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Rows of ``prefix``-metrics with the layer number parsed from ``prefix{l}``."""
    rows = history[history["metric"].str.startswith(prefix)].copy()
    rows["layer"] = rows["metric"].str.removeprefix(prefix).astype(int)
    return rows


def _loss_series(history: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, steps, values)`` of ``train/loss`` and ``val/loss``, where logged."""
    series = []
    for metric in ("train/loss", "val/loss"):
        rows = history[history["metric"] == metric].sort_values("step")
        if not rows.empty:
            series.append((metric, rows["step"].to_numpy(), rows["value"].to_numpy()))
    return series


def _grad_norm_series(history: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(label, steps, values)`` of ``grad_norm/b{l}``, one per layer."""
    series = []
    for layer, group in _layered(history, "grad_norm/b").groupby("layer"):
        group = group.sort_values("step")
        series.append((f"layer {layer}", group["step"].to_numpy(), group["value"].to_numpy()))
    return series


def _saturation_table(history: pd.DataFrame) -> pd.DataFrame | None:
    """``saturation/{l}`` as layers x steps, or None without a saturating layer."""
    rows = _layered(history, "saturation/")
    if rows.empty:
        return None
    return rows.pivot_table(index="layer", columns="step", values="value")


def _extent(table: pd.DataFrame) -> tuple[float, float, float, float]:
    return (
        table.columns.min() - 0.5,
        table.columns.max() + 0.5,
        table.index.min() - 0.5,
        table.index.max() + 0.5,
    )


# A title at y=1.0 is where matplotlib puts it anyway when nothing sits above the Axes; given
# explicitly, the draw skips the search for overlapping tick labels (~2 ms of a ~40 ms draw).
TITLE_Y = 1.0


def loss_curves(history: pd.DataFrame, ax: Axes) -> Figure:
    """``train/loss`` and ``val/loss`` against epoch."""
    for metric, steps, values in _loss_series(history):
        ax.plot(steps, values, label=metric, marker=".")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss", y=TITLE_Y)
    ax.legend()
    return ax.figure


def grad_norms(history: pd.DataFrame, ax: Axes) -> Figure:
    """``grad_norm/b{l}`` per layer over epochs, log y: the vanishing-gradient picture."""
    for label, steps, values in _grad_norm_series(history):
        ax.plot(steps, values, label=label, marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("||∂C/∂b^l||")
    ax.set_title("gradient norm per layer", y=TITLE_Y)
    if ax.get_lines():  # none when trainer.instruments=false
        ax.legend()
    return ax.figure


def saturation(history: pd.DataFrame, ax: Axes) -> Figure:
    """``saturation/{l}`` as a heatmap: layers by epochs, colour = saturated fraction."""
    table = _saturation_table(history)
    if table is None:
        ax.set_title("saturation per layer (no sigmoid, tanh or softmax layer)", y=TITLE_Y)
        return ax.figure
    image = ax.imshow(
        table.to_numpy(),
        aspect="auto",
        origin="lower",
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        extent=_extent(table),
    )
    ax.set_yticks(list(table.index))
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer")
    ax.set_title("saturated fraction per layer", y=TITLE_Y)
    ax.figure.colorbar(image, ax=ax)
    return ax.figure


RUN_PLOTS = {"loss.png": loss_curves, "grad_norm.png": grad_norms, "saturation.png": saturation}


# ------------------------------------------------------------------- the plots every run logs


def save_run_plots(history: pd.DataFrame, folder: str | Path, dpi: float = 80) -> list[Path]:
    """Write ``RUN_PLOTS`` of one run's ``history`` as PNGs named by their keys into ``folder``.

    Drawn only with ``tracking.plots=true``: MLflow's own charts show the same curves.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, plot in RUN_PLOTS.items():
        path = folder / name
        plot(history, new_axes(layout=None, dpi=dpi)).savefig(path, dpi=dpi)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ sweep plots


def arm_colors(arms) -> dict[str, tuple]:
    """One colour per arm, the same in every plot of a report (arms sorted by name)."""
    cycle = matplotlib.colormaps["tab10"].colors
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(sorted(set(arms)))}


def _mean_std(rows: pd.DataFrame) -> pd.DataFrame:
    """Per step, the mean and std (ddof 1; 0 for one run) of ``value`` over runs."""
    stats = rows.groupby("step")["value"].agg(["mean", "std", "count"])
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def arm_curves(
    history: pd.DataFrame, ax: Axes, metrics: tuple[str, ...] = ("train/loss", "val/loss")
) -> Figure:
    """Per arm, each metric against epoch: the mean over runs (seeds) with a ±1 std band.

    ``history``: columns ``run_id, metric, step, value, arm``, normally the runs of each arm's
    best setting. Colour = arm; the first metric is drawn dashed, the others solid.
    """
    colors = arm_colors(history["arm"])
    styles = ["--", "-", ":", "-."] if len(metrics) > 1 else ["-"]
    for arm, rows in history[history["metric"].isin(metrics)].groupby("arm"):
        for i, metric in enumerate(metrics):
            stats = _mean_std(rows[rows["metric"] == metric])
            if stats.empty:
                continue
            n = int(stats["count"].max())
            ax.plot(
                stats.index,
                stats["mean"],
                linestyle=styles[i % len(styles)],
                color=colors[arm],
                label=f"{arm} {metric} (n={n})",
            )
            ax.fill_between(
                stats.index,
                stats["mean"] - stats["std"],
                stats["mean"] + stats["std"],
                color=colors[arm],
                alpha=0.15,
                linewidth=0,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel(" / ".join(metrics))
    ax.set_title("mean over seeds ± 1 std, each arm at its best setting")
    ax.legend(fontsize="small")
    return ax.figure


def lr_sensitivity(
    runs: pd.DataFrame,
    ax: Axes,
    metric: str = "val/loss",
    lr: str = "optimizer.lr",
    by: str = "arm",
) -> Figure:
    """Final ``metric`` against the learning rate (log x), one line per ``by`` value.

    ``runs``: a runs frame (:func:`bpexp.analysis.runs`) with a ``by`` column. Dots are runs,
    the line the mean over seeds, drawn only at learning rates where no seed diverged;
    diverged runs are crosses at the top edge (their loss is not a number to average).
    """
    colors = arm_colors(runs[by])
    top = blended_transform_factory(ax.transData, ax.transAxes)
    scored = runs[runs["outcome"].isin(["completed", "diverged"])]
    diverged_marked = False
    for arm, rows in scored.groupby(by):
        value = rows[metric].where(rows["outcome"] != "diverged")
        value = value.where(np.isfinite(value.astype(float)))
        ax.scatter(rows[lr], value, color=colors[arm], alpha=0.4, s=12)
        means = value.groupby(rows[lr]).agg(lambda v: v.mean() if v.notna().all() else np.nan)
        ax.plot(means.index, means.to_numpy(), marker="o", color=colors[arm], label=str(arm))
        lost = rows[value.isna()]
        if not lost.empty:
            ax.scatter(
                lost[lr],
                np.full(len(lost), 0.97),
                marker="x",
                s=60,
                color=colors[arm],
                transform=top,
                label=None if diverged_marked else "diverged (any arm)",
                clip_on=False,
            )
            diverged_marked = True
    ax.set_xscale("log")
    finite = scored[metric][np.isfinite(scored[metric].astype(float))]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
    ax.set_xlabel(lr + " (log scale)")
    ax.set_ylabel(f"final {metric}")
    ax.set_title(f"learning-rate sensitivity: final {metric}")
    if ax.get_legend_handles_labels()[0]:  # (none when no job finished)
        ax.legend(fontsize="small")
    return ax.figure


def arm_grad_norms(history: pd.DataFrame, ax: Axes, prefix: str = "grad_norm/b") -> Figure:
    """``grad_norm/b{l}`` per layer over epochs, mean over seeds, log y: colour = arm, line
    style = layer (solid is layer 1). ``history`` as for :func:`arm_curves`."""
    rows = _layered(history, prefix)
    colors = arm_colors(history["arm"])
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    for (arm, layer), group in rows.groupby(["arm", "layer"]):
        stats = _mean_std(group)
        ax.plot(
            stats.index,
            stats["mean"],
            color=colors[arm],
            linestyle=styles[(layer - 1) % len(styles)],
            label=f"{arm} layer {layer}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{prefix}{{l}}, mean over seeds")
    ax.set_title("gradient norm per layer")
    if ax.get_lines():  # none when trainer.instruments=false
        ax.legend(fontsize="small")
    return ax.figure


def arm_saturation(history: pd.DataFrame, ax: Axes) -> Figure:
    """``saturation/{l}`` as a heatmap: one row per arm and layer, columns epochs, colour = the
    saturated fraction, mean over seeds. ``history`` as for :func:`arm_curves`."""
    rows = _layered(history, "saturation/")
    if rows.empty:
        ax.set_title("saturation per layer (no sigmoid, tanh or softmax layer)")
        return ax.figure
    table = rows.pivot_table(index=["arm", "layer"], columns="step", values="value")
    steps = table.columns.to_numpy()
    image = ax.imshow(
        table.to_numpy(),
        aspect="auto",
        vmin=0.0,
        vmax=1.0,
        cmap="viridis",
        interpolation="nearest",
        extent=(steps.min() - 0.5, steps.max() + 0.5, len(table) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(table)))
    ax.set_yticklabels([f"{arm} · layer {layer}" for arm, layer in table.index])
    ax.set_xlabel("epoch")
    ax.set_title("saturated fraction per layer, mean over seeds")
    ax.figure.colorbar(image, ax=ax)
    return ax.figure


# -------------------------------------------------------------------------------- curvature


def new_axes_grid(rows: int, cols: int, width: float = 3.2, height: float = 2.6) -> np.ndarray:
    """A fresh figure with a rows x cols array of Axes (``width`` x ``height`` inches each),
    not registered with pyplot."""
    fig = Figure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    return np.atleast_2d(fig.subplots(rows, cols, squeeze=False))


def sharpness_panels(history: pd.DataFrame) -> tuple[list[str], list[float]]:
    """The rows (arms) and columns (learning rates) of :func:`sharpness_vs_threshold`."""
    rows = history[history["metric"] == "sharpness"]
    return sorted(rows["arm"].unique()), sorted(rows["optimizer.lr"].unique())


def sharpness_vs_threshold(history: pd.DataFrame, axes: np.ndarray) -> Figure:
    """``sharpness`` against epoch, one panel per arm (row) and learning rate (column): one line
    per run (seed) and the run's ``sharpness_threshold`` dashed (2/lr for SGD). A run that
    stopped early (diverged) is marked by a cross at its last sharpness.

    ``history``: columns ``run_id, metric, step, value, arm, optimizer.lr, seed``; ``axes`` a
    2-D array with at least :func:`sharpness_panels`' rows x columns.
    """
    arms, lrs = sharpness_panels(history)
    last_step = history.groupby("run_id")["step"].max()
    end = last_step.max()
    for i, arm in enumerate(arms):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            panel = history[(history["arm"] == arm) & (history["optimizer.lr"] == lr)]
            top = 0.0
            for k, (seed, run) in enumerate(panel.groupby("seed")):
                color = matplotlib.colormaps["tab10"].colors[k % 10]
                points = run[run["metric"] == "sharpness"].sort_values("step")
                ax.plot(points["step"], points["value"], color=color, lw=1.2, label=f"seed {seed}")
                stopped = last_step[run["run_id"].iloc[0]]
                if stopped < end:
                    ax.annotate(
                        f"seed {seed} diverged at epoch {stopped}",
                        (0.5, 0.9 - 0.1 * k),
                        xycoords="axes fraction",
                        ha="center",
                        fontsize="small",
                    )
                    ax.plot(
                        points["step"].iloc[-1:],
                        points["value"].iloc[-1:],
                        "x",
                        color=color,
                        ms=8,
                        label=f"seed {seed} diverged",
                    )
                top = max(top, float(points["value"].max()))
                bound = run[run["metric"] == "sharpness_threshold"]["value"]
                if len(bound):
                    ax.axhline(bound.iloc[0], color="black", ls="--", lw=1, label="threshold")
                    top = max(top, float(bound.iloc[0]))
            ax.set_ylim(0, 1.15 * top if top > 0 else 1)
            ax.set_xlim(0, end)
            ax.set_title(f"{arm}, lr={lr:g}", fontsize="medium")
            if i == len(arms) - 1:
                ax.set_xlabel("epoch (= full-batch step)")
            if j == 0:
                ax.set_ylabel("sharpness λ_max")
    fig = axes.flat[0].figure
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles))
    fig.suptitle("sharpness (top Hessian eigenvalue of the training loss)\nand the rule's bound")
    return fig


# ------------------------------------------------------------------------- demonstrations


def ema_curves(frame: pd.DataFrame, ax: Axes, bias_correction: bool) -> Figure:
    """The EMA demonstration: the noisy signal as dots and its average for each beta.

    ``frame``: columns ``step, signal, beta, bias_correction, ema`` (:func:`bpexp.demos.ema_demo`).
    """
    rows = frame[frame["bias_correction"] == bias_correction]
    signal = rows.drop_duplicates("step")
    ax.scatter(signal["step"], signal["signal"], s=6, color="0.6", label="signal")
    for beta, group in rows.groupby("beta"):
        ax.plot(group["step"], group["ema"], label=f"β = {beta:g} (~{1 / (1 - beta):.0f} points)")
    corrected = "with" if bias_correction else "without"
    ax.set_title(f"EMA {corrected} bias correction: V_t = β V_{{t-1}} + (1-β) S_t")
    ax.set_xlabel("t")
    ax.legend(fontsize="small")
    return ax.figure


def ravine_paths(frame: pd.DataFrame, ax: Axes) -> Figure:
    """Trajectories on the ravine f(x, y) = x²/20 + y² over its contours.

    ``frame``: columns ``optimizer, step, x, y, f`` (:func:`bpexp.demos.ravine_demo`).
    """
    span_x = max(8.0, float(frame["x"].abs().max()) * 1.1)
    span_y = max(3.0, float(frame["y"].abs().max()) * 1.1)
    gx, gy = np.meshgrid(np.linspace(-span_x, span_x, 200), np.linspace(-span_y, span_y, 200))
    ax.contour(gx, gy, gx**2 / 20 + gy**2, levels=15, colors="0.8", linewidths=0.7)
    for name, path in frame.groupby("optimizer", sort=False):
        path = path.sort_values("step")
        final = path["f"].iloc[-1]
        ax.plot(path["x"], path["y"], marker=".", label=f"{name}: f = {final:.2g}")
    ax.plot([0], [0], marker="*", color="black", markersize=10)
    steps = int(frame["step"].max())
    ax.set_title(f"ravine f = x²/20 + y², {steps} steps from (-7, 2)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize="small")
    return ax.figure
