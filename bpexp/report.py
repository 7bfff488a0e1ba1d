"""Sweep reports: one pipeline for every sweep, logged to its parent run.

    python -m bpexp.report [SWEEP_NAME_OR_PARENT_RUN_ID] [--tracking-uri URI]
                           [--experiment NAME] [--out DIR] [--log | --no-log]
                           [--target-loss L] [--target-accuracy A]

The report reads what the sweeper wrote, never guesses it: the arm and stage of every job
(``summary.csv``, :mod:`bpexp.jobs`) and, for a tune-then-confirm sweep, its protocol and its
answer (``protocol/protocol.json``, ``protocol/final_table.csv``). A plain grid's answer is
:func:`bpexp.analysis.compare` over the sweeper's arms. Every figure is a registered section
of :mod:`bpexp.figures`; :func:`write` draws those that apply and renders the page once into
``index.md`` and ``index.html`` (Jinja2 templates; figures embedded, so the page is whole in
MLflow's artifact view). Only files the report itself wrote are embedded.

At the end of a multirun :func:`log_sweep` writes ``<sweep folder>/report/``, logs it to the
parent run under ``report/``, and logs each arm's mean curves over its answering runs as
``<arm>/<metric>/<sweep>`` metrics of the parent (``sgd/val/loss/optimizers``), so its charts
in the MLflow UI are not empty. ``python -m bpexp.report`` writes ``reports/<sweep>-<parent id
prefix>/`` and logs it to the parent; with ``--out DIR`` it writes only to DIR unless ``--log``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment
from markupsafe import Markup, escape
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from bpexp import analysis, figures, jobs
from bpexp import protocol as proto
from bpexp.errors import TrackingError
from bpexp.tracking import BATCH_LIMIT

REPORT_ARTIFACT_PATH = "report"
PARENT_METRICS = ("val/loss", "val/accuracy", "train/loss")  # logged as <arm>/<metric>/<sweep>
SAFE_FILE = re.compile(r"[\w.-]+\.png")


@dataclass
class Report:
    """What :func:`write` wrote: ``index.md``, the answer table, the answering runs' curves."""

    index: Path
    table: pd.DataFrame
    curves: pd.DataFrame
    files: list[str]  # the figures, in the page's order


