"""Every figure of a sweep's report, as a registered section.

:data:`SECTIONS` lists the report's sections in order; each has a name, a test of whether it
applies to a sweep (:class:`Context`: its name, runs, history, protocol) and a function that
draws it, returning :class:`Section` parts (a title, a figure saved as ``file``, lines of
Markdown). :mod:`bpexp.report` renders each part once into ``index.md`` and ``index.html``.
The first sections apply to every sweep (learning-rate sensitivity, the curves of the runs
that answer, per-layer gradient norms and saturation); after them come those a named sweep
declares for its own question (``depth``, ``momentum_beta``, ...). To add a figure, write a
function here and register it with :func:`section` (see docs/where-to-add.md).

Every figure stays readable: at most :data:`MAX_LINES` lines a panel, small multiples beyond
that, legends outside the data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bpexp import plots


@dataclass
class Section:
    """One part of a sweep's report: a title, then a figure (saved as ``file``) and text."""

    title: str
    file: str | None = None
    figure: Figure | None = None
    text: list[str] = field(default_factory=list)


@dataclass
class Context:
    """What a report's sections draw from. ``runs``: a runs frame with the ``arm`` and
    ``stage`` columns the sweeper decided (:mod:`bpexp.jobs`); ``history``: their points
    (``run_id, metric, step, value``); ``answering``: the run ids that answer (a protocol's
    confirm runs; in a plain grid each arm's runs at its best setting); ``arms``: the arms,
    best first."""

    name: str
    runs: pd.DataFrame
    history: pd.DataFrame
    metric: str
    answering: list[str]
    arms: list[str]
    protocol: object | None = None  # bpexp.protocol.Protocol
    plan: dict = field(default_factory=dict)  # the sweeper's protocol.json

    @property
    def benchmark(self) -> bool:
        """A sweep across workloads (sweep=benchmark): its page is the benchmark's answer."""
        return bool(self.plan.get("workloads"))

    @property
    def tuning(self) -> pd.DataFrame:
        """The runs that searched the settings (a protocol's tune stage; every run of a grid)."""
        if self.protocol is None:
            return self.runs
        return self.runs[self.runs["stage"] == "tune"]

    @property
    def curves(self) -> pd.DataFrame:
        """History rows of the answering runs, with their ``arm``."""
        answering = self.runs[self.runs["run_id"].isin(self.answering)][["run_id", "arm"]]
        return self.history.drop(columns="arm", errors="ignore").merge(answering, on="run_id")


@dataclass(frozen=True)
class Registered:
    name: str
    draw: Callable[[Context], list[Section]]
    applies: Callable[[Context], bool]


SECTIONS: list[Registered] = []


def section(
    applies: Callable[[Context], bool] = lambda ctx: True, name: str | None = None
) -> Callable:
    """Register the decorated ``draw(ctx) -> list[Section]`` as the report's next section."""

    def register(draw: Callable[[Context], list[Section]]) -> Callable:
        SECTIONS.append(Registered(name or draw.__name__, draw, applies))
        return draw

    return register


def for_sweep(name: str) -> Callable[[Context], bool]:
    return lambda ctx: ctx.name == name


MAX_LINES = 6  # lines a panel holds and stays readable; more arms get small multiples


def _panels(n: int, width: float = 3.6, height: float = 3.0) -> tuple[Figure, list]:
    """A figure of ``n`` small panels, four a row, sharing both axes."""
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    fig = plots.new_figure(width * columns + 1.5, height * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


# ------------------------------------------------------------------- every sweep's figures


@section(
    lambda ctx: "optimizer.lr" in ctx.runs.columns and len(ctx.tuning) > 0 and not ctx.benchmark
)
def lr_sensitivity(ctx: Context) -> list[Section]:
    """Final yardstick against the learning rate and, for a protocol, against the effective
    step; with more arms than a panel holds, one small panel per arm against the lr."""
    tune, metric = ctx.tuning.copy(), ctx.metric
    if ctx.protocol is None and "optimizer.beta" in tune.columns:
        # A grid's arms searched over beta too: one line per arm and beta.
        varies = tune.groupby("arm")["optimizer.beta"].nunique(dropna=False).max() > 1
        if varies:
            tune["arm"] = tune["arm"] + " beta=" + tune["optimizer.beta"].map("{:g}".format)
    arms = list(dict.fromkeys(tune["arm"]))
    title = "Learning-rate sensitivity"
    if len(arms) > MAX_LINES:
        fig, axes = _panels(len(arms))
        for ax, arm in zip(axes, arms, strict=True):
            plots.lr_sensitivity(tune[tune["arm"] == arm], ax, metric=metric)
            ax.get_legend().remove()
            ax.set_title(arm, fontsize="small")
            ax.set_xlabel("optimizer.lr")
        fig.suptitle(f"Tuning runs: final {metric} against the lr, one panel per arm")
        return [Section(title, "lr_sensitivity.png", fig)]
    if "effective_step" not in tune.columns:
        from bpexp.protocol import arm_effective_step

        tune["effective_step"] = [arm_effective_step({}, r) for r in tune.to_dict("records")]
    fig = plots.new_figure(11, 4.2)
    left, right = fig.subplots(1, 2, sharey=True)
    for ax, x in ((left, "optimizer.lr"), (right, "effective_step")):
        plots.lr_sensitivity(tune, ax, metric=metric, lr=x)
        ax.get_legend().remove()
    fig.suptitle(f"Final {metric} of the tuning runs (dots: seeds, line: their mean)")
    left.set_title("against optimizer.lr")
    right.set_title("against the effective step η/(1−β) (η for SGD, EMA)")
    right.set_ylabel("")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    return [Section(title, "lr_sensitivity.png", fig)]


def curves_figure(
    curves: pd.DataFrame, metrics: tuple[str, ...], title: str, target: float | None = None
) -> Figure:
    """Per arm, ``metrics`` over epochs (mean ± 1 std over seeds): one panel for up to
    :data:`MAX_LINES` lines, else one small panel per arm."""
    arms = list(dict.fromkeys(curves["arm"]))
    if len(arms) * len(metrics) > MAX_LINES:
        fig, axes = _panels(len(arms))
        for ax, arm in zip(axes, arms, strict=True):
            plots.arm_curves(curves[curves["arm"] == arm], ax, metrics=metrics)
            ax.get_legend().remove()
            ax.set_title(arm, fontsize="small")
            if target is not None:
                ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        fig.suptitle(title)
        return fig
    ax = plots.new_axes(8, 4.5)
    plots.arm_curves(curves, ax, metrics=metrics)
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label="target")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax.figure


