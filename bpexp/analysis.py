"""Tidy pandas frames from the MLflow store, and the comparison of a sweep's optimizer arms.

- :func:`runs`: one row per run: ids, outcome, the flattened params (numbers where they are
  numbers) and the final value of every metric.
- :func:`history`: every logged point in long format, ``run_id, metric, step, value`` plus chosen
  params as columns. It reads each run's ``history.parquet`` artifact (one download per run, in a
  thread pool) instead of one ``get_metric_history`` request per run and metric.
- :func:`compare`: per arm (optimizer name and form), the best learning rate (and beta) by mean
  final validation loss over seeds, and for that setting the mean, std and 95% Student-t
  confidence interval over seeds, the epochs needed to reach a target, the divergences, and the
  paired difference against the best arm (arms with the same seed share initial weights and
  mini-batches, :mod:`bpexp.rng`).

    >>> import bpexp.analysis as ba
    >>> r = ba.runs(sweep="optimizers")                 # the latest `optimizers` sweep
    >>> h = ba.history(r, metrics=["val/loss"])
    >>> ba.compare(r, h, target_loss=0.1)
"""

from __future__ import annotations

import fnmatch
import math
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from bpexp.optimizer import label

HISTORY_ARTIFACT = "history.parquet"
HISTORY_COLUMNS = ["run_id", "metric", "step", "value"]
RUN_COLUMNS = [
    "run_id",
    "run_name",
    "parent_run_id",
    "sweep",
    "outcome",
    "stage",
    "status",
    "start_time",
    "end_time",
    "artifact_uri",
]
# An arm is one update rule; a setting is one point of the grid searched for that rule.
ARM_COLUMNS = ("optimizer.name", "optimizer.form")
SETTING_COLUMNS = ("optimizer.lr", "optimizer.beta")
HISTORY_PARAMS = (
    "optimizer.name",
    "optimizer.form",
    "optimizer.bias_correction",
    "optimizer.lr",
    "optimizer.beta",
    "seed",
)
SCORED_OUTCOMES = ("completed", "diverged")  # runs that say something about the optimizer
MAX_WORKERS = 16
_RUN_ID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------------- the store


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """A client for ``tracking_uri`` (else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``)."""
    from bpexp import tracking as tr

    return tr.connect(tr.tracking_uri(tracking_uri))


def find_experiment(client: MlflowClient, experiment: str) -> str:
    """The id of the experiment named ``experiment``; ValueError naming the ones there if none."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise ValueError(f"experiment {experiment!r} not found in the store; it has {names}")
    return found.experiment_id


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """All runs matching ``filter_string``, page by page (1000 a request)."""
    found: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _quoted(value: object) -> str:
    text = str(value)
    if "'" in text:
        raise ValueError(f"{text!r}: quotes are not supported in a filter value")
    return f"'{text}'"


def sweep_parent(client: MlflowClient, experiment_id: str, sweep: str | None = None) -> Run:
    """The parent run of a sweep: by run id, by name (the latest such sweep), or the latest one."""
    if sweep is not None and _RUN_ID.fullmatch(sweep):
        return client.get_run(sweep)
    condition = "tags.`bpexp.kind` = 'sweep'"
    if sweep is not None:
        condition += f" and tags.sweep = {_quoted(sweep)}"
    found = client.search_runs(
        [experiment_id], condition, max_results=1, order_by=["attributes.start_time DESC"]
    )
    if found:
        return found[0]
    parents = _search(client, [experiment_id], "tags.`bpexp.kind` = 'sweep'")
    names = sorted({p.data.tags.get("sweep", "") for p in parents})
    what = f"named {sweep!r}" if sweep else "at all"
    raise ValueError(f"no sweep {what} in this experiment; its sweeps: {names}")


def _summary_run_ids(client: MlflowClient, parent_id: str) -> list[str]:
    """Run ids listed in the parent's ``summary.csv``: jobs skipped because an identical
    completed run existed point at that older run, which is not a child of this parent."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_id, "summary.csv", tmp)
        except (MlflowException, OSError):
            return []
        table = pd.read_csv(path)
    return [str(r) for r in table.get("run_id", pd.Series(dtype=str)).dropna()]


# ------------------------------------------------------------------------------ runs frame


