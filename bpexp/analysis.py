"""Tidy pandas frames from the MLflow store; the statistics live in :mod:`bpexp.statistics`
(re-exported here, so ``bpexp.analysis.compare`` is the one name users know).

- :func:`runs`: one row per run: ids, outcome, the flattened params (numbers where they are
  numbers) and the final value of every metric.
- :func:`history`: every logged point in long format, ``run_id, metric, step, value`` plus chosen
  params as columns. It reads each run's ``history.parquet`` artifact (one download per run, in a
  thread pool) instead of one ``get_metric_history`` request per run and metric.
- :func:`compare` (:mod:`bpexp.statistics`): per arm, the best setting by the mean final
  yardstick over seeds, with its 95% confidence interval and the paired difference to the best.

    >>> import bpexp.analysis as ba
    >>> r = ba.runs(sweep="optimizers")                 # the latest `optimizers` sweep
    >>> h = ba.history(r, metrics=["val/loss"])
    >>> ba.compare(r, h, target_accuracy=0.95)
"""

from __future__ import annotations

import fnmatch
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from bpexp.statistics import (  # noqa: F401  (the public API of bpexp.analysis)
    ARM_COLUMNS,
    RUN_COLUMNS,
    SCORED_OUTCOMES,
    SETTING_COLUMNS,
    arm_columns,
    arm_label,
    best_runs,
    compare,
    expected_best,
    factor_effects,
    label_arms,
    mean_std_ci,
    param_columns,
    performance_profile,
    performance_ratios,
    profile_score,
    settings_varied,
    t_quantile,
    tunability,
    wins_ties_losses,
)

HISTORY_ARTIFACT = "history.parquet"
HISTORY_COLUMNS = ["run_id", "metric", "step", "value"]
HISTORY_PARAMS = (
    "optimizer.name",
    "optimizer.form",
    "optimizer.bias_correction",
    "optimizer.lr",
    "optimizer.beta",
    "seed",
)
MAX_WORKERS = 16
_RUN_ID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------------- the store


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    """A client for ``tracking_uri`` (else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``);
    a SQLite store that does not exist is an error (TrackingError), not a new empty store."""
    from bpexp import tracking as tr

    return tr.connect(tr.tracking_uri(tracking_uri), create=False)


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


def _summary(client: MlflowClient, parent_id: str) -> pd.DataFrame:
    """The parent's ``summary.csv``: each job's arm and stage as the sweeper decided them, and
    its run (a job skipped because an identical completed run existed points at that older
    run, which is not a child of this parent)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_id, "summary.csv", tmp)
        except (MlflowException, OSError):
            return pd.DataFrame(columns=["run_id", "arm", "stage"])
        table = pd.read_csv(path, dtype={"run_id": str, "arm": str, "stage": str})
    return table[table["run_id"].notna()].drop_duplicates("run_id")


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
                "arm": tags.get("bpexp.arm"),
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

    Columns: :data:`RUN_COLUMNS` (``run_id, run_name, parent_run_id, sweep, outcome, arm,
    stage, status, start_time, end_time, artifact_uri``; ``arm`` and ``stage`` as the sweeper
    decided them; times in UTC, ``end_time`` NaT while running), then every param by its
    dotted key (``optimizer.lr`` float, ``seed`` int, ``optimizer.bias_correction``
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
    summary = None
    if sweep is not None:
        known = {run.info.run_id for run in found}
        summary = _summary(client, parent)
        missing = [r for r in summary["run_id"] if r not in known]
        extra = [client.get_run(r) for r in missing]
        extra = [
            run
            for run in extra
            if all(run.data.tags.get(k) == str(v) for k, v in (tags or {}).items())
        ]
    frame = runs_frame([*found, *extra])
    if summary is not None and "arm" in summary.columns:
        # The sweeper's word on a run of this sweep (a skipped job's run is an older one).
        decided = summary.set_index("run_id")
        for column in ("arm", "stage"):
            mine = frame["run_id"].map(decided[column])
            frame[column] = mine.where(mine.notna(), frame[column])
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
