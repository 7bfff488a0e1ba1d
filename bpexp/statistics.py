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


# ------------------------------------------------------------------- across workloads


def median_time(times: Sequence[float]) -> float:
    """A workload's time for an arm: the median over its seeds, a miss counting as ∞, so the
    workload is reached when more than half the seeds reach it (2 of 3, 2 of 2)."""
    x = np.asarray(times, dtype=float)
    return float(np.median(x)) if x.size else math.inf


def performance_ratios(times: pd.DataFrame, time: str = "steps") -> pd.DataFrame:
    """AlgoPerf's performance ratios. ``times``: one row per confirm run, columns
    ``workload, arm, seed`` and ``time`` (steps or seconds to the target, ∞ for a miss).

    Returns one row per workload and arm: ``t`` (:func:`median_time`) and ``ratio`` =
    t / the best arm's t on that workload (1 for the best, ties included; ∞ for a miss, and
    for every arm of a workload that no arm reaches).
    """
    t = times.groupby(["workload", "arm"], sort=False)[time].apply(median_time).rename("t")
    t = t.reset_index()
    best = t.groupby("workload", sort=False)["t"].transform("min")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(best) & np.isfinite(t["t"]), t["t"] / best, math.inf)
    return t.assign(ratio=ratio)


def profile_score(ratios: Sequence[float], tau_max: float = 4.0) -> float:
    """The area under the performance profile ρ(τ) over τ ∈ [1, ``tau_max``], divided by
    ``tau_max`` - 1: ρ is a step function, so each workload adds (τ_max − r)/(τ_max − 1) when
    its ratio r ≤ τ_max, and 0 otherwise, averaged over workloads."""
    r = np.asarray(ratios, dtype=float)
    return float(np.mean(np.clip((tau_max - r) / (tau_max - 1.0), 0.0, 1.0)))


