"""Sweep reports: the comparison table and plots as a folder, logged to the sweep's parent run.

    python -m bpexp.report [SWEEP_NAME_OR_PARENT_RUN_ID] [--tracking-uri URI]
                           [--experiment NAME] [--out DIR] [--no-log]
                           [--target-loss L] [--target-accuracy A]

writes ``reports/<sweep>-<parent id prefix>/`` (default: the latest sweep of the experiment):
``index.md`` with the comparison table (:func:`bpexp.analysis.compare`) linking the PNG plots,
``comparison.csv`` and ``runs.csv``, and logs the folder to the parent run under ``report/``.
At the end of a multirun :func:`log_sweep` does the same for the runs in the sweep's summary
and also logs, per epoch, each arm's mean over seeds at its best setting as
``<arm>/<metric>/<sweep>`` metrics of the parent run (``sgd/val/loss/optimizers``), so its
charts in the MLflow UI are not empty.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import mimetypes
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from bpexp import analysis, plots
from bpexp import figures as figures_module
from bpexp import protocol as proto
from bpexp.tracking import BATCH_LIMIT

REPORT_ARTIFACT_PATH = "report"
PARENT_METRICS = ("val/loss", "val/accuracy", "train/loss")  # logged as <arm>/<metric>/<sweep>
PLOT_FILES = {
    "loss_curves.png": "Loss per epoch (train dashed, validation solid)",
    "accuracy_curves.png": "Accuracy per epoch (train dashed, validation solid)",
    "lr_sensitivity.png": "Final loss against the learning rate",
    "grad_norm.png": "Gradient norm per layer",
    "saturation.png": "Saturated fraction per layer",
}


@dataclass
class Report:
    """What :func:`write_report` wrote and computed."""

    index: Path  # index.md
    comparison: pd.DataFrame  # analysis.compare's table
    curves: pd.DataFrame  # history rows of each arm's best-setting runs, with an `arm` column


def parent_metric_key(metric: str, arm: str, sweep: str) -> str:
    """The parent run's name for an arm's mean curve of a run metric, ``<arm>/<metric>/<sweep>``.

    The arm comes first because MLflow's chart tiles show a key's beginning and cut the rest;
    the sweep name last keeps a tile to the parents of one sweep (the ``sgd`` arm of
    ``optimizers`` and of ``batch_size`` are different tiles), and MLflow's chart view groups
    the tiles into sections by the key up to its last "/": one section per arm and metric.
    In the arm and the sweep, "/" and "+" become "-" and every other character MLflow does not
    allow (it allows letters, digits, ``_ - . : /`` and spaces) or a space becomes "_", so
    ``parent_metric_key("val/loss", "momentum/ema+bc", "momentum_beta")`` is
    ``momentum-ema-bc/val/loss/momentum_beta``.
    """

    def clean(name: str) -> str:
        return re.sub(r"[^\w.:-]+", "_", name.replace("/", "-").replace("+", "-"))

    return f"{clean(arm)}/{metric}/{clean(sweep)}"


def _better(metric: str) -> str:
    return "higher" if metric.endswith("accuracy") else "lower"


def _format(value: object, digits: int = 4) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}"
    return str(value)


def _pm(mean: float, half: float) -> str:
    """``mean ± half``; the mean alone when the half-width is unknown (one seed)."""
    if math.isnan(mean):
        return ""
    return _format(mean) if math.isnan(half) else f"{_format(mean)} ± {_format(half, 2)}"


def display_table(
    comparison: pd.DataFrame,
    over: Sequence[str] = (),
    metric: str = "val/loss",
    paired: bool = True,
) -> pd.DataFrame:
    """The comparison as text for reading: the best ``over`` setting per arm, means with their
    95% CI, the epochs to targets, counts, and (``paired``) the paired difference against the
    best arm."""
    split = metric.rsplit("/", 1)[0]
    accuracy = f"{split}/accuracy" if metric.endswith("loss") else f"{split}/loss"
    out = pd.DataFrame({"arm": comparison["arm"]})
    names = comparison.get("optimizer.name", pd.Series("", index=comparison.index))
    for column in over:
        shown = comparison[column].map(_format)
        if column == "optimizer.beta":  # SGD and RMSprop have no beta (RMSprop's is beta2)
            shown = shown.where(~names.isin(["sgd", "rmsprop"]), "")
        out[f"best {column}"] = shown
    out["seeds"] = comparison["seeds"]
    for name in (metric, accuracy):
        if f"{name}_mean" in comparison.columns:
            out[f"final {name} (95% CI)"] = [
                _pm(m, h)
                for m, h in zip(comparison[f"{name}_mean"], comparison[f"{name}_ci95"], strict=True)
            ]
            out[f"{name} std"] = comparison[f"{name}_std"].map(_format)
    for kind in ("loss", "accuracy"):
        if f"epochs_to_target_{kind}" in comparison.columns:
            out[f"epochs to target {kind}"] = [
                f"{_format(e)} ({r}/{s} seeds)"
                for e, r, s in zip(
                    comparison[f"epochs_to_target_{kind}"],
                    comparison[f"target_{kind}_reached"],
                    comparison["seeds"],
                    strict=True,
                )
            ]
    out["runs / diverged / failed"] = [
        f"{r} / {d} / {f}"
        for r, d, f in zip(
            comparison["runs"], comparison["diverged"], comparison["failed"], strict=True
        )
    ]
    if not paired:
        return out
    out[f"Δ {metric} vs best, paired (95% CI)"] = [
        "(best)" if i == 0 else _pm(m, h) + (f" (n={n})" if n else "")
        for i, (m, h, n) in enumerate(
            zip(
                comparison["diff_vs_best_mean"],
                comparison["diff_vs_best_ci95"],
                comparison["paired_seeds"],
                strict=True,
            )
        )
    ]
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (all cells as text)."""
    cells = frame.astype(str).map(lambda c: c.replace("|", "\\|"))
    lines = [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def arm_history(
    history: pd.DataFrame, runs: pd.DataFrame, comparison: pd.DataFrame
) -> pd.DataFrame:
    """The history rows of each arm's best-setting runs, with an ``arm`` column."""
    best = analysis.best_runs(runs, comparison)[["run_id", "arm"]]
    return history.drop(columns="arm", errors="ignore").merge(best, on="run_id", how="inner")


def _sensitivity_runs(runs: pd.DataFrame, by: Sequence[str], over: Sequence[str]) -> pd.DataFrame:
    """The runs with an ``arm`` column naming also every setting column but the lr that varies
    within an arm (one line per arm and beta in a beta sweep)."""
    frame = runs.copy()
    frame["arm"] = analysis.label_arms(frame, by)
    extra = [
        c
        for c in over
        if c != "optimizer.lr" and frame.groupby("arm")[c].nunique(dropna=False).max() > 1
    ]
    for column in extra:
        frame["arm"] += f" {column.removeprefix('optimizer.')}=" + frame[column].map(_format)
    return frame


def write_report(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    out: Path,
    *,
    title: str,
    notes: Sequence[str] = (),
    metric: str | None = None,
    target_loss: float | None = None,
    target_accuracy: float | None = None,
    sweep: str | None = None,
) -> Report:
    """Write ``index.md``, ``comparison.csv``, ``runs.csv`` and the plots (:data:`PLOT_FILES`)
    into ``out``.

    ``runs``: a runs frame (:func:`bpexp.analysis.runs`), ``history``: their history frame
    (columns ``run_id, metric, step, value``). Arms and settings come from what the sweep
    varied (:func:`bpexp.analysis.settings_varied`). ``metric`` ranks the settings (the
    yardstick): by default the first of ``val/accuracy``, ``train/accuracy``, ``val/loss``,
    ``train/loss`` that the runs logged (losses only for regression data).
    """
    if metric is None:
        logged = [
            m
            for m in ("val/accuracy", "train/accuracy", "val/loss", "train/loss")
            if m in runs.columns and runs[m].notna().any()
        ]
        metric = logged[0] if logged else "val/loss"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by, over = analysis.settings_varied(runs)
    comparison = analysis.compare(
        runs,
        history,
        by=by,
        over=over,
        metric=metric,
        target_loss=target_loss,
        target_accuracy=target_accuracy,
    )
    comparison.to_csv(out / "comparison.csv", index=False)
    runs.to_csv(out / "runs.csv", index=False)
    curves = arm_history(history, runs, comparison)
    layers = curves.loc[curves["metric"].str.startswith("saturation/"), ["arm", "metric"]]
    height = max(3.0, 1.5 + 0.35 * len(layers.drop_duplicates()))
    figures = {
        "loss_curves.png": plots.arm_curves(curves, plots.new_axes(8, 5)),
        "accuracy_curves.png": plots.arm_curves(
            curves, plots.new_axes(8, 5), metrics=("train/accuracy", "val/accuracy")
        ),
        "lr_sensitivity.png": plots.lr_sensitivity(
            _sensitivity_runs(runs, by, over), plots.new_axes(8, 5), metric=metric
        ),
    }
    # Per-layer figures only where the runs measured them (trainer.instruments=true).
    measured = set(curves["metric"].str.split("/").str[0])
    if "grad_norm" in measured:
        figures["grad_norm.png"] = plots.arm_grad_norms(curves, plots.new_axes(8, 5))
    if "saturation" in measured:
        figures["saturation.png"] = plots.arm_saturation(curves, plots.new_axes(8, height))
    extra = figures_module.sections(sweep, runs.assign(arm=analysis.label_arms(runs, by)), history)
    figures |= {s.file: s.figure for s in extra if s.figure is not None}
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=90)
    counts = runs["outcome"].value_counts().to_dict()
    lines = [
        f"# {title}",
        "",
        *[f"- {note}" for note in notes],
        f"- runs: {len(runs)} (" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ")",
        f"- arms: {', '.join(by) or '(one)'}; best setting over {', '.join(over) or '(none)'}"
        f" by the mean final {metric} over seeds ({_better(metric)} is better; a diverged run"
        " counts as worst)",
        "- learning-rate convention: `optimizer.lr` as each form defines it; at the same lr,"
        " classical momentum and Nesterov take 1/(1 - beta) times longer steps than SGD,"
        " and EMA(lr, beta) equals classical(lr (1 - beta)) (docs/science.md#update-rules)",
        "",
        "## Comparison",
        "",
        markdown_table(display_table(comparison, over, metric)),
        "",
        "95% CI: Student t with n - 1 degrees of freedom over seeds. Δ vs best: the per-seed"
        f" difference of the final {metric} against the best arm (both at their best setting),"
        " over the seeds both ran (same seed = same initial weights and mini-batches).",
        "Numbers: [comparison.csv](comparison.csv); every run: [runs.csv](runs.csv).",
        "",
        "## Plots",
        "",
    ]
    for name, caption in PLOT_FILES.items():
        if name in figures:
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    lines += _section_lines(extra)
    index = out / "index.md"
    index.write_text("\n".join(lines))
    write_html(index)
    return Report(index, comparison, curves)