def _who(ctx: Context) -> str:
    return "confirm runs" if ctx.protocol is not None else "each arm at its best setting"


@section(lambda ctx: len(ctx.answering) > 0 and not ctx.benchmark)
def yardstick_curves(ctx: Context) -> list[Section]:
    target = getattr(ctx.protocol, "target", None)
    title = f"{ctx.metric} per epoch ({_who(ctx)})"
    fig = curves_figure(ctx.curves, (ctx.metric,), f"{title}: mean over seeds ± 1 std", target)
    return [Section(title, "yardstick_curves.png", fig)]


@section(lambda ctx: len(ctx.answering) > 0 and not ctx.benchmark)
def loss_curves(ctx: Context) -> list[Section]:
    title = f"Loss per epoch ({_who(ctx)})"
    fig = curves_figure(
        ctx.curves, ("train/loss", "val/loss"), f"{title}: train (dashed), validation (solid)"
    )
    return [Section(title, "loss_curves.png", fig)]


def _layers(ctx: Context, prefix: str) -> int:
    names = ctx.curves["metric"]
    return names[names.str.startswith(prefix)].nunique()


@section(lambda ctx: 0 < _layers(ctx, "grad_norm/b") * len(ctx.arms) <= MAX_LINES)
def grad_norm(ctx: Context) -> list[Section]:
    fig = plots.arm_grad_norms(ctx.curves, plots.new_axes(8, 5))
    return [Section(f"Gradient norm per layer ({_who(ctx)})", "grad_norm.png", fig)]


@section(lambda ctx: _layers(ctx, "saturation/") > 0 and len(ctx.arms) <= MAX_LINES)
def saturation(ctx: Context) -> list[Section]:
    rows = _layers(ctx, "saturation/") * len(ctx.arms)
    fig = plots.arm_saturation(ctx.curves, plots.new_axes(8, max(3.0, 1.5 + 0.35 * rows)))
    return [Section(f"Saturated fraction per layer ({_who(ctx)})", "saturation.png", fig)]