def performance_profile(
    times: pd.DataFrame,
    time: str = "steps",
    *,
    taus: Sequence[float] | None = None,
    tau_max: float = 4.0,
    bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Performance profiles across workloads (AlgoPerf). ``times`` as for
    :func:`performance_ratios`.

    Returns ``(curve, scores)``: ``curve`` has one row per τ (index, ``taus`` or 301 points
    from 1 to ``tau_max``) and one column per arm, ρ_arm(τ) = the fraction of workloads whose
    ratio is ≤ τ; ``scores`` one row per arm, best first: ``score`` (:func:`profile_score`),
    ``low`` and ``high``, the 2.5% and 97.5% quantiles of the score over ``bootstrap``
    resamplings of each workload and arm's seeds (with replacement), and ``reached``, the
    workloads with a finite time.
    """
    ratios = performance_ratios(times, time)
    arms = list(dict.fromkeys(ratios["arm"]))
    taus = np.linspace(1.0, tau_max, 301) if taus is None else np.asarray(taus, dtype=float)
    by_arm = {a: ratios.loc[ratios["arm"] == a, "ratio"].to_numpy() for a in arms}
    curve = pd.DataFrame(
        {a: [(by_arm[a] <= tau).mean() for tau in taus] for a in arms}, index=pd.Index(taus)
    )
    curve.index.name = "tau"
    rng = np.random.default_rng(seed)
    workloads = list(dict.fromkeys(ratios["workload"]))
    cells = {
        (w, a): g[time].to_numpy(dtype=float) for (w, a), g in times.groupby(["workload", "arm"])
    }
    draws = {a: [] for a in arms}
    for _ in range(bootstrap):
        t = np.array(
            [
                [
                    median_time(rng.choice(cells[w, a], size=cells[w, a].size))
                    if (w, a) in cells
                    else math.inf
                    for a in arms
                ]
                for w in workloads
            ]
        )
        best = t.min(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(np.isfinite(best) & np.isfinite(t), t / best, math.inf)
        for j, a in enumerate(arms):
            draws[a].append(profile_score(ratio[:, j], tau_max))
    scores = pd.DataFrame(
        {
            "arm": arms,
            "score": [profile_score(by_arm[a], tau_max) for a in arms],
            "low": [np.quantile(draws[a], 0.025) if bootstrap else math.nan for a in arms],
            "high": [np.quantile(draws[a], 0.975) if bootstrap else math.nan for a in arms],
            "reached": [int(np.isfinite(by_arm[a]).sum()) for a in arms],
            "workloads": [len(by_arm[a]) for a in arms],
        }
    )
    scores = scores.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return curve, scores


def expected_best(values: Sequence[float], k: int) -> float:
    """The expected best of ``k`` draws with replacement from ``values`` (Sivaprasad et al.):
    Σ_v v (F(v)^k − F(v⁻)^k) over the distinct values v, F the empirical CDF."""
    x = np.sort(np.asarray(values, dtype=float))
    distinct = np.unique(x)
    below = np.searchsorted(x, distinct, side="left") / x.size  # F(v-)
    upto = np.searchsorted(x, distinct, side="right") / x.size  # F(v)
    return float(np.sum(distinct * (upto**k - below**k)))


def tunability(tune: pd.DataFrame, metric: str = "val/accuracy") -> tuple[pd.DataFrame, ...]:
    """How much tuning an arm needs on each workload (Sivaprasad et al. 2020).

    ``tune``: the tuning runs, columns ``workload, arm, setting`` (or ``optimizer.lr``),
    ``outcome`` and ``metric`` (higher is better). A setting's outcome is its mean over the
    tuning seeds; a run that did not complete counts as 0. A draw is one setting picked at
    random from the arm's tuned settings (with a grid, random search over the grid's points).

    Returns ``(curves, summary, relative)``: ``curves`` one row per workload, arm and k = 1..K
    with ``expected_best`` (:func:`expected_best`); ``summary`` per workload and arm:
    ``one_shot`` (k = 1), ``peak`` (k = K) and ``early_weighted`` (weights K − k + 1, so the
    first draws count most); ``relative`` per arm and k: the mean over workloads of
    expected_best / the best arm's peak on that workload.
    """
    frame = tune.copy()
    setting = "setting" if "setting" in frame.columns else "optimizer.lr"
    frame["_value"] = frame[metric].astype(float).where(frame["outcome"] == "completed", 0.0)
    frame["_value"] = frame["_value"].fillna(0.0)
    means = frame.groupby(["workload", "arm", setting], sort=False)["_value"].mean()
    curves, summary = [], []
    for (workload, arm), values in means.groupby(level=[0, 1], sort=False):
        values = values.to_numpy()
        ks = np.arange(1, values.size + 1)
        best = [expected_best(values, int(k)) for k in ks]
        curves += [
            {"workload": workload, "arm": arm, "k": int(k), "expected_best": b}
            for k, b in zip(ks, best, strict=True)
        ]
        weights = (values.size - ks + 1) / np.sum(ks)
        summary.append(
            {
                "workload": workload,
                "arm": arm,
                "one_shot": best[0],
                "peak": best[-1],
                "early_weighted": float(np.sum(weights * np.asarray(best))),
                "settings": int(values.size),
            }
        )
    curves, summary = pd.DataFrame(curves), pd.DataFrame(summary)
    peak = summary.groupby("workload")["peak"].max()
    rel = curves.assign(relative=curves["expected_best"] / curves["workload"].map(peak))
    relative = rel.groupby(["arm", "k"], sort=False)["relative"].mean().reset_index()
    return curves, summary, relative


def wins_ties_losses(
    confirm: pd.DataFrame, metric: str = "val/accuracy", seed: str = "seed"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs of arms across workloads: ``confirm`` has ``workload, arm, seed, outcome`` and
    ``metric`` (higher is better). For each workload and ordered pair (a, b), the paired
    difference a − b over the seeds both completed, with its 95% CI: a win for a when the CI
    lies above 0, a loss when below, else a tie.

    Returns ``(pairs, counts)``: ``pairs`` one row per workload and pair (``mean, ci95,
    seeds, verdict``); ``counts`` one row per pair: ``wins, ties, losses``.
    """
    done = confirm[confirm["outcome"] == "completed"]
    arms = list(dict.fromkeys(confirm["arm"]))
    rows = []
    for workload, group in done.groupby("workload", sort=False):
        values = group.pivot_table(index=seed, columns="arm", values=metric)
        for a in arms:
            for b in arms:
                if a == b or a not in values or b not in values:
                    continue
                diff = (values[a] - values[b]).dropna()
                mean, _, half = mean_std_ci(diff.to_numpy())
                verdict = "tie"
                if half == half and mean - half > 0:
                    verdict = "win"
                elif half == half and mean + half < 0:
                    verdict = "loss"
                rows.append(
                    {"workload": workload, "a": a, "b": b, "mean": mean, "ci95": half}
                    | {"seeds": len(diff), "verdict": verdict}
                )
    pairs = pd.DataFrame(rows, columns=["workload", "a", "b", "mean", "ci95", "seeds", "verdict"])
    counts = (
        pairs.groupby(["a", "b"], sort=False)["verdict"]
        .value_counts()
        .unstack(fill_value=0)
        .reindex(columns=["win", "tie", "loss"], fill_value=0)
        .rename(columns={"win": "wins", "tie": "ties", "loss": "losses"})
        .reset_index()
    )
    return pairs, counts