def _typed(values: pd.Series) -> pd.Series:
    """Param strings as numbers or booleans where every present value is one; "null" is NA."""
    values = values.where(values != "null")
    present = values.dropna()
    if present.empty:
        return values
    if present.isin(["True", "False"]).all():
        flags = values.map({"True": True, "False": False})
        return flags.astype("boolean") if flags.isna().any() else flags.astype(bool)
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any():
        return values
    if present.str.fullmatch(r"[+-]?\d+").all():
        return pd.to_numeric(values).astype("Int64" if values.isna().any() else "int64")
    return pd.to_numeric(values).astype(float)


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The param columns of a runs frame: bpexp's metric names all contain "/", params none."""
    return [c for c in frame.columns if c not in RUN_COLUMNS and "/" not in c]


def runs_frame(found: Iterable[Run]) -> pd.DataFrame:
    """One row per run: :data:`RUN_COLUMNS`, then params (sorted), then final metrics (sorted)."""
    info_rows, param_rows, metric_rows = [], [], []
    for run in found:
        tags = run.data.tags
        info_rows.append(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "parent_run_id": tags.get(MLFLOW_PARENT_RUN_ID),
                "sweep": tags.get("sweep"),
                "outcome": tags.get("outcome"),
                "stage": tags.get("bpexp.stage"),
                "status": run.info.status,
                "start_time": pd.to_datetime(run.info.start_time, unit="ms"),
                "end_time": pd.to_datetime(run.info.end_time, unit="ms"),
                "artifact_uri": run.info.artifact_uri,
                "_kind": tags.get("bpexp.kind"),
            }
        )
        param_rows.append(run.data.params)
        metric_rows.append(run.data.metrics)
    info = pd.DataFrame(info_rows, columns=[*RUN_COLUMNS, "_kind"])
    params = pd.DataFrame(param_rows, index=info.index, dtype=object)
    params = params.reindex(columns=sorted(params.columns)).apply(
        lambda column: _typed(column.astype("str").where(column.notna()))
    )
    metrics = pd.DataFrame(metric_rows, index=info.index, dtype=float)
    metrics = metrics.reindex(columns=sorted(metrics.columns))
    return pd.concat([info, params, metrics], axis=1)