def _confirm(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that report (a protocol's confirm runs; every run of a plain sweep)."""
    if "stage" in runs.columns and (runs["stage"] == "confirm").any():
        return runs[runs["stage"] == "confirm"]
    return runs


def _mean_curve(history: pd.DataFrame, run_ids, metric: str) -> pd.Series:
    rows = history[history["run_id"].isin(list(run_ids)) & (history["metric"] == metric)]
    return rows.groupby("step")["value"].mean()


def _legend_outside(fig: Figure, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small")


def _hidden_layers(value) -> list[int]:
    return list(json.loads(value)) if isinstance(value, str) else list(value)


# ----------------------------------------------------------------------------------- depth


def depth(runs: pd.DataFrame, history: pd.DataFrame) -> list[Section]:
    """Nielsen's chapter-5 figure and the layer speeds over epochs."""
    frame = _confirm(runs).copy()
    frame["depth"] = frame["network.hidden"].map(lambda v: len(_hidden_layers(v)))
    activations = sorted(frame["network.activation"].unique())
    depths = sorted(frame["depth"].unique())
    colors = plots.arm_colors([f"{d}" for d in depths])

    fig = plots.new_figure(4.2 * len(activations) + 1.5, 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(activations), sharey=True))
    for ax, activation in zip(axes, activations, strict=True):
        for d in depths:
            ids = frame.loc[(frame["network.activation"] == activation) & (frame["depth"] == d)]
            norms = [
                _mean_curve(history, ids["run_id"], f"grad_norm/b{layer}").get(0, np.nan)
                for layer in range(1, d + 1)
            ]
            ax.plot(range(1, d + 1), norms, marker="o", color=colors[f"{d}"], label=f"{d} hidden")
        ax.set_yscale("log")
        ax.set_xticks(range(1, max(depths) + 1))
        ax.set_xlabel("hidden layer l")
        ax.set_title(activation)
    axes[0].set_ylabel("‖∂C/∂b^l‖ at initialisation")
    fig.suptitle("Gradient norm per hidden layer at initialisation (mean over confirm seeds)")
    _legend_outside(fig, axes[0])

    over = plots.new_figure(3.2 * len(depths) + 1.5, 2.8 * len(activations) + 0.6)
    grid = np.atleast_2d(over.subplots(len(activations), len(depths), sharex=True, sharey=True))
    layer_colors = plots.arm_colors([f"layer {l}" for l in range(1, max(depths) + 1)])
    for i, activation in enumerate(activations):
        for j, d in enumerate(depths):
            ax = grid[i, j]
            ids = frame.loc[(frame["network.activation"] == activation) & (frame["depth"] == d)]
            for layer in range(1, d + 1):
                curve = _mean_curve(history, ids["run_id"], f"grad_norm/b{layer}")
                ax.plot(
                    curve.index,
                    curve.to_numpy(),
                    color=layer_colors[f"layer {layer}"],
                    label=f"layer {layer}",
                )
            ax.set_yscale("log")
            ax.set_title(f"{activation}, {d} hidden", fontsize="medium")
            if i == len(activations) - 1:
                ax.set_xlabel("epoch")
        grid[i, 0].set_ylabel("‖∂C/∂b^l‖")
    over.suptitle("The hidden layers learn at different speeds: ‖∂C/∂b^l‖ over epochs")
    _legend_outside(over, grid[-1, -1])

    first = frame[frame["depth"] == max(depths)]
    rows = []
    for activation in activations:
        ids = first.loc[first["network.activation"] == activation, "run_id"]
        norms = [
            _mean_curve(history, ids, f"grad_norm/b{layer}").get(0, np.nan)
            for layer in range(1, max(depths) + 1)
        ]
        rows.append(
            f"| {activation} | "
            + " | ".join(f"{n:.3g}" for n in norms)
            + f" | {norms[-1] / norms[0]:.3g} |"
        )
    header = " | ".join(f"layer {l}" for l in range(1, max(depths) + 1))
    table = [
        f"‖∂C/∂b^l‖ at initialisation, {max(depths)} hidden layers (mean over the confirm seeds):",
        "",
        f"| activation | {header} | last / first |",
        "|---" * (max(depths) + 2) + "|",
        *rows,
    ]
    return [
        Section("Gradient norm per layer at initialisation", "grad_norm_at_init.png", fig, table),
        Section("Gradient norm per layer over epochs", "grad_norm_over_epochs.png", over),
    ]


# ----------------------------------------------------------------------- cost_saturation


def cost_saturation(runs: pd.DataFrame, history: pd.DataFrame) -> list[Section]:
    """Learning from a saturated start: quadratic vs cross-entropy over the first epochs."""
    frame = _confirm(runs)
    costs = sorted(frame["cost.name"].unique())
    colors = plots.arm_colors(costs)
    fig = plots.new_figure(13, 3.8)
    acc, rel, wrong = fig.subplots(1, 3)
    output_layer = max(
        (
            int(m.rsplit("/", 1)[1])
            for m in history["metric"].unique()
            if m.startswith("wrong_saturation/")
        ),
        default=None,
    )
    for cost in costs:
        ids = frame.loc[frame["cost.name"] == cost, "run_id"]
        n = len(ids)
        curve = _mean_curve(history, ids, "val/accuracy")
        acc.plot(
            curve.index, curve.to_numpy(), marker="o", color=colors[cost], label=f"{cost} (n={n})"
        )
        # Each run's loss relative to its own start: the two costs' losses are not one scale.
        loss = history[history["run_id"].isin(ids) & (history["metric"] == "train/loss")]
        start = loss[loss["step"] == 0].set_index("run_id")["value"]
        relative = loss.assign(value=loss["value"] / loss["run_id"].map(start))
        curve = relative.groupby("step")["value"].mean()
        rel.plot(curve.index, curve.to_numpy(), marker="o", color=colors[cost])
        if output_layer is not None:
            curve = _mean_curve(history, ids, f"wrong_saturation/{output_layer}")
            wrong.plot(curve.index, curve.to_numpy(), marker="o", color=colors[cost])
    acc.set_title("val/accuracy")
    rel.set_title("train/loss / train/loss at epoch 0")
    wrong.set_title(f"wrong_saturation/{output_layer}")
    for ax in (acc, rel, wrong):
        ax.set_xlabel("epoch")
    fig.suptitle(
        "Learning from a saturated start (N(0,1) weights), each cost at its tuned lr\n"
        "right: the fraction of outputs saturated at the wrong end"
    )
    _legend_outside(fig, acc)
    return [Section("Learning from a saturated start", "saturated_start.png", fig)]


# ---------------------------------------------------------------------------- batch_size


def batch_size(runs: pd.DataFrame, history: pd.DataFrame) -> list[Section]:
    """Each batch size at its tuned lr: loss against epochs, updates, samples; time per epoch."""
    frame = _confirm(runs).copy()
    n_train = frame["data.n_train"].astype(float)
    size = frame["trainer.batch_size"].astype(float)
    frame["size"] = size.where(size.notna(), n_train)
    frame["label"] = [
        "full batch" if pd.isna(b) else f"batch {int(b)}" for b in frame["trainer.batch_size"]
    ]
    frame["updates_per_epoch"] = np.ceil(n_train / frame["size"])
    labels = list(dict.fromkeys(frame.sort_values("size")["label"]))
    colors = plots.arm_colors(labels)
    fig = plots.new_figure(15, 3.8)
    by_epoch, by_update, by_sample, seconds = fig.subplots(1, 4)
    times = []
    for label in labels:
        rows = frame[frame["label"] == label]
        curve = _mean_curve(history, rows["run_id"], "val/loss")
        per_epoch = float(rows["updates_per_epoch"].iloc[0])
        epochs = curve.index.to_numpy(dtype=float)
        by_epoch.plot(epochs, curve.to_numpy(), color=colors[label], label=label)
        by_update.plot(np.maximum(epochs * per_epoch, 1), curve.to_numpy(), color=colors[label])
        by_sample.plot(
            np.maximum(epochs * float(rows["data.n_train"].iloc[0]), 1),
            curve.to_numpy(),
            color=colors[label],
        )
        wall = (rows["end_time"] - rows["start_time"]).dt.total_seconds() / rows[
            "trainer.epochs"
        ].astype(float)
        times.append(float(wall.mean()))
    seconds.bar(range(len(labels)), times, color=[colors[label] for label in labels])
    seconds.set_xticks(range(len(labels)), labels, rotation=20)
    seconds.set_title("wall time per epoch")
    seconds.set_ylabel("s (run time / epochs)")
    for ax, x in (
        (by_epoch, "epoch"),
        (by_update, "updates (log)"),
        (by_sample, "samples seen (log)"),
    ):
        ax.set_xlabel(x)
        ax.set_ylabel("val/loss")
    by_update.set_xscale("log")
    by_sample.set_xscale("log")
    fig.suptitle("Each batch size at its tuned lr: val/loss (mean over confirm seeds)")
    _legend_outside(fig, by_epoch)
    chosen = frame.groupby("label")["optimizer.lr"].first()
    text = [
        "| batch | tuned lr | updates per epoch | wall time per epoch (s) "
        "| B_simple at epoch 0 | B_simple at the end |",
        "|---|---|---|---|---|---|",
    ]
    for label, t in zip(labels, times, strict=True):
        per_epoch = int(frame.loc[frame["label"] == label, "updates_per_epoch"].iloc[0])
        start, end = _noise_scale(history, frame.loc[frame["label"] == label, "run_id"])
        noise = f"{_cell(start)} | {_cell(end)}"
        text.append(f"| {label} | {chosen[label]:g} | {per_epoch} | {t:.3g} | {noise} |")
    text += [
        "",
        "B_simple = tr(Σ)/|G|², the gradient noise scale on the probe set (`grad_noise_scale`,"
        " median over the runs): batch sizes well below it scale almost perfectly, above it"
        " returns diminish (docs/instruments-curvature.md).",
    ]
    return [Section("Batch size: epochs, updates, samples, time", "batch_size.png", fig, text)]


def _cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3g}"


def _noise_scale(history: pd.DataFrame, run_ids) -> tuple[float, float]:
    """Median over runs of ``grad_noise_scale`` at epoch 0 and at each run's last point."""
    rows = history[
        history["run_id"].isin(list(run_ids)) & (history["metric"] == "grad_noise_scale")
    ]
    if rows.empty:
        return math.nan, math.nan
    last = rows["step"] == rows.groupby("run_id")["step"].transform("max")
    return float(rows[rows["step"] == 0]["value"].median()), float(rows[last]["value"].median())


# ------------------------------------------------------------------------- momentum_beta


def _form(row) -> str:
    if row["optimizer.form"] == "classical":
        return "classical"
    return "ema+bc" if bool(row.get("optimizer.bias_correction")) else "ema"


def momentum_beta(runs: pd.DataFrame, history: pd.DataFrame) -> list[Section]:
    """A heat map over (lr, beta) per form, and classical vs EMA at matched lr (1 - beta)."""
    tune = runs[runs["stage"] == "tune"] if "stage" in runs.columns else runs
    tune = tune.copy()
    tune["form"] = [_form(r) for r in tune.to_dict("records")]
    tune["score"] = tune["val/accuracy"].where(tune["outcome"] == "completed")
    means = tune.groupby(["form", "optimizer.beta", "optimizer.lr"])["score"].mean().reset_index()
    forms = [f for f in ("classical", "ema", "ema+bc") if f in set(means["form"])]
    lrs = sorted(means["optimizer.lr"].unique())
    betas = sorted(means["optimizer.beta"].unique())
    heat = plots.new_figure(4.3 * len(forms) + 1.2, 3.4)
    axes = np.atleast_1d(heat.subplots(1, len(forms), sharey=True))
    image = None
    for ax, form in zip(axes, forms, strict=True):
        grid = means[means["form"] == form].pivot(
            index="optimizer.beta", columns="optimizer.lr", values="score"
        )
        grid = grid.reindex(index=betas, columns=lrs)
        image = ax.imshow(
            grid.to_numpy(), aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis"
        )
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs], rotation=60, fontsize="small")
        ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel("optimizer.lr")
        ax.set_title(form)
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            if np.isfinite(value):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if value < 0.6 else "black",
                )
    axes[0].set_ylabel("optimizer.beta")
    heat.colorbar(image, ax=list(axes), label="val/accuracy (mean over tuning seeds)")
    heat.suptitle("Tuning runs: val/accuracy over (lr, beta); blank = a seed diverged")

    overlay = plots.new_figure(4.3 * len(betas) + 1.5, 3.6)
    panels = np.atleast_1d(overlay.subplots(1, len(betas), sharey=True))
    colors = plots.arm_colors(forms)
    styles = {"classical": ("o", "-", 9), "ema": ("x", "--", 7), "ema+bc": ("+", ":", 7)}
    for ax, beta in zip(panels, betas, strict=True):
        for form in forms:
            rows = means[(means["form"] == form) & (means["optimizer.beta"] == beta)]
            scale = 1.0 if form == "classical" else 1.0 - beta
            marker, line, size = styles[form]
            ax.plot(
                rows["optimizer.lr"] * scale,
                rows["score"],
                marker=marker,
                linestyle=line,
                markersize=size,
                color=colors[form],
                label=form,
            )
        ax.set_xscale("log")
        ax.set_title(f"beta = {beta:g}")
        ax.set_xlabel("classical lr: η (classical), η (1 − β) (EMA)")
    panels[0].set_ylabel("val/accuracy (mean over tuning seeds)")
    overlay.suptitle(
        "Classical and EMA on one lr scale: where the points meet, the runs are identical"
    )
    _legend_outside(overlay, panels[0])
    return [
        Section("val/accuracy over (lr, beta)", "lr_beta_heatmap.png", heat),
        Section("Classical vs EMA at matched lr (1 − beta)", "classical_vs_ema.png", overlay),
    ]


