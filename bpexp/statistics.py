"""The statistics of a sweep: arms, settings, confidence intervals and the comparison table.

Pure pandas and NumPy on the frames :mod:`bpexp.analysis` reads from the store (no MLflow):

- :func:`compare`: per arm (optimizer name and form, plus whatever else the sweep varied), the
  best setting (learning rate, beta) by the mean final yardstick over seeds (``val/accuracy``
  by default, higher is better), and for that setting the mean, std and 95% Student-t
  confidence interval over seeds, the epochs needed to reach a target, the divergences, and
  the paired difference against the best arm (arms with the same seed share initial weights
  and mini-batches, :mod:`bpexp.rng`);
- :func:`mean_std_ci`, :func:`t_quantile`: the interval used everywhere in reports;
- :func:`settings_varied`, :func:`label_arms`: what makes an arm of a sweep, and its name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from bpexp.optimizer import label

# The identity columns of a runs frame (bpexp.analysis.runs); params and metrics follow.
RUN_COLUMNS = [
    "run_id",
    "run_name",
    "parent_run_id",
    "sweep",
    "outcome",
    "arm",
    "stage",
    "status",
    "start_time",
    "end_time",
    "artifact_uri",
]
# An arm is one update rule; a setting is one point of the grid searched for that rule.
ARM_COLUMNS = ("optimizer.name", "optimizer.form")
SETTING_COLUMNS = ("optimizer.lr", "optimizer.beta")
SCORED_OUTCOMES = ("completed", "diverged")  # runs that say something about the optimizer


# Params are dotted config keys (``optimizer.lr``) or one of these top-level keys; metric names
# contain "/" (``val/loss``) or are one word without a dot (``sharpness``, ``grad_noise_scale``).
TOP_LEVEL_PARAMS = ("seed", "force")


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The param columns of a runs frame (see :data:`TOP_LEVEL_PARAMS`); the run's identity
    columns (:data:`RUN_COLUMNS`) are not params either."""
    return [
        c
        for c in frame.columns
        if c not in RUN_COLUMNS and "/" not in c and ("." in c or c in TOP_LEVEL_PARAMS)
    ]


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
    by: Sequence[str] | None = None,
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
    quantities. The ``ranked_by`` column says which metric ranked the table. A frame with both
    stages of a protocol sweep (``stage`` tune and confirm) raises ValueError too: compare one.

    An arm is what the sweeper named (the ``arm`` column, from the runs' ``bpexp.arm`` tag:
    the default when the frame has it, or ``by=["arm"]``), else a value of the ``by`` columns
    (default :data:`ARM_COLUMNS`, plus ``optimizer.bias_correction`` when it varies); a setting
    is a value of the ``over`` columns. The best setting has the lowest mean of
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
    stages = set(runs_frame["stage"].dropna()) if "stage" in runs_frame.columns else set()
    if {"tune", "confirm"} <= stages:
        raise ValueError(
            "the runs frame mixes a protocol's tune and confirm runs, whose seeds differ: pass "
            "runs[runs['stage'] == 'confirm'] for its answer (fresh seeds at each arm's chosen "
            "setting), or runs[runs['stage'] == 'tune'] for the search"
        )
    if (target_loss is not None or target_accuracy is not None) and history_frame is None:
        raise ValueError("target_loss / target_accuracy need history_frame (analysis.history)")
    split = metric.rsplit("/", 1)[0]
    # Shown beside the yardstick: the split's accuracy when ranking by a loss, and vice versa.
    accuracy = f"{split}/accuracy" if metric.endswith("loss") else f"{split}/loss"
    if accuracy not in runs_frame.columns or accuracy == metric:
        accuracy = None
    if by is None:
        tagged = "arm" in runs_frame.columns and runs_frame["arm"].notna().all()
        by = ["arm"] if tagged and len(runs_frame) else ARM_COLUMNS
    sweeper_arms = list(by) == ["arm"]
    by = [] if sweeper_arms else arm_columns(runs_frame, by)
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
    frame["arm"] = frame["arm"].astype(str) if sweeper_arms else label_arms(frame, by)
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


def factor_effects(
    runs_frame: pd.DataFrame,
    factor: str,
    within: str | None = None,
    *,
    metric: str = "val/accuracy",
    seed: str = "seed",
) -> pd.DataFrame:
    """The paired effect of a two-level ``factor`` (a param column: its second level minus
    its first, seed by seed), within each level of ``within``, and their interaction.

    For a factorial sweep's confirm runs (``optimizer.beta: 0.5,0.9`` x ``trainer.batch_size:
    10,100``): ``factor_effects(confirm, "optimizer.beta", "trainer.batch_size")`` gives the
    effect of beta at batch size 10, at batch size 100, and, when ``within`` has two levels,
    the interaction: the difference of those two effects, per seed. Only completed runs with a
    finite ``metric`` count; a seed counts where it has every run the effect needs.

    Columns: ``effect`` (e.g. ``optimizer.beta: 0.9 - 0.5``), ``within`` (``trainer.batch_size
    =10``, or ``interaction``), ``mean, std, ci95`` (Student t over the seeds), ``seeds``.
    """
    frame = runs_frame[runs_frame["outcome"] == "completed"]
    frame = frame[np.isfinite(frame[metric].astype(float))]
    levels = list(dict.fromkeys(frame[factor]))
    if len(levels) != 2:
        raise ValueError(f"{factor!r} has levels {levels} in the completed runs; need exactly 2")
    low, high = sorted(levels, key=lambda v: (str(type(v)), v))
    groups = list(dict.fromkeys(frame[within])) if within else [None]
    name = f"{factor}: {high} - {low}"
    rows, per_group = [], {}
    for level in groups:
        part = frame if within is None else frame[frame[within] == level]
        values = part.pivot_table(index=seed, columns=factor, values=metric, aggfunc="mean")
        if low not in values.columns or high not in values.columns:
            continue
        diff = (values[high] - values[low]).dropna()
        per_group[level] = diff
        mean, std, ci = mean_std_ci(diff.to_numpy())
        where = "all" if within is None else f"{within}={level}"
        rows.append({"effect": name, "within": where, "mean": mean, "std": std, "ci95": ci})
        rows[-1]["seeds"] = len(diff)
    if within is not None and len(per_group) == 2:
        first, second = (per_group[g] for g in sorted(per_group, key=lambda v: (str(type(v)), v)))
        shared = first.index.intersection(second.index)
        diff = second[shared] - first[shared]
        mean, std, ci = mean_std_ci(diff.to_numpy())
        rows.append(
            {"effect": name, "within": "interaction", "mean": mean, "std": std, "ci95": ci}
            | {"seeds": len(shared)}
        )
    return pd.DataFrame(rows, columns=["effect", "within", "mean", "std", "ci95", "seeds"])