# ------------------------------------------------------------------- protocol sweeps


def protocol_settings(client: MlflowClient, parent: str) -> proto.Protocol | None:
    """The protocol a parent run logged (``protocol.*`` params), or None for a plain sweep."""
    params = client.get_run(parent).data.params
    if "protocol.yardstick" not in params:
        return None
    yardstick = params["protocol.yardstick"]
    direction = params.get("protocol.direction")
    if direction in (None, "None", ""):
        direction = "maximize" if yardstick.endswith("accuracy") else "minimize"
    target = params.get("protocol.target")
    keys = tuple(
        k.removeprefix("protocol.search.") for k in params if k.startswith("protocol.search.")
    )
    return proto.Protocol(
        search=(),
        yardstick=yardstick,
        direction=direction,
        target=None if target in (None, "None", "") else float(target),
        keys=tuple(sorted(keys)),
    )


def _with_arms(runs: pd.DataFrame, protocol: proto.Protocol) -> pd.DataFrame:
    """``runs`` with ``arm`` (what the sweep varied, but the search keys and the seed) and
    ``effective_step`` columns."""
    frame = runs.copy()
    by, _ = analysis.settings_varied(frame)
    # Short labels: only what differs between arms, as values ("relu [30, 30]", "nesterov").
    by = [c for c in by if c not in protocol.keys and frame[c].astype(str).nunique() > 1]
    rule = [c for c in by if c.startswith("optimizer.")]
    rest = [c for c in by if c not in rule]
    if rule and "optimizer.name" not in rule and "optimizer.name" in frame.columns:
        # Arms of one rule that differ in form (momentum_beta): the label names the form only
        # after the rule's name ("momentum/ema+bc"); without it every arm read "all".
        rule = ["optimizer.name", *rule]
    head = analysis.label_arms(frame, rule) if rule else pd.Series("", index=frame.index)
    shown = frame[rest].apply(lambda c: c.map(lambda v: "null" if pd.isna(v) else _format(v)))
    if len(rest) == 1 and not rule:  # one key: say which ("batch_size=10", not "10")
        shown = shown.apply(lambda c: rest[0].rsplit(".", 1)[-1] + "=" + c)
    tail = shown.agg(" ".join, axis=1) if rest else ""
    frame["arm"] = (head + " " + tail).str.strip().replace("", "all")
    frame["effective_step"] = [
        proto.arm_effective_step({}, row) if "optimizer.lr" in row else math.nan
        for row in frame.to_dict("records")
    ]
    return frame