# ----------------------------------------------------------------------------- pixels3x4


def pixels3x4(runs: pd.DataFrame, history: pd.DataFrame) -> list[Section]:
    """The cost after 0, 1, 10 and 50 full-batch updates, as a book prints it."""
    steps = [0, 1, 10, 50]
    loss = history[history["run_id"].isin(runs["run_id"]) & (history["metric"] == "train/loss")]
    table = loss[loss["step"].isin(steps)].pivot(index="run_id", columns="step", values="value")
    seeds = runs.set_index("run_id")["seed"]
    lines = [
        "Quadratic cost (the mean over the 64 images) after full-batch updates; one update is"
        " one epoch here.",
        "",
        "| seed | " + " | ".join(f"after {s} updates" for s in steps) + " | final train/accuracy |",
        "|---" * (len(steps) + 2) + "|",
    ]
    accuracy = runs.set_index("run_id")["train/accuracy"]
    for run_id in sorted(table.index, key=lambda r: seeds[r]):
        cells = " | ".join(
            f"{table.loc[run_id, s]:.4f}"
            if s in table.columns and math.isfinite(table.loc[run_id, s])
            else ""
            for s in steps
        )
        lines.append(f"| {seeds[run_id]} | {cells} | {accuracy[run_id]:.3f} |")
    return [Section("The cost after 0, 1, 10 and 50 updates", text=lines)]