def runs(
    experiment: str = "bpexp",
    *,
    sweep: str | None = None,
    tags: Mapping[str, object] | None = None,
    params: Mapping[str, object] | None = None,
    tracking_uri: str | None = None,
    include_parents: bool = False,
    client: MlflowClient | None = None,
) -> pd.DataFrame:
    """One row per run of ``experiment``, optionally narrowed to a sweep, tags and params.

    ``sweep``: a sweep name (its latest parent run) or a parent run id; the sweep's runs are the
    parent's children plus the runs its ``summary.csv`` names (jobs skipped as already done).
    ``tags``: ``{"optimizer": "sgd"}``, matched in the store. ``params``: ``{"optimizer.lr":
    0.3, "seed": [0, 1]}`` (a list means any of), matched on the typed values.

    Columns: :data:`RUN_COLUMNS` (``run_id, run_name, parent_run_id, sweep, outcome, status,
    start_time, end_time, artifact_uri``; times in UTC, ``end_time`` NaT while running), then every
    param by its dotted key (``optimizer.lr`` float, ``seed`` int, ``optimizer.bias_correction``
    bool, ``network.hidden`` JSON text), then the final (last-step) value of every metric
    (``val/loss``, ``test/accuracy``, ``grad_norm/b1``, ...). Sweep parent runs are left out
    unless ``include_parents``.
    """
    client = client or client_for(tracking_uri)
    experiment_id = find_experiment(client, experiment)
    conditions = [f"tags.`{key}` = {_quoted(value)}" for key, value in (tags or {}).items()]
    extra: list[Run] = []
    if sweep is not None:
        parent = sweep_parent(client, experiment_id, sweep).info.run_id
        conditions.append(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'")
    found = _search(client, [experiment_id], " and ".join(conditions))
    if sweep is not None:
        known = {run.info.run_id for run in found}
        missing = [r for r in _summary_run_ids(client, parent) if r not in known]
        extra = [client.get_run(r) for r in missing]
        extra = [
            run
            for run in extra
            if all(run.data.tags.get(k) == str(v) for k, v in (tags or {}).items())
        ]
    frame = runs_frame([*found, *extra])
    kind = frame.pop("_kind")
    if not include_parents:
        frame = frame[kind != "sweep"]
    for key, wanted in (params or {}).items():
        if key not in frame.columns:
            raise ValueError(f"no param {key!r}; params: {param_columns(frame)}")
        if isinstance(wanted, list | tuple | set):
            frame = frame[frame[key].isin(list(wanted))]
        else:
            frame = frame[frame[key] == wanted]
    return frame.reset_index(drop=True)


def runs_by_id(client: MlflowClient, run_ids: Sequence[str]) -> pd.DataFrame:
    """:func:`runs` for given run ids, in that order (one ``get_run`` each, in a thread pool)."""
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        found = list(pool.map(client.get_run, run_ids))
    return runs_frame(found).drop(columns="_kind")


# --------------------------------------------------------------------------- history frame


def _matching(names: Iterable[str], patterns: Sequence[str] | None) -> list[str]:
    """Names matching any pattern: exact names or globs such as ``grad_norm/*``."""
    names = list(names)
    if patterns is None:
        return names
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _from_store(client: MlflowClient, run_id: str, metrics: Sequence[str] | None) -> pd.DataFrame:
    """One run's history through ``get_metric_history``: one request per metric (slow path)."""
    keys = _matching(client.get_run(run_id).data.metrics, metrics)
    rows = [
        (run_id, key, point.step, point.value)
        for key in keys
        for point in client.get_metric_history(run_id, key)
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _load(
    client: MlflowClient,
    run_id: str,
    artifact_uri: str | None,
    folder: str,
    metrics: Sequence[str] | None,
) -> tuple[pd.DataFrame, bool]:
    """One run's history and whether it came from its ``history.parquet`` artifact.

    The artifact is fetched from the run's ``artifact_uri`` directly (a local store's file is
    read in place); going through the client would cost a ``get_run`` per run.
    """
    try:
        if artifact_uri:
            repo = get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri)
            local = isinstance(repo, LocalArtifactRepository)
            dst = None if local else tempfile.mkdtemp(dir=folder)
            path = repo.download_artifacts(HISTORY_ARTIFACT, dst)
        else:
            path = client.download_artifacts(run_id, HISTORY_ARTIFACT, tempfile.mkdtemp(dir=folder))
        part = pd.read_parquet(path, columns=HISTORY_COLUMNS)
    except (MlflowException, OSError):
        return _from_store(client, run_id, metrics), False
    if metrics is not None:
        part = part[part["metric"].isin(_matching(part["metric"].unique(), metrics))]
    part["run_id"] = run_id  # the artifact's own column, made certain
    return part, True


def stack_histories(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The parts stacked as one history frame with fixed dtypes (also when there are none)."""
    parts = [part[HISTORY_COLUMNS] for part in parts if not part.empty]
    if not parts:
        return pd.DataFrame(
            {"run_id": [], "metric": [], "step": [], "value": []}, columns=HISTORY_COLUMNS
        ).astype({"run_id": str, "metric": str, "step": "int64", "value": "float64"})
    frame = pd.concat(parts, ignore_index=True)
    return frame.astype({"step": "int64", "value": "float64"})


def history(
    runs_frame_or_ids: pd.DataFrame | Sequence[str],
    metrics: Sequence[str] | None = None,
    params: Sequence[str] | None = None,
    *,
    tracking_uri: str | None = None,
    client: MlflowClient | None = None,
    max_workers: int = MAX_WORKERS,
) -> pd.DataFrame:
    """Every logged point of the given runs: per-epoch metrics (step = epoch, 0 = at
    initialisation) and per-step ones (``train/batch_loss``, step = global step) alike.

    ``metrics``: names or globs (``["val/*", "grad_norm/b*"]``); None is all. ``params``: columns
    of the runs frame to repeat on every row; None is :data:`HISTORY_PARAMS` (those present).
    Given run ids instead of a frame, their params are fetched from the store (a ``get_run``
    each).

    Columns: ``run_id, metric, step, value`` then the params; rows ordered by run (as given),
    metric, step. ``frame.attrs["from_store"]`` lists runs without a ``history.parquet``
    artifact, read through ``get_metric_history`` instead.
    """
    client = client or client_for(tracking_uri)
    if isinstance(runs_frame_or_ids, pd.DataFrame):
        meta = runs_frame_or_ids
        run_ids = list(meta["run_id"])
    else:
        run_ids = list(runs_frame_or_ids)
        meta = runs_by_id(client, run_ids)
    if params is None:
        wanted, strict = list(HISTORY_PARAMS), False
    else:
        wanted, strict = list(params), True
    uris = meta["artifact_uri"] if "artifact_uri" in meta.columns else [None] * len(meta)
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(max_workers) as pool:
        loaded = list(
            pool.map(lambda run_id, uri: _load(client, run_id, uri, folder, metrics), run_ids, uris)
        )
    frame = stack_histories([part for part, _ in loaded])
    order = {run_id: i for i, run_id in enumerate(run_ids)}
    frame = frame.sort_values(
        ["run_id", "metric", "step"], key=lambda c: c.map(order) if c.name == "run_id" else c
    ).reset_index(drop=True)
    if wanted:
        missing = [c for c in wanted if c not in meta.columns]
        if strict and missing:
            raise ValueError(f"params {missing} are not columns of the runs frame")
        present = [c for c in wanted if c in meta.columns]
        frame = frame.merge(meta[["run_id", *present]], on="run_id", how="left")
    frame.attrs["from_store"] = [
        run_id
        for run_id, (_, from_artifact) in zip(run_ids, loaded, strict=True)
        if not from_artifact
    ]
    return frame


# ------------------------------------------------------------------------------- comparison


def arm_columns(frame: pd.DataFrame, by: Sequence[str] = ARM_COLUMNS) -> list[str]:
    """``by`` as present in ``frame``, plus ``optimizer.bias_correction`` when it varies."""
    columns = [c for c in by if c in frame.columns]
    extra = "optimizer.bias_correction"
    if extra in frame.columns and extra not in columns and frame[extra].nunique() > 1:
        columns.append(extra)
    return columns


def arm_label(values: Mapping[str, object], by: Sequence[str]) -> str:
    """A readable arm name, like the run names: ``sgd``, ``momentum/ema+bc``, ``sgd cost.name=x``.

    The update rule is named by :func:`bpexp.optimizer.label`, as in the run names; its form
    and bias correction only when they are arm columns (``by``).
    """
    head = ""
    if "optimizer.name" in by:
        name = str(values["optimizer.name"])
        head = name
        if "optimizer.form" in by:
            flag = values.get("optimizer.bias_correction", False)
            # `is`, not ==: the column holds NA where a run did not log the param.
            corrected = "optimizer.bias_correction" in by and (flag is True or flag is np.True_)
            head = label(name, str(values["optimizer.form"]), corrected)
    special = ("optimizer.name", "optimizer.form", "optimizer.bias_correction")
    rest = [f"{key}={values[key]}" for key in by if key not in special]
    return " ".join(part for part in [head, *rest] if part) or "all"


def label_arms(frame: pd.DataFrame, by: Sequence[str] = ARM_COLUMNS) -> pd.Series:
    """The arm label of every row (see :func:`arm_label`), as a Series aligned with ``frame``."""
    by = arm_columns(frame, by)
    return pd.Series(
        [arm_label(row, by) for row in frame[by].to_dict("records")], index=frame.index, dtype=str
    )


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile, e.g. 12.706 for df = 1 (scipy ships with scikit-learn)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def mean_std_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean, sample std (ddof 1) and 95% CI half-width ``t_{0.975, n-1} std / sqrt(n)``.

    NaN std and half-width for one value; an infinite value makes the mean infinite.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2 or not np.isfinite(x).all():
        return mean, math.nan, math.nan
    std = float(x.std(ddof=1))
    return mean, std, t_quantile(x.size - 1) * std / math.sqrt(x.size)


def _epochs_to(
    history_frame: pd.DataFrame, run_seeds: pd.Series, metric: str, target: float, below: bool
) -> tuple[float, int]:
    """Mean over seeds of the first epoch reaching ``target`` (NaN unless every seed reached
    it), and how many seeds reached it. ``run_seeds``: seed by run id."""
    points = history_frame[
        history_frame["run_id"].isin(run_seeds.index) & (history_frame["metric"] == metric)
    ]
    hit = points["value"] <= target if below else points["value"] >= target
    # The first step at or past the target per run; NaN for a run that never got there.
    first = points[hit].groupby("run_id")["step"].min().astype(float)
    first = first.reindex(run_seeds.index)
    per_seed = first.groupby(run_seeds).mean()
    reached = int(per_seed.notna().sum())
    return (float(per_seed.mean()) if reached == len(per_seed) else math.nan), reached


def compare(
    runs_frame: pd.DataFrame,
    history_frame: pd.DataFrame | None = None,
    *,
    by: Sequence[str] = ARM_COLUMNS,
    over: Sequence[str] = SETTING_COLUMNS,
    metric: str = "val/accuracy",
    target_loss: float | None = None,
    target_accuracy: float | None = None,
    seed: str = "seed",
    direction: str | None = None,
) -> pd.DataFrame:
    """One row per arm, best arm first: its best setting and the statistics over seeds there.

    ``metric`` ranks (the yardstick): higher is better for an accuracy, lower for anything else,
    unless ``direction`` ("maximize" or "minimize") says otherwise. Ranking by a loss across
    arms whose ``cost.name`` differs raises ValueError: losses of different costs are different
    quantities. The ``ranked_by`` column says which metric ranked the table.

    An arm is a value of the ``by`` columns (plus ``optimizer.bias_correction`` when it
    varies); a setting a value of the ``over`` columns. The best setting has the lowest mean of
    the final ``metric`` over its seeds, where a diverged run counts as +inf (a setting with a
    divergence loses to any without) and failed or interrupted runs are left out (they say
    nothing about the optimizer) but counted.

    Columns: ``arm``, the ``by`` columns, the best ``over`` values, ``seeds`` (at the best
    setting), ``{metric}_mean/_std/_ci95`` (95% CI half-width, Student t with n - 1 degrees of
    freedom) and the same for the accuracy next to ``metric`` (``val/accuracy``); with targets,
    ``epochs_to_target_loss`` (first epoch with ``metric`` <= target, mean over seeds, NaN
    unless every seed got there) and ``target_loss_reached`` (seeds that did), and the same for
    ``target_accuracy``; ``runs, diverged, failed`` over all the arm's settings;
    ``diff_vs_best_mean/_ci95`` and ``paired_seeds``: the per-seed difference of the final
    ``metric`` (this arm minus the best arm, both at their best settings) over the seeds both
    ran, NaN where no seed is shared; ``run_ids``: the runs of the best setting.
    """
    if metric not in runs_frame.columns and not runs_frame.empty:
        raise ValueError(f"metric {metric!r} is not a column of the runs frame")
    direction = direction or ("maximize" if metric.endswith("accuracy") else "minimize")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction={direction!r}; allowed: maximize, minimize")
    sign = -1.0 if direction == "maximize" else 1.0  # ranks on sign * metric, lower is better
    if (
        metric.endswith("loss")
        and "cost.name" in runs_frame.columns
        and runs_frame["cost.name"].nunique() > 1
    ):
        costs = ", ".join(sorted(runs_frame["cost.name"].dropna().astype(str).unique()))
        raise ValueError(
            f"metric={metric!r} would rank runs with different costs ({costs}) by their losses, "
            "which are different quantities; rank by an accuracy (metric='val/accuracy')"
        )
    if (target_loss is not None or target_accuracy is not None) and history_frame is None:
        raise ValueError("target_loss / target_accuracy need history_frame (analysis.history)")
    split = metric.rsplit("/", 1)[0]
    # Shown beside the yardstick: the split's accuracy when ranking by a loss, and vice versa.
    accuracy = f"{split}/accuracy" if metric.endswith("loss") else f"{split}/loss"
    if accuracy not in runs_frame.columns or accuracy == metric:
        accuracy = None
    by = arm_columns(runs_frame, by)
    over = [c for c in over if c in runs_frame.columns]
    stats = [f"{m}_{s}" for m in (metric, accuracy) if m for s in ("mean", "std", "ci95")]
    for kind, target in (("loss", target_loss), ("accuracy", target_accuracy)):
        if target is not None:
            stats += [f"epochs_to_target_{kind}", f"target_{kind}_reached"]
    columns = ["arm", "ranked_by", *by, *over, "seeds", *stats, "runs", "diverged", "failed"]
    columns += ["diff_vs_best_mean", "diff_vs_best_ci95", "paired_seeds", "run_ids"]
    if runs_frame.empty:
        return pd.DataFrame(columns=columns)
    frame = runs_frame.copy()
    frame["arm"] = label_arms(frame, by)
    score = frame[metric].astype(float)
    good = np.isfinite(score) & (frame["outcome"] != "diverged")
    frame["_score"] = (sign * score).where(good, np.inf)
    frame["_setting"] = frame[over].astype(str).agg("|".join, axis=1) if over else ""

    rows, per_seed = [], {}
    for arm, group in frame.groupby("arm", sort=False):
        row: dict[str, object] = {"arm": arm, "ranked_by": f"{metric} ({direction})"}
        row |= group.iloc[0][by].to_dict()
        scored = group[group["outcome"].isin(SCORED_OUTCOMES)]
        row |= {
            "runs": len(group),
            "diverged": int((group["outcome"] == "diverged").sum()),
            "failed": int((~group["outcome"].isin(SCORED_OUTCOMES)).sum()),
        }
        if scored.empty:
            rows.append(row | {c: math.nan for c in over} | {"seeds": 0, "run_ids": ()})
            continue
        means = scored.groupby("_setting", sort=False)["_score"].mean()
        best = scored[scored["_setting"] == means.idxmin()]
        row |= best.iloc[0][over].to_dict()
        seeds = best[seed] if seed in best.columns else pd.Series(0, index=best.index)
        per_seed[arm] = sign * best.groupby(seeds)["_score"].mean()
        row["seeds"] = len(per_seed[arm])
        mean, std, ci = mean_std_ci(per_seed[arm])
        row |= {f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95": ci}
        if accuracy is not None:
            mean, std, ci = mean_std_ci(best.groupby(seeds)[accuracy].mean())
            row |= {f"{accuracy}_mean": mean, f"{accuracy}_std": std, f"{accuracy}_ci95": ci}
        run_seeds = pd.Series(seeds.to_numpy(), index=best["run_id"].to_numpy())
        if target_loss is not None:
            epochs, reached = _epochs_to(
                history_frame, run_seeds, f"{split}/loss", target_loss, True
            )
            row |= {"epochs_to_target_loss": epochs, "target_loss_reached": reached}
        if target_accuracy is not None:
            epochs, reached = _epochs_to(
                history_frame, run_seeds, f"{split}/accuracy", target_accuracy, False
            )
            row |= {"epochs_to_target_accuracy": epochs, "target_accuracy_reached": reached}
        row["run_ids"] = tuple(best["run_id"])
        rows.append(row)

    table = pd.DataFrame(rows, columns=columns)
    table["_rank"] = sign * table[f"{metric}_mean"].astype(float)
    table = table.sort_values("_rank", kind="stable", na_position="last").drop(columns="_rank")
    table = table.reset_index(drop=True)
    best_arm = table.loc[0, "arm"]
    diffs = []
    for arm in table["arm"]:
        if arm not in per_seed or best_arm not in per_seed:
            diffs.append((math.nan, math.nan, 0))
            continue
        shared = per_seed[arm].index.intersection(per_seed[best_arm].index)
        d = per_seed[arm][shared] - per_seed[best_arm][shared]
        mean, _, ci = mean_std_ci(d)
        diffs.append((mean, ci, len(shared)))
    table["diff_vs_best_mean"] = [d[0] for d in diffs]
    table["diff_vs_best_ci95"] = [d[1] for d in diffs]
    table["paired_seeds"] = [d[2] for d in diffs]
    return table


def best_runs(runs_frame: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``runs_frame`` at each arm's best setting, with an ``arm`` column."""
    arms = comparison[["arm", "run_ids"]].explode("run_ids").dropna()
    arms = arms.rename(columns={"run_ids": "run_id"})
    return runs_frame.merge(arms, on="run_id", how="inner")


def settings_varied(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(by, over)`` for a sweep: the arm columns plus every other param the sweep varied
    (batch size, cost, depth, ...), and the setting columns present.

    Seeds, tracking and derived params (``network.sizes``) never make an arm.
    """
    ignored = ("tracking.", "force", "seed", "network.sizes")
    varied = [
        c
        for c in param_columns(frame)
        if not c.startswith(ignored)
        and c not in ARM_COLUMNS + SETTING_COLUMNS
        and frame[c].astype(str).nunique() > 1
    ]
    return arm_columns(frame, [*ARM_COLUMNS, *varied]), [
        c for c in SETTING_COLUMNS if c in frame.columns
    ]