def confirmed_frame(
    protocol: proto.Protocol, confirm: pd.DataFrame, history: pd.DataFrame
) -> pd.DataFrame:
    """One row per confirm run for :func:`bpexp.protocol.final_table`: ``arm, seed, outcome,
    value``, epochs and steps to target (from ``history``), the setting, the effective step."""
    rows = []
    for run in confirm.to_dict("records"):
        epochs = math.inf
        if protocol.target is not None:
            points = history[
                (history["run_id"] == run["run_id"]) & (history["metric"] == protocol.yardstick)
            ]
            epochs = proto.time_to_target(
                points["step"], points["value"], protocol.target, protocol.direction
            )
        n_train = run.get("data.n_train", math.nan)
        batch = run.get("trainer.batch_size")
        per_epoch = (
            math.ceil(n_train / (batch if batch and batch == batch else n_train))
            if n_train == n_train
            else math.nan
        )
        rows.append(
            {
                "arm": run["arm"],
                "seed": run["seed"],
                "outcome": run["outcome"],
                "value": run.get(protocol.yardstick, math.nan),
                "epochs_to_target": epochs,
                "steps_to_target": epochs * per_epoch if math.isfinite(epochs) else math.inf,
                **{k: run.get(k) for k in protocol.keys},
                "effective_step": run["effective_step"],
            }
        )
    return pd.DataFrame(rows)