# --------------------------------------------------------------------- edge_of_stability


def edge_of_stability(runs: pd.DataFrame, history: pd.DataFrame) -> list[Section]:
    """``sharpness`` over epochs against each run's ``sharpness_threshold``
    (:func:`bpexp.plots.sharpness_vs_threshold`), and per run: the bound, the sharpness at
    epoch 0, its median over the second half of training (also as a fraction of the bound:
    about 1 at the edge of stability) and its maximum there."""
    keys = runs[["run_id", "arm", "optimizer.lr", "seed", "outcome"]]
    curves = history.drop(columns=["arm", "optimizer.lr", "seed"], errors="ignore").merge(
        keys, on="run_id"
    )
    title = "Sharpness against the stability bound"
    if not (curves["metric"] == "sharpness").any():
        return [Section(title, text=["No run logged `sharpness` (trainer.sharpness_every=0)."])]
    arms, lrs = plots.sharpness_panels(curves)
    fig = plots.sharpness_vs_threshold(curves, plots.new_axes_grid(len(arms), len(lrs)))
    half = curves["step"].max() / 2
    text = [
        "Sharpness: the largest eigenvalue of the Hessian of the training loss on the probe"
        " set (Lanczos on exact Hessian-vector products); threshold: the update rule's bound on"
        " a quadratic (2/lr for SGD, (2 + 2 beta)/lr for momentum). At the edge of stability the"
        " sharpness rises to the threshold and hovers there (median / threshold near 1).",
        "",
        "| arm | lr | seed | outcome | threshold | sharpness at 0 | median, 2nd half"
        " | median / threshold | max, 2nd half |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (arm, lr, seed, outcome), rows in curves.groupby(
        ["arm", "optimizer.lr", "seed", "outcome"]
    ):
        sharp = rows[rows["metric"] == "sharpness"].sort_values("step")
        late = sharp[sharp["step"] >= half]["value"]
        bound = rows.loc[rows["metric"] == "sharpness_threshold", "value"]
        threshold = float(bound.iloc[0]) if len(bound) else math.nan
        median = float(late.median()) if len(late) else math.nan
        cells = [threshold, float(sharp["value"].iloc[0]), median, median / threshold]
        cells.append(float(late.max()) if len(late) else math.nan)
        shown = " | ".join("" if math.isnan(c) else f"{c:.3g}" for c in cells)
        text.append(f"| {arm} | {lr:g} | {seed} | {outcome} | {shown} |")
    return [Section(title, "sharpness.png", fig, text)]