def parent_metric_key(metric: str, arm: str, sweep: str) -> str:
    """The parent run's name for an arm's mean curve of a run metric, ``<arm>/<metric>/<sweep>``.

    The arm comes first because MLflow's chart tiles show a key's beginning and cut the rest;
    the sweep name last keeps a tile to the parents of one sweep (the ``sgd`` arm of
    ``optimizers`` and of ``batch_size`` are different tiles), and MLflow's chart view groups
    the tiles into sections by the key up to its last "/": one section per arm and metric.
    Arm and sweep are written with :func:`bpexp.jobs.mlflow_name`, as in the ``chosen.<arm>.*``
    params: ``parent_metric_key("val/loss", "beta=0.5 batch_size=10", "my sweep")`` is
    ``beta:0.5_batch_size:10/val/loss/my_sweep``.
    """
    return f"{jobs.mlflow_name(arm)}/{metric}/{jobs.mlflow_name(sweep)}"


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
    cells = frame.astype(str).map(lambda c: _md_inert(c).replace("|", "\\|"))
    lines = [
        "| " + " | ".join(_md_inert(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def _median_iqr_text(median: float, q1: float, q3: float) -> str:
    if not math.isfinite(median):
        return "missed (median ∞)"
    return f"{_format(median)} [{_format(q1)}, {_format(q3) if math.isfinite(q3) else '∞'}]"


def protocol_display(protocol: proto.Protocol, table: pd.DataFrame) -> pd.DataFrame:
    """The final table as text: one row per arm, best first."""
    y = protocol.yardstick
    out = pd.DataFrame({"arm": table["arm"]})
    lr = ["optimizer.lr"] if proto.EFFECTIVE_STEP in protocol.keys else []
    for key in [*protocol.keys, *lr]:
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


# ------------------------------------------------------------------------ what was swept


@dataclass
class Sweep:
    """A sweep as its sweeper recorded it, with its runs read from the store."""

    name: str
    parent: str
    notes: list[str]
    runs: pd.DataFrame  # with the sweeper's `arm` and `stage`
    history: pd.DataFrame
    protocol: proto.Protocol | None
    final_table: pd.DataFrame | None  # the protocol's answer, as the sweeper wrote it
    plan: dict = field(default_factory=dict)  # protocol.json: the arms, their workloads


def safe_name(text: str) -> str:
    """``text`` as a file name: letters, digits, ``_ . -`` only (a tag is anyone's to set)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("._")[:80] or "sweep"


def shown(text: object) -> str:
    """A value read from the store (a tag, a run name) as inert text for the page: one line,
    and none of the characters that make Markdown a link, an image, code or HTML (a tag is
    anyone's to set: ``![a](../../etc/hostname)`` must stay text)."""
    return re.sub(r"[^\w .:=+,/@-]", "_", str(text))[:200]


def _md_inert(text: object) -> str:
    """A line of the report (an arm, a cell, a note) as Markdown that cannot become a link,
    an image or HTML: ``](`` and ``<`` are escaped; code spans and bold are kept."""
    return str(text).replace("](", "]\\(").replace("<", "\\<").replace("\n", " ")


def load(client: MlflowClient, parent: str, folder: Path | None = None) -> Sweep:
    """The sweep of parent run ``parent``: what the sweeper wrote (``summary.csv`` and
    ``protocol/``), from the sweep ``folder`` or else from the parent's artifacts, and its
    runs with their history from the store."""
    with tempfile.TemporaryDirectory() as tmp:
        if folder is None:
            folder = Path(tmp)
            for name in ("summary.csv", "protocol"):
                try:
                    client.download_artifacts(parent, name, tmp)
                except (MlflowException, OSError):
                    pass
        if (folder / "summary.csv").exists():
            summary = pd.read_csv(folder / "summary.csv", dtype={"arm": str, "stage": str})
        else:  # a sweep killed before its end: its children, with the arms they were tagged
            summary = _children(client, parent)
        plan_file = folder / "protocol" / "protocol.json"
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
        protocol = proto.Protocol.from_dict(plan["protocol"]) if plan else None
        table_file = folder / "protocol" / "final_table.csv"
        final = pd.read_csv(table_file, dtype={"arm": str}) if table_file.exists() else None
    summary = summary[summary["run_id"].notna() & (summary["run_id"] != "")]
    summary = summary.drop_duplicates("run_id")
    if summary.empty:  # untracked or invalid jobs only: nothing to read
        return Sweep("", parent, [], pd.DataFrame(), pd.DataFrame(), protocol, final, plan)
    runs = analysis.runs_by_id(client, list(summary["run_id"].astype(str)))
    decided = summary.set_index("run_id")[["arm", "stage"]].fillna("")
    runs["arm"] = runs["run_id"].map(decided["arm"]).fillna("all").replace("", "all")
    runs["stage"] = runs["run_id"].map(decided["stage"]).replace("", None)
    history = analysis.history(runs, params=(), client=client) if len(runs) else runs
    from bpexp.tracking import redact

    run = client.get_run(parent)
    name = shown(run.data.tags.get("sweep", "sweep"))
    started = pd.to_datetime(run.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M:%S")
    notes = [
        f"parent run `{shown(parent)}` ({shown(run.info.run_name)}), started {started} UTC",
        f"store: `{shown(redact(client.tracking_uri))}`",
    ]
    if "bpexp.sweep_dir" in run.data.tags:
        notes.append(f"sweep folder: `{shown(run.data.tags['bpexp.sweep_dir'])}`")
    return Sweep(name, parent, notes, runs, history, protocol, final, plan)


def _children(client: MlflowClient, parent: str) -> pd.DataFrame:
    """The parent's child runs as summary rows (``run_id, arm, stage``) from their tags."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    experiment_id = client.get_run(parent).info.experiment_id
    found = client.search_runs(
        [experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'", max_results=10000
    )
    rows = [
        {
            "run_id": run.info.run_id,
            "arm": run.data.tags.get("bpexp.arm", ""),
            "stage": run.data.tags.get("bpexp.stage", ""),
        }
        for run in found
    ]
    return pd.DataFrame(rows, columns=["run_id", "arm", "stage"])


def _yardstick(runs: pd.DataFrame) -> str:
    """A plain grid's ranking metric: the first of the usual ones the runs logged."""
    for metric in ("val/accuracy", "train/accuracy", "val/loss", "train/loss"):
        if metric in runs.columns and runs[metric].notna().any():
            return metric
    return "val/loss"


def answer(
    sweep: Sweep, target_loss: float | None = None, target_accuracy: float | None = None
) -> tuple[figures.Context, pd.DataFrame, pd.DataFrame, list[str]]:
    """The report's context, the answer table (as computed), the table as shown, and the
    lines that say what was compared and how. ``target_loss``/``target_accuracy``: a plain
    grid's epochs to reach them (a protocol has its own ``target``)."""
    runs, history, protocol = sweep.runs, sweep.history, sweep.protocol
    if protocol is not None and sweep.final_table is not None and len(sweep.final_table):
        table = sweep.final_table
        confirm = runs[runs["stage"] == "confirm"]
        tune = runs[runs["stage"] == "tune"]
        per_arm = tune.groupby("arm", sort=False).size()
        lines = [
            f"protocol (docs/protocol.md): {len(table)} arms; tune: "
            + ", ".join(f"{a} {n} runs" for a, n in per_arm.items())
            + f" (the same budget each), on tuning seeds {list(protocol.tune_seeds)};"
            f" confirm: each arm's best setting on seeds {list(protocol.confirm_seeds)}",
            f"ranked by final {protocol.yardstick} ({protocol.direction}); a setting's score is"
            " its mean over the tuning seeds, a diverged run counting as worst",
            "searched axis: " + ", ".join(f"`{s.key}` ({s.describe()})" for s in protocol.search),
            "effective step: η/(1−β) for classical momentum and Nesterov, η otherwise"
            " (docs/science.md)",
        ]
        ctx = figures.Context(
            sweep.name,
            runs,
            history,
            protocol.yardstick,
            list(confirm["run_id"]),
            list(table["arm"]),
            protocol,
            sweep.plan,
        )
        return ctx, table, protocol_display(protocol, table), lines
    metric = _yardstick(runs)
    over = [c for c in analysis.SETTING_COLUMNS if c in runs.columns]
    table = analysis.compare(
        runs,
        history,
        by=["arm"],
        over=over,
        metric=metric,
        target_loss=target_loss,
        target_accuracy=target_accuracy,
    )
    lines = [
        f"arms: {', '.join(table['arm'])}; best setting over {', '.join(over) or '(none)'}"
        f" by the mean final {metric} over seeds ({_better(metric)} is better; a diverged run"
        " counts as worst)",
        "learning-rate convention: `optimizer.lr` as each form defines it; at the same lr,"
        " classical momentum and Nesterov take 1/(1 - beta) times longer steps than SGD,"
        " and EMA(lr, beta) equals classical(lr (1 - beta)) (docs/science.md#update-rules)",
    ]
    answering = [r for ids in table["run_ids"] for r in ids]
    ctx = figures.Context(sweep.name, runs, history, metric, answering, list(table["arm"]))
    return ctx, table, display_table(table, over, metric), lines


def _verdict(table: pd.DataFrame, protocol: proto.Protocol | None) -> str:
    if protocol is None or len(table) < 2:
        return ""
    best, second = table.iloc[0], table.iloc[1]
    d, h = -second["diff_vs_best_mean"], second["diff_vs_best_ci95"]
    sure = (
        "the 95% CI of the paired difference excludes 0"
        if h == h and d - h > 0
        else "the 95% CI of the paired difference includes 0: not a clear winner"
    )
    return (
        f"**Answer:** {best['arm']} ranks first by final {protocol.yardstick} "
        f"({_pm(best['mean'], best['ci95'])}, n={best['seeds']}), ahead of {second['arm']} "
        f"by {_format(d)} ± {_format(h, 2)} (paired over {second['paired_seeds']} confirm "
        f"seeds); {sure}."
    )


# ------------------------------------------------------------------------------ rendering

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _inline(text: str) -> Markup:
    """Code spans and bold of one line of the report's Markdown as HTML, the rest escaped."""
    parts, last = [], 0
    for match in _INLINE.finditer(str(text)):
        parts.append(escape(text[last : match.start()]))
        code, strong = match.groups()
        parts.append(
            Markup("<code>{}</code>").format(code)
            if code is not None
            else Markup("<strong>{}</strong>").format(strong)
        )
        last = match.end()
    parts.append(escape(text[last:]))
    return Markup("").join(parts)


MARKDOWN = """# {{ title }}

{% for note in notes %}- {{ note }}
{% endfor %}
{{ verdict }}
{% macro table() %}
## {{ table_title }}

{{ table_md }}

{% for line in table_notes %}{{ line }}
{% endfor %}{% endmacro %}{% if not table_last %}{{ table() }}{% endif %}
## Figures
{% for part in parts %}
### {{ part.title }}
{% if part.file in files %}
![{{ part.title }}]({{ part.file }})
{% endif %}{% for line in part.text %}
{{ line }}{% endfor %}
{% endfor %}{% if table_last %}{{ table() }}{% endif %}"""

HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ title }}</title><style>
body{font-family:sans-serif;margin:1em 2em;color:#222}
table{border-collapse:collapse;font-size:90%}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}
img{max-width:100%}code{background:#f3f3f3}
</style></head><body>
<h1>{{ title }}</h1>
<ul>{% for note in notes %}<li>{{ note | inline }}</li>{% endfor %}</ul>
{% if verdict %}<p>{{ verdict | inline }}</p>{% endif %}
{% macro table() %}<h2>{{ table_title }}</h2>
{{ table_html }}
{% for line in table_notes %}<p>{{ line | inline }}</p>{% endfor %}{% endmacro %}
{% if not table_last %}{{ table() }}{% endif %}
<h2>Figures</h2>
{% for part in parts %}<h3>{{ part.title }}</h3>
{% if part.file in images -%}
<p><img alt="{{ part.title }}" src="data:image/png;base64,{{ images[part.file] }}"></p>
{%- endif %}
{% for block in part.blocks %}
{%- if block.head %}{{ block | table }}{% else %}<p>{{ block.text | inline }}</p>{% endif %}
{% endfor %}{% endfor %}
{% if table_last %}{{ table() }}{% endif %}
</body></html>
"""

TABLE = """<table><tr>{% for c in head %}<th>{{ c | inline }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for c in row %}<td>{{ c | inline }}</td>{% endfor %}</tr>
{% endfor %}</table>"""


def _blocks(lines: Sequence[str]) -> list[dict]:
    """A section's Markdown lines as paragraphs (``text``) and pipe tables (``head, rows``)."""
    blocks: list[dict] = []
    for line in lines:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if blocks and "head" in blocks[-1]:
                if not set("".join(cells)) <= set("-: "):
                    blocks[-1]["rows"].append(cells)
            else:
                blocks.append({"head": cells, "rows": []})
        elif line.strip():
            blocks.append({"text": line})
    return blocks


_environment = Environment(autoescape=False, keep_trailing_newline=True)
_html_environment = Environment(autoescape=True, keep_trailing_newline=True)
_html_environment.filters["inline"] = _inline
_html_environment.filters["table"] = lambda block: Markup(
    _html_environment.from_string(TABLE).render(**block)
)


def _embedded(out: Path, files: Sequence[str]) -> dict[str, str]:
    """Each figure the report wrote, base64; a name that is not a plain PNG file name inside
    ``out`` is refused (only the report's own files are ever read)."""
    images = {}
    for name in files:
        path = (out / name).resolve()
        if not SAFE_FILE.fullmatch(name) or path.parent != out.resolve():
            raise ValueError(f"{name!r}: not a figure of this report")
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    return images


def write(
    sweep: Sweep,
    out: Path,
    title: str | None = None,
    target_loss: float | None = None,
    target_accuracy: float | None = None,
) -> Report:
    """Write the report of ``sweep`` into ``out``: ``index.md``, ``index.html``, the figures
    of every section that applies, ``final_table.csv`` (the protocol's, as the sweeper wrote
    it) or ``comparison.csv`` (a grid's), and ``runs.csv``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx, table, shown_table, lines = answer(sweep, target_loss, target_accuracy)
    table.to_csv(out / ("final_table.csv" if ctx.protocol else "comparison.csv"), index=False)
    sweep.runs.to_csv(out / "runs.csv", index=False)
    counts = sweep.runs["outcome"].value_counts().to_dict()
    notes = [
        *sweep.notes,
        f"runs: {len(sweep.runs)} ("
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + ")",
        *lines,
    ]
    parts: list[figures.Section] = []
    for registered in figures.SECTIONS:
        if registered.applies(ctx):
            parts += registered.draw(ctx)
    files = []
    for part in parts:
        if part.figure is not None and part.file:
            part.figure.savefig(out / part.file, dpi=90)
            files.append(part.file)
    if ctx.protocol is not None:
        table_title = "Final table (confirm runs)"
        table_notes = [
            "95% CI: Student t with n − 1 degrees of freedom over the confirm seeds. Δ vs best:"
            " per-seed difference against the first arm, over the seeds both completed (same"
            " seed = same initial weights and mini-batches). Time to target: a seed that never"
            " reached it counts as ∞.",
            "Numbers: `final_table.csv` (the sweeper's); every run: `runs.csv`.",
        ]
    else:
        table_title = "Comparison"
        table_notes = [
            "95% CI: Student t with n - 1 degrees of freedom over seeds. Δ vs best: the per-seed"
            f" difference of the final {ctx.metric} against the best arm (both at their best"
            " setting), over the seeds both ran (same seed = same initial weights and"
            " mini-batches).",
            "Numbers: `comparison.csv`; every run: `runs.csv`.",
        ]
    verdict = _verdict(table, ctx.protocol)
    if ctx.benchmark:  # the answer across workloads first; the per-arm table last
        verdict = f"**Answer:** {figures.benchmark(ctx).sentence}"
        table_title = "Final table (each workload × optimizer, confirm runs)"
    page = {
        "title": title or f"Sweep {sweep.name}",
        "notes": notes,
        "verdict": verdict,
        "table_last": ctx.benchmark,
        "table_title": table_title,
        "table_notes": table_notes,
        "parts": parts,
    }
    index = out / "index.md"
    md_page = page | {
        "title": _md_inert(page["title"]),
        "notes": [_md_inert(n) for n in notes],
        "verdict": _md_inert(page["verdict"]),
        "parts": [
            {"title": _md_inert(p.title), "file": p.file, "text": [_md_inert(t) for t in p.text]}
            for p in parts
        ],
    }
    index.write_text(
        _environment.from_string(MARKDOWN).render(
            **md_page, table_md=markdown_table(shown_table), files=files
        )
    )
    table_html = _html_environment.filters["table"](
        {"head": list(shown_table.columns), "rows": shown_table.astype(str).to_numpy().tolist()}
    )
    html_parts = [{"title": p.title, "file": p.file, "blocks": _blocks(p.text)} for p in parts]
    (out / "index.html").write_text(
        _html_environment.from_string(HTML).render(
            **page | {"parts": html_parts},
            table_html=table_html,
            images=_embedded(out, files),
        )
    )
    return Report(index, table, ctx.curves, files)


# ----------------------------------------------------------------------- the parent run


def parent_metrics(curves: pd.DataFrame, sweep: str, timestamp: int | None = None) -> list[Metric]:
    """Per arm and epoch, the mean over its answering runs of ``val/loss``, ``val/accuracy``
    and ``train/loss``, as ``<arm>/val/loss/<sweep>`` etc. (:func:`parent_metric_key`).

    ``curves``: history rows with an ``arm`` column. Non-finite means (a diverged seed) are
    left out.
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


def log_sweep(client: MlflowClient, parent: str, sweep_dir: Path) -> Path | None:
    """The end-of-multirun report: written to ``<sweep_dir>/report/``, logged to the parent run
    under ``report/``, plus the parent's ``<arm>/<metric>/<sweep>`` metrics. Returns the path
    of ``index.md``, or None when no job has a tracked run."""
    sweep = load(client, parent, Path(sweep_dir))
    if sweep.runs.empty:
        return None
    out = Path(sweep_dir) / "report"
    report = write(sweep, out)
    client.log_artifacts(parent, str(out), REPORT_ARTIFACT_PATH)
    _log_metrics(client, parent, parent_metrics(report.curves, sweep.name))
    print(f"report: {report.index}", flush=True)
    return report.index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bpexp.report",
        description="Write a sweep's report (its answer and figures); log it to its parent run.",
    )
    parser.add_argument(
        "sweep", nargs="?", help="sweep name (its latest run) or parent run id; default: latest"
    )
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or mlflow.db here")
    parser.add_argument("--experiment", default="bpexp")
    parser.add_argument(
        "--out",
        help="report folder (then nothing is logged unless --log); default "
        "reports/<sweep>-<parent id[:8]>/, logged to the parent run",
    )
    parser.add_argument("--target-loss", type=float, help="a grid: epochs to reach this loss")
    parser.add_argument(
        "--target-accuracy", type=float, help="a grid: epochs to reach this accuracy"
    )
    logging = parser.add_mutually_exclusive_group()
    logging.add_argument("--log", action="store_true", help="log to the parent run")
    logging.add_argument("--no-log", action="store_true", help="do not log to the parent run")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line a file
    try:
        client = analysis.client_for(args.tracking_uri)
        experiment_id = analysis.find_experiment(client, args.experiment)
        parent = analysis.sweep_parent(client, experiment_id, args.sweep).info.run_id
        sweep = load(client, parent)
    except (ValueError, MlflowException, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if sweep.runs.empty:
        print(f"error: sweep parent run {parent} has no runs", file=sys.stderr)
        return 2
    out = Path(args.out or f"reports/{safe_name(sweep.name)}-{parent[:8]}").resolve()
    report = write(sweep, out, None, args.target_loss, args.target_accuracy)
    if args.log or not (args.out or args.no_log):
        client.log_artifacts(parent, str(out), REPORT_ARTIFACT_PATH)
        # The end of the multirun logged them already, unless it predates the report code.
        metrics = parent_metrics(report.curves, sweep.name)
        if not {m.key for m in metrics} & set(client.get_run(parent).data.metrics):
            _log_metrics(client, parent, metrics)
        print(f"logged to parent run {parent} under {REPORT_ARTIFACT_PATH}/")
    print(report.index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