def _median_iqr_text(median: float, q1: float, q3: float) -> str:
    if not math.isfinite(median):
        return "missed (median ∞)"
    return f"{_format(median)} [{_format(q1)}, {_format(q3) if math.isfinite(q3) else '∞'}]"


def protocol_display(protocol: proto.Protocol, table: pd.DataFrame) -> pd.DataFrame:
    """The final table as text: one row per arm, best first."""
    y = protocol.yardstick
    out = pd.DataFrame({"arm": table["arm"]})
    for key in protocol.keys:
        if key in table.columns:
            out[f"chosen {key}"] = table[key].map(_format)
    out["effective step"] = table["effective_step"].map(_format)
    out[f"final {y}, mean ± 95% CI"] = [
        _pm(m, h) + f" (n={n})"
        for m, h, n in zip(table["mean"], table["ci95"], table["seeds"], strict=True)
    ]
    out["Δ vs best, paired (95% CI)"] = [
        "(best)" if i == 0 else _pm(m, h)
        for i, (m, h) in enumerate(
            zip(table["diff_vs_best_mean"], table["diff_vs_best_ci95"], strict=True)
        )
    ]
    if protocol.target is not None:
        for unit in ("epochs", "steps"):
            out[
                f"{unit} to {y} ≥ {protocol.target:g}: median [IQR]"
                if protocol.direction == "maximize"
                else f"{unit} to {y} ≤ {protocol.target:g}: median [IQR]"
            ] = [
                _median_iqr_text(m, a, b)
                for m, a, b in zip(
                    table[f"{unit}_to_target_median"],
                    table[f"{unit}_to_target_q1"],
                    table[f"{unit}_to_target_q3"],
                    strict=True,
                )
            ]
        out["reached"] = [
            f"{r}/{n}"
            for r, n in zip(
                table["reached"], table["seeds"] + table["diverged"] + table["failed"], strict=True
            )
        ]
    out["diverged"] = table["diverged"]
    return out