SWEEP_FIGURES: dict[str, Callable[[pd.DataFrame, pd.DataFrame], list[Section]]] = {
    "depth": depth,
    "cost_saturation": cost_saturation,
    "batch_size": batch_size,
    "momentum_beta": momentum_beta,
    "pixels3x4": pixels3x4,
    "edge_of_stability": edge_of_stability,
}
# A named sweep's own figures come after every sweep's, in the order above.
for _name, _draw in SWEEP_FIGURES.items():
    section(for_sweep(_name), _name)(lambda ctx, draw=_draw: draw(ctx.runs, ctx.history))


# ---------------------------------------------------------------------- benchmark (sweeps)

TARGET_MARGIN = 0.01  # a proposed target: the best arm's median best val/accuracy minus this


@dataclass
class Benchmark:
    """A benchmark sweep's answer, from its confirm and tuning runs (see :func:`benchmark`)."""

    times: pd.DataFrame  # one row per confirm run: workload, arm, seed, steps, seconds
    targets: pd.DataFrame  # per workload: target, fixed (in its config) or proposed
    curve_steps: pd.DataFrame
    scores_steps: pd.DataFrame
    curve_seconds: pd.DataFrame
    scores_seconds: pd.DataFrame
    tunability: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
    pairs: pd.DataFrame
    counts: pd.DataFrame
    sentence: str


def _split_arms(ctx: Context) -> pd.DataFrame:
    """The runs with ``workload`` (its name) and ``optimizer`` (the rest of the arm's label)."""
    from bpexp.jobs import arm_label

    arms = ctx.plan["arms"]
    rest = {a: arm_label([o for o in arms[a] if not o.startswith("workload=")]) for a in arms}
    runs = ctx.runs.copy()
    runs["workload"] = runs["arm"].map(lambda a: ctx.plan["workloads"][a]["name"])
    runs["optimizer"] = runs["arm"].map(rest)
    return runs


def _first_epoch(history: pd.DataFrame, run_id: str, metric: str, target: float) -> float:
    rows = history[(history["run_id"] == run_id) & (history["metric"] == metric)]
    hit = rows.loc[rows["value"] >= target, "step"]
    return float(hit.min()) if len(hit) else math.inf