MAX_LINES = 6  # lines a panel holds and stays readable; more arms get small multiples


def _panels(n: int, width: float = 3.6, height: float = 3.0) -> tuple[plots.Figure, list]:
    """A figure of ``n`` small panels, four a row, sharing both axes."""
    columns = min(n, 4)
    rows = math.ceil(n / columns)
    fig = plots.new_figure(width * columns + 1.5, height * rows + 0.6)
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _sensitivity_figure(tune: pd.DataFrame, protocol: proto.Protocol) -> plots.Figure:
    """Final yardstick against the learning rate and against the effective step; with more
    arms than a panel holds, one small panel per arm against the lr."""
    arms = list(dict.fromkeys(tune["arm"]))
    if len(arms) > MAX_LINES:
        fig, axes = _panels(len(arms))
        for ax, arm in zip(axes, arms, strict=True):
            plots.lr_sensitivity(tune[tune["arm"] == arm], ax, metric=protocol.yardstick)
            ax.get_legend().remove()
            ax.set_title(arm, fontsize="small")
            ax.set_xlabel("optimizer.lr")
        fig.suptitle(f"Tuning runs: final {protocol.yardstick} against the lr, one panel per arm")
        return fig
    fig = plots.new_figure(11, 4.2)
    left, right = fig.subplots(1, 2, sharey=True)
    for ax, x in ((left, "optimizer.lr"), (right, "effective_step")):
        plots.lr_sensitivity(tune, ax, metric=protocol.yardstick, lr=x)
        ax.get_legend().remove()
    fig.suptitle(f"Tuning runs: final {protocol.yardstick} (dots: seeds, line: their mean)")
    left.set_title("against optimizer.lr")
    right.set_title("against the effective step η/(1−β) (η for SGD, EMA)")
    right.set_ylabel("")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small")
    return fig


def _curves_figure(
    curves: pd.DataFrame, metrics: tuple[str, ...], title: str, target: float | None = None
) -> plots.Figure:
    """Per arm, ``metrics`` over epochs (mean ± 1 std over the confirm seeds): one panel for
    up to :data:`MAX_LINES` lines, else one small panel per arm."""
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