def benchmark(ctx: Context) -> Benchmark:
    """Time to target (steps and seconds), profiles, tunability and pairwise verdicts.

    A workload's target is the one fixed in its config (``workload.target``); where it is
    null, the report proposes one: the best optimizer's (by mean final val/accuracy) median
    over its confirm seeds of the best val/accuracy over epochs (the lower median, so that its
    median time is finite), minus :data:`TARGET_MARGIN`, rounded down to 0.001. A run's steps
    to target: the first epoch whose val/accuracy reaches it times the steps an epoch;
    seconds: the run's wall time times that epoch / its epochs.
    """
    if getattr(ctx, "_benchmark", None) is not None:
        return ctx._benchmark
    from bpexp import statistics as st

    runs = _split_arms(ctx)
    metric = ctx.metric
    confirm = runs[runs["stage"] == "confirm"]
    tune = runs[runs["stage"] == "tune"]
    targets = []
    for workload, group in confirm.groupby("workload", sort=False):
        fixed = ctx.plan["workloads"][group["arm"].iloc[0]]["target"]
        if fixed is not None:
            targets.append({"workload": workload, "target": float(fixed), "fixed": True})
            continue
        best_arm = group.groupby("optimizer")[metric].mean().idxmax()
        ids = group.loc[group["optimizer"] == best_arm, "run_id"]
        peaks = [
            ctx.history.loc[
                (ctx.history["run_id"] == r) & (ctx.history["metric"] == metric), "value"
            ].max()
            for r in ids
        ]
        # The lower median: the best optimizer's median time to it is finite.
        peak = float(np.quantile(peaks, 0.5, method="lower"))
        target = math.floor((peak - TARGET_MARGIN) * 1000) / 1000
        targets.append({"workload": workload, "target": target, "fixed": False})
    targets = pd.DataFrame(targets)
    target_of = targets.set_index("workload")["target"]
    rows = []
    for run in confirm.to_dict("records"):
        epoch = _first_epoch(ctx.history, run["run_id"], metric, target_of[run["workload"]])
        batch = run.get("trainer.batch_size")
        n_train = float(run.get("data.n_train", math.nan))
        per_epoch = math.ceil(n_train / (batch if batch and batch == batch else n_train))
        epochs = max(int(run.get("trainer.epochs", 1)), 1)
        wall = (run["end_time"] - run["start_time"]).total_seconds()
        done = run["outcome"] == "completed"
        rows.append(
            {
                "workload": run["workload"],
                "arm": run["optimizer"],
                "seed": run["seed"],
                "steps": epoch * per_epoch if done and math.isfinite(epoch) else math.inf,
                "seconds": wall * epoch / epochs if done and math.isfinite(epoch) else math.inf,
            }
        )
    times = pd.DataFrame(rows)
    curve_steps, scores_steps = st.performance_profile(times, "steps")
    curve_seconds, scores_seconds = st.performance_profile(times, "seconds")
    tuned = tune.rename(columns={"optimizer": "_opt"}).assign(arm=tune["optimizer"])
    tunability = st.tunability(tuned, metric)
    results = confirm.assign(arm=confirm["optimizer"])
    pairs, counts = st.wins_ties_losses(results, metric)
    ctx._benchmark = Benchmark(
        times,
        targets,
        curve_steps,
        scores_steps,
        curve_seconds,
        scores_seconds,
        tunability,
        pairs,
        counts,
        _sentence(pairs, scores_steps, targets),
    )
    return ctx._benchmark


def _sentence(pairs: pd.DataFrame, scores: pd.DataFrame, targets: pd.DataFrame) -> str:
    """One answer a reader can quote: who leads the profile, and per pair where the paired CI
    separates them."""
    n = len(targets)
    best = scores.iloc[0]
    parts = [
        f"Across {n} workloads, {best['arm']} has the best performance-profile score "
        f"({best['score']:.2f}, 95% bootstrap interval {best['low']:.2f}–{best['high']:.2f},"
        f" reaching {best['reached']} of {n} targets)"
    ]
    seen = set()
    for (a, b), group in pairs.groupby(["a", "b"], sort=False):
        if (b, a) in seen:
            continue
        seen.add((a, b))
        wins = list(group.loc[group["verdict"] == "win", "workload"])
        losses = list(group.loc[group["verdict"] == "loss", "workload"])
        ties = len(group) - len(wins) - len(losses)
        text = f"{a} vs {b}: indistinguishable on {ties} of {len(group)}"
        if wins:
            text += f", {a} ahead on {', '.join(wins)}"
        if losses:
            text += f", {b} ahead on {', '.join(losses)}"
        parts.append(text)
    return "; ".join(parts) + " (paired 95% CI of the final val/accuracy over confirm seeds)."


def _profile_panel(ax, curve: pd.DataFrame, scores: pd.DataFrame, unit: str) -> None:
    colors = plots.arm_colors(curve.columns)
    score = scores.set_index("arm")["score"]
    for arm in curve.columns:
        ax.step(
            curve.index,
            curve[arm],
            where="post",
            color=colors[arm],
            label=f"{arm} (score {score[arm]:.2f})",
        )
    ax.set_xlabel(f"τ: ratio to the fastest arm's {unit} to target")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlim(1, curve.index.max())


@section(lambda ctx: ctx.benchmark, "benchmark")
def benchmark_sections(ctx: Context) -> list[Section]:
    b = benchmark(ctx)
    fig = plots.new_figure(11, 4.2)
    left, right = fig.subplots(1, 2, sharey=True)
    _profile_panel(left, b.curve_steps, b.scores_steps, "steps")
    _profile_panel(right, b.curve_seconds, b.scores_seconds, "seconds")
    left.set_ylabel("ρ(τ): fraction of workloads")
    left.set_title("optimizer steps")
    right.set_title("wall-clock seconds")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    fig.suptitle("Performance profiles: the fraction of workloads reached within τ × the best")
    scores = b.scores_steps.merge(b.scores_seconds, on="arm", suffixes=("", "_s"))
    text = [
        "| optimizer | score, steps [95% bootstrap] | score, seconds [95% bootstrap] |"
        " targets reached |",
        "|---|---|---|---|",
        *[
            f"| {r['arm']} | {r['score']:.3f} [{r['low']:.3f}, {r['high']:.3f}] |"
            f" {r['score_s']:.3f} [{r['low_s']:.3f}, {r['high_s']:.3f}] |"
            f" {r['reached']}/{r['workloads']} |"
            for r in scores.to_dict("records")
        ],
        "",
        "Score: the area under ρ(τ) for τ from 1 to 4, divided by 3 (1: fastest everywhere)."
        " A workload counts as reached when the median over its confirm seeds is finite"
        " (more than half the seeds reach the target); a miss counts as ∞.",
        "",
        "| workload | target | source |"
        + "".join(f" {a}: median steps |" for a in b.curve_steps.columns),
        "|---|---|---|" + "---|" * len(b.curve_steps.columns),
    ]
    medians = b.times.groupby(["workload", "arm"])["steps"].median()
    for t in b.targets.to_dict("records"):
        cells = [medians.get((t["workload"], a), math.nan) for a in b.curve_steps.columns]
        shown = " | ".join("∞" if not math.isfinite(c) else f"{c:.0f}" for c in cells)
        source = "fixed in its config" if t["fixed"] else "proposed (not fixed yet)"
        text.append(f"| {t['workload']} | {t['target']:.3f} | {source} | {shown} |")
    text += [
        "",
        "Pairs: wins / ties / losses of the first optimizer over the second across"
        " workloads (paired 95% CI of the final val/accuracy over the confirm seeds).",
        "",
        "| optimizer | vs | wins | ties | losses |",
        "|---|---|---|---|---|",
        *[
            f"| {r['a']} | {r['b']} | {r['wins']} | {r['ties']} | {r['losses']} |"
            for r in _each_pair_once(b.counts)
        ],
    ]
    parts = [Section("The answer across workloads", "benchmark_profile.png", fig, text)]
    parts.append(_tunability_section(b))
    parts.append(_sensitivity_by_workload(ctx))
    return parts


def _each_pair_once(counts: pd.DataFrame) -> list[dict]:
    seen, out = set(), []
    for row in counts.to_dict("records"):
        if (row["b"], row["a"]) not in seen:
            seen.add((row["a"], row["b"]))
            out.append(row)
    return out


def _tunability_section(b: Benchmark) -> Section:
    curves, summary, relative = b.tunability
    workloads = list(dict.fromkeys(curves["workload"]))
    fig, axes = _panels(len(workloads) + 1, width=3.2, height=2.6)
    arms = list(dict.fromkeys(curves["arm"]))
    colors = plots.arm_colors(arms)
    for ax, workload in zip(axes, workloads, strict=False):
        for arm in arms:
            rows = curves[(curves["workload"] == workload) & (curves["arm"] == arm)]
            ax.plot(rows["k"], rows["expected_best"], marker=".", color=colors[arm], label=arm)
        ax.set_title(workload, fontsize="small")
    last = axes[-1]
    for arm in arms:
        rows = relative[relative["arm"] == arm]
        last.plot(rows["k"], rows["relative"], marker=".", color=colors[arm], label=arm)
    last.set_title("mean over workloads, / best peak", fontsize="small")
    for ax in axes:
        ax.set_xlabel("k settings drawn")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    fig.suptitle("Tunability: expected best val/accuracy after k random draws of the tuned grid")
    text = [
        "A draw is one setting of the tuning grid picked at random (with replacement); the"
        " expected best of k draws comes from each optimizer's tuning outcomes in closed form."
        " One-shot: k = 1; peak: k = all the settings; early-weighted: weights K − k + 1.",
        "",
        "| workload | optimizer | one-shot | peak | early-weighted |",
        "|---|---|---|---|---|",
        *[
            f"| {r['workload']} | {r['arm']} | {r['one_shot']:.3f} | {r['peak']:.3f} |"
            f" {r['early_weighted']:.3f} |"
            for r in summary.to_dict("records")
        ],
    ]
    return Section("Tunability", "benchmark_tunability.png", fig, text)


def _sensitivity_by_workload(ctx: Context) -> Section:
    from bpexp.protocol import arm_effective_step

    runs = _split_arms(ctx)
    tune = runs[runs["stage"] == "tune"].copy()
    tune["effective_step"] = [arm_effective_step({}, r) for r in tune.to_dict("records")]
    tune["arm"] = tune["optimizer"]
    workloads = list(dict.fromkeys(tune["workload"]))
    fig, axes = _panels(len(workloads), width=3.2, height=2.6)
    for ax, workload in zip(axes, workloads, strict=True):
        plots.lr_sensitivity(
            tune[tune["workload"] == workload], ax, metric=ctx.metric, lr="effective_step"
        )
        ax.get_legend().remove()
        ax.set_title(workload, fontsize="small")
        ax.set_xlabel("effective step")
        ax.set_ylabel("")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    fig.suptitle(f"Final {ctx.metric} of the tuning runs against the effective step searched")
    return Section("Learning-rate sensitivity per workload", "benchmark_sensitivity.png", fig)