def write_protocol_report(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    out: Path,
    protocol: proto.Protocol,
    *,
    title: str,
    notes: Sequence[str] = (),
    sweep: str | None = None,
) -> Report:
    """The report of a tune-then-confirm sweep: the final table over the confirm runs and the
    figures that answer it (sensitivity over the tuning runs, curves of the confirm runs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = _with_arms(runs, protocol)
    tune = frame[frame["stage"] == "tune"]
    confirm = frame[frame["stage"] == "confirm"]
    table = proto.final_table(protocol, confirmed_frame(protocol, confirm, history))
    table.to_csv(out / "final_table.csv", index=False)
    frame.to_csv(out / "runs.csv", index=False)
    curves = history.drop(columns="arm", errors="ignore").merge(
        confirm[["run_id", "arm"]], on="run_id"
    )
    figures = {
        "lr_sensitivity.png": _sensitivity_figure(tune, protocol),
        "confirm_curves.png": _curves_figure(
            curves,
            (protocol.yardstick,),
            f"Confirm runs: {protocol.yardstick}, mean over seeds ± 1 std",
            protocol.target,
        ),
        "loss_curves.png": _curves_figure(
            curves,
            ("train/loss", "val/loss"),
            "Confirm runs: train (dashed) and validation (solid) loss",
        ),
    }
    extra = figures_module.sections(sweep, frame, history)
    figures |= {s.file: s.figure for s in extra if s.figure is not None}
    for name, figure in figures.items():
        figure.savefig(out / name, dpi=90)
    n_arms = table["arm"].nunique() if len(table) else 0
    per_arm = tune.groupby("arm").size()
    winner = ""
    if len(table) > 1:
        best, second = table.iloc[0], table.iloc[1]
        d, h = -second["diff_vs_best_mean"], second["diff_vs_best_ci95"]
        sure = (
            "the 95% CI of the paired difference excludes 0"
            if h == h and d - h > 0
            else "the 95% CI of the paired difference includes 0: not a clear winner"
        )
        winner = (
            f"**Answer:** {best['arm']} ranks first by final {protocol.yardstick} "
            f"({_pm(best['mean'], best['ci95'])}, n={best['seeds']}), ahead of {second['arm']} "
            f"by {_format(d)} ± {_format(h, 2)} (paired over {second['paired_seeds']} confirm "
            f"seeds); {sure}."
        )
    lines = [
        f"# {title}",
        "",
        *[f"- {note}" for note in notes],
        f"- protocol (docs/protocol.md): {n_arms} arms; tune: "
        + ", ".join(f"{a} {n} runs" for a, n in per_arm.items())
        + f" (the same budget each), on tuning seeds {sorted(tune['seed'].unique().tolist())};"
        f" confirm: each arm's best setting on seeds {sorted(confirm['seed'].unique().tolist())}",
        f"- ranked by final {protocol.yardstick} ({protocol.direction}); a setting's score is its"
        " mean over the tuning seeds, a diverged run counting as worst",
        "- effective step: η/(1−β) for classical momentum and Nesterov, η otherwise"
        " (docs/science.md)",
        "",
        winner,
        "",
        "## Final table (confirm runs)",
        "",
        markdown_table(protocol_display(protocol, table)) if len(table) else "(no confirm runs)",
        "",
        "95% CI: Student t with n − 1 degrees of freedom over the confirm seeds. Δ vs best:"
        " per-seed difference against the first arm, over the seeds both completed (same seed"
        " = same initial weights and mini-batches). Time to target: a seed that never reached"
        " it counts as ∞.",
        "Numbers: [final_table.csv](final_table.csv); every run: [runs.csv](runs.csv).",
        "",
        "## Figures",
        "",
        "### Learning-rate sensitivity (tuning runs)",
        "",
        "![Learning-rate sensitivity](lr_sensitivity.png)",
        "",
        f"### {protocol.yardstick} per epoch (confirm runs)",
        "",
        f"![{protocol.yardstick} per epoch](confirm_curves.png)",
        "",
        "### Loss per epoch (confirm runs)",
        "",
        "![Loss per epoch](loss_curves.png)",
        "",
        *_section_lines(extra),
    ]
    index = out / "index.md"
    index.write_text("\n".join(lines))
    write_html(index)
    return Report(index, table, curves)


def _section_lines(sections: Sequence[figures_module.Section]) -> list[str]:
    lines = []
    for section in sections:
        lines += [f"### {section.title}", ""]
        if section.file:
            lines += [f"![{section.title}]({section.file})", ""]
        lines += [*section.text, ""]
    return lines


_INLINE = re.compile(r"`([^`]+)`|\[([^\]]+)\]\(([^)\s]+)\)|\*\*([^*]+)\*\*")


def _inline_html(text: str) -> str:
    """Code spans, bold and links of one line of the report's Markdown, the rest escaped. A link to
    a file of the report folder becomes its name: the page is shown from a blob URL in the
    MLflow UI, where relative links lead nowhere (the files are beside it in the artifact tree).
    """
    parts, last = [], 0
    for match in _INLINE.finditer(text):
        parts.append(html.escape(text[last : match.start()]))
        code, label, href, strong = match.groups()
        if code is not None:
            parts.append(f"<code>{html.escape(code)}</code>")
        elif strong is not None:
            parts.append(f"<strong>{html.escape(strong)}</strong>")
        elif "://" in href:
            parts.append(f'<a href="{html.escape(href)}">{html.escape(label)}</a>')
        else:
            parts.append(f"<code>{html.escape(href)}</code>")
        last = match.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def _table_html(rows: list[str]) -> str:
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows]
    head, body = cells[0], cells[2:]  # cells[1] is the |---| line
    lines = ["<table>", "<tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in head) + "</tr>"]
    lines += [
        "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in body
    ]
    return "\n".join([*lines, "</table>"])


_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_STYLE = (
    "body{font-family:sans-serif;margin:1em 2em;color:#222}"
    "table{border-collapse:collapse;font-size:90%}"
    "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "img{max-width:100%}code{background:#f3f3f3}"
)


def write_html(index: Path) -> Path:
    """Write ``index.html`` beside the report's ``index.md``: the same page with each figure
    embedded as a ``data:`` URI, so it is whole in one file.

    MLflow's artifact viewer shows Markdown with its images as bare links (it does not
    resolve relative paths) but renders an HTML artifact, images included. The Markdown is
    the one :func:`write_report` and :func:`write_protocol_report` write: headings, ``-``
    lists, pipe tables, one image a line and paragraphs, with inline code, bold and links.
    """
    out: list[str] = []
    lines = index.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(lines[i])
                i += 1
            out.append(_table_html(rows))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline_html(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        image = _IMAGE.match(line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline_html(heading.group(2))}</h{level}>")
        elif image:
            alt, name = image.groups()
            kind = mimetypes.guess_type(name)[0] or "image/png"
            data = base64.b64encode((index.parent / name).read_bytes()).decode("ascii")
            out.append(f'<p><img alt="{html.escape(alt)}" src="data:{kind};base64,{data}"></p>')
        elif line.strip():
            out.append(f"<p>{_inline_html(line)}</p>")
        i += 1
    title = next((line[2:] for line in lines if line.startswith("# ")), "report")
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
    path = index.with_suffix(".html")
    path.write_text(page)
    return path


def parent_metrics(curves: pd.DataFrame, sweep: str, timestamp: int | None = None) -> list[Metric]:
    """Per arm and epoch, the mean over seeds of ``val/loss``, ``val/accuracy`` and
    ``train/loss`` at the arm's best setting, as ``<arm>/val/loss/<sweep>`` etc.

    ``curves``: history rows with an ``arm`` column (:func:`arm_history`). Non-finite means
    (a diverged seed) are left out.
    """
    timestamp = timestamp or int(time.time() * 1000)
    rows = curves[curves["metric"].isin(PARENT_METRICS)]
    means = rows.groupby(["arm", "metric", "step"])["value"].mean().reset_index()
    return [
        Metric(parent_metric_key(m, arm, sweep), float(v), timestamp, int(step))
        for arm, m, step, v in means.itertuples(index=False)
        if np.isfinite(v)
    ]


def _log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT], synchronous=True)


def _parent_notes(client: MlflowClient, parent_id: str) -> tuple[str, list[str]]:
    parent = client.get_run(parent_id)
    name = parent.data.tags.get("sweep", "sweep")
    started = pd.to_datetime(parent.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M:%S")
    notes = [
        f"parent run `{parent_id}` ({parent.info.run_name}), started {started} UTC",
        f"store: `{client.tracking_uri}`",
    ]
    if "bpexp.sweep_dir" in parent.data.tags:
        notes.append(f"sweep folder: `{parent.data.tags['bpexp.sweep_dir']}`")
    return name, notes


def log_sweep(
    client: MlflowClient, parent: str, sweep_dir: Path, table: pd.DataFrame
) -> Path | None:
    """The end-of-multirun report: written to ``<sweep_dir>/report/``, logged to the parent run
    under ``report/``, plus the parent's ``<arm>/<metric>/<sweep>`` metrics.

    ``table``: the sweep summary (columns ``job, outcome, run_id, ...``). Its runs, the jobs
    skipped because an identical completed run existed included, are read from the store (their
    ``history.parquet`` artifacts); jobs without a run id (untracked, invalid config) are left
    out. Returns the path of ``index.md``, or None when no job has a tracked run.
    """
    ids = table["run_id"].dropna().astype(str).str.strip()
    run_ids = list(ids[ids != ""].unique())
    if not run_ids:
        return None
    runs = analysis.runs_by_id(client, run_ids)
    history = analysis.history(runs, params=(), client=client)
    name, notes = _parent_notes(client, parent)
    out = Path(sweep_dir) / "report"
    protocol = protocol_settings(client, parent)
    if protocol is not None and (runs["stage"] == "confirm").any():
        report = write_protocol_report(
            runs, history, out, protocol, title=f"Sweep `{name}`", notes=notes, sweep=name
        )
    else:
        report = write_report(runs, history, out, title=f"Sweep `{name}`", notes=notes, sweep=name)
    client.log_artifacts(parent, str(out), REPORT_ARTIFACT_PATH)
    _log_metrics(client, parent, parent_metrics(report.curves, name))
    print(f"report: {report.index}", flush=True)
    return report.index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bpexp.report",
        description="Write a sweep's comparison table and plots, and log them to its parent run.",
    )
    parser.add_argument(
        "sweep", nargs="?", help="sweep name (its latest run) or parent run id; default: latest"
    )
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or mlflow.db here")
    parser.add_argument("--experiment", default="bpexp")
    parser.add_argument("--out", help="report folder; default reports/<sweep>-<parent id[:8]>/")
    parser.add_argument("--target-loss", type=float, help="report epochs to reach this loss")
    parser.add_argument(
        "--target-accuracy", type=float, help="report epochs to reach this accuracy"
    )
    parser.add_argument("--no-log", action="store_true", help="do not log to the parent run")
    args = parser.parse_args(argv)
    try:
        client = analysis.client_for(args.tracking_uri)
        experiment_id = analysis.find_experiment(client, args.experiment)
        parent = analysis.sweep_parent(client, experiment_id, args.sweep).info.run_id
        runs = analysis.runs(args.experiment, sweep=parent, client=client)
    except (ValueError, MlflowException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if runs.empty:
        print(f"error: sweep parent run {parent} has no runs", file=sys.stderr)
        return 2
    history = analysis.history(runs, client=client)
    name, notes = _parent_notes(client, parent)
    out = Path(args.out or f"reports/{name}-{parent[:8]}").resolve()
    protocol = protocol_settings(client, parent)
    if protocol is not None and (runs["stage"] == "confirm").any():
        report = write_protocol_report(
            runs, history, out, protocol, title=f"Sweep `{name}`", notes=notes, sweep=name
        )
    else:
        report = write_report(
            runs,
            history,
            out,
            title=f"Sweep `{name}`",
            notes=notes,
            target_loss=args.target_loss,
            target_accuracy=args.target_accuracy,
            sweep=name,
        )
    if not args.no_log:
        client.log_artifacts(parent, str(out), REPORT_ARTIFACT_PATH)
        # The end of the multirun logged them already, unless it predates the report code.
        metrics = parent_metrics(report.curves, name)
        if not {m.key for m in metrics} & set(client.get_run(parent).data.metrics):
            _log_metrics(client, parent, metrics)
        print(f"logged to parent run {parent} under {REPORT_ARTIFACT_PATH}/")
    print(report.index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
