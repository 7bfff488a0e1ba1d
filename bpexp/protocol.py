"""The tune-then-confirm protocol: the same budget for every arm, fresh seeds, one yardstick.

A sweep with ``hydra.sweeper.protocol`` set runs in two stages through Hydra's launcher (the
sweeper is ``hydra_plugins/bpexp_sweeper``; the method is in ``docs/protocol.md``):

1. **tune**: every arm (a value of the sweep's arm keys, e.g. ``optimizer: sgd,momentum``) tries
   the same number of settings of its search keys (``optimizer.lr``, ``optimizer.beta``) on
   the tuning seeds;
2. **confirm**: each arm's best setting, by the mean yardstick over the tuning seeds (a run
   that diverged or failed counts as worst), runs again on the confirm seeds, which tuning
   never saw and which every arm shares (paired comparison).

This module is what needs no Hydra: the settings and their checks (:func:`parse`), the search
grid, the choice of each arm's setting (:func:`choose`), time to target and the final table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np
import pandas as pd

from bpexp.errors import ConfigError, bad_value
from bpexp.optimizer import effective_step
from bpexp.statistics import mean_std_ci

KEY = "hydra.sweeper.protocol"
SAMPLERS = ("grid", "tpe")
DIRECTIONS = ("maximize", "minimize")
# Per-epoch metrics every run logs: a yardstick must have a value at each epoch (time to target).
YARDSTICKS = ("val/accuracy", "val/loss", "train/accuracy", "train/loss")
TIE_BREAK = "val/loss"
# A search key that is not a config key: the step per unit gradient in the long run
# (bpexp.optimizer.effective_step). Searching it gives every arm the same grid of effective
# steps; each arm's lr follows from its rule: step (1 - beta) for classical momentum and
# Nesterov, the step itself otherwise.
EFFECTIVE_STEP = "effective_step"
SPACE_KEYS = {"low", "high", "points", "values", "log"}


@dataclass(frozen=True)
class Space:
    """The values a search key may take: an explicit list, or ``points`` log-spaced values from
    ``low`` to ``high`` (the sampler ``tpe`` draws from the range instead)."""

    key: str
    values: tuple[float, ...]
    low: float | None = None
    high: float | None = None
    log: bool = True

    def describe(self) -> str:
        if self.low is None:
            return ", ".join(f"{v:g}" for v in self.values)
        scale = "log" if self.log else "linear"
        return f"{len(self.values)} {scale}-spaced from {self.low:g} to {self.high:g}"


@dataclass(frozen=True)
class Protocol:
    search: tuple[Space, ...]
    sampler: str = "grid"
    budget: int = 1  # settings tried per arm, each on every tuning seed
    tune_seeds: tuple[int, ...] = (0, 1)
    confirm_seeds: tuple[int, ...] = tuple(range(100, 110))
    yardstick: str = "val/accuracy"
    direction: str = "maximize"
    target: float | None = None
    sampler_seed: int = 0
    keys: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        """The protocol as plain JSON values; :meth:`from_dict` reads it back (protocol.json)."""
        return {
            "search": [
                {"key": s.key, "values": list(s.values), "low": s.low, "high": s.high, "log": s.log}
                for s in self.search
            ],
            "sampler": self.sampler,
            "budget": self.budget,
            "tune_seeds": list(self.tune_seeds),
            "confirm_seeds": list(self.confirm_seeds),
            "yardstick": self.yardstick,
            "direction": self.direction,
            "target": self.target,
            "sampler_seed": self.sampler_seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Protocol:
        search = tuple(
            Space(s["key"], tuple(float(v) for v in s["values"]), s["low"], s["high"], s["log"])
            for s in data["search"]
        )
        return cls(
            search=search,
            sampler=data["sampler"],
            budget=int(data["budget"]),
            tune_seeds=tuple(data["tune_seeds"]),
            confirm_seeds=tuple(data["confirm_seeds"]),
            yardstick=data["yardstick"],
            direction=data["direction"],
            target=data["target"],
            sampler_seed=int(data["sampler_seed"]),
            keys=tuple(s.key for s in search),
        )

    def params(self) -> dict[str, str]:
        """The protocol as ``protocol.*`` params, for reading in the MLflow UI."""
        out = {f"protocol.search.{s.key}": s.describe() for s in self.search}
        for key, value in self.to_dict().items():
            if key != "search":
                out[f"protocol.{key}"] = "null" if value is None else str(value)
        return out

    def signed(self, value: float) -> float:
        """The yardstick as "higher is better"; NaN (no value) becomes -inf, the worst."""
        if value is None or not np.isfinite(value):
            return -math.inf
        return float(value) if self.direction == "maximize" else -float(value)


def _round(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits: grid points that read well in run names."""
    return float(f"{value:.{digits}g}")


def _spaces(search: Mapping, prefix: str = "") -> list[Space]:
    """Flatten ``{optimizer: {lr: {low, high, points}}}`` into spaces keyed ``optimizer.lr``."""
    spaces = []
    for name, node in search.items():
        key = f"{prefix}{name}"
        where = f"{KEY}.search.{key}"
        if not isinstance(node, Mapping):
            raise bad_value(where, node, "{low, high, points} or {values: [...]}")
        if not set(node) & SPACE_KEYS:
            spaces += _spaces(node, key + ".")
            continue
        unknown = set(node) - SPACE_KEYS
        if unknown:
            raise bad_value(f"{where}.{sorted(unknown)[0]}", "given", sorted(SPACE_KEYS))
        log = bool(node.get("log", True))
        if node.get("values") is not None:
            values = [float(v) for v in node["values"]]
            if not values:
                raise bad_value(f"{where}.values", [], "a non-empty list")
            spaces.append(Space(key, tuple(values), log=log))
            continue
        low, high, points = node.get("low"), node.get("high"), node.get("points")
        if low is None or high is None or points is None:
            raise ConfigError(f"{where} needs low, high and points (or values: [...])")
        if not points >= 1:
            raise bad_value(f"{where}.points", points, "an integer >= 1")
        if not low <= high or (log and not low > 0):
            raise bad_value(f"{where}.low", low, f"0 < low <= high={high} (log-spaced)")
        grid = np.geomspace(low, high, int(points)) if log else np.linspace(low, high, points)
        spaces.append(Space(key, tuple(_round(v) for v in grid), float(low), float(high), log))
    return spaces


def parse(settings: Mapping | None) -> Protocol | None:
    """The protocol of ``hydra.sweeper.protocol`` (a plain mapping), checked; None if unset.

    Raises ConfigError naming the key for: an empty search space, a budget < 1, confirm seeds
    that overlap the tuning seeds, an unknown yardstick, sampler or direction.
    """
    if settings is None:
        return None
    spaces = _spaces(settings.get("search") or {})
    if not spaces:
        raise ConfigError(
            f"{KEY}.search is empty: give each search key a space, e.g. "
            "search: {optimizer: {lr: {low: 0.01, high: 10, points: 10}}}"
        )
    sampler = settings.get("sampler", "grid")
    if sampler not in SAMPLERS:
        raise bad_value(f"{KEY}.sampler", sampler, SAMPLERS)
    grid_size = int(np.prod([len(s.values) for s in spaces]))
    budget = settings.get("budget")
    if budget is None:
        budget = grid_size
    if not budget >= 1:
        raise bad_value(f"{KEY}.budget", budget, "an integer >= 1 (settings tried per arm)")
    if sampler == "grid" and budget != grid_size:
        raise bad_value(
            f"{KEY}.budget",
            budget,
            f"null or {grid_size}, the size of the grid (with sampler=grid the points of "
            "each search key set the budget)",
        )
    tune = tuple(int(s) for s in settings.get("tune_seeds") or ())
    confirm = tuple(int(s) for s in settings.get("confirm_seeds") or ())
    for name, seeds in (("tune_seeds", tune), ("confirm_seeds", confirm)):
        if not seeds:
            raise bad_value(f"{KEY}.{name}", list(seeds), "a non-empty list of seeds")
        if len(set(seeds)) != len(seeds):
            raise bad_value(f"{KEY}.{name}", list(seeds), "distinct seeds")
    shared = sorted(set(tune) & set(confirm))
    if shared:
        raise ConfigError(
            f"{KEY}.confirm_seeds={list(confirm)} share seeds {shared} with "
            f"{KEY}.tune_seeds={list(tune)}: confirm seeds must be fresh (the seeds that "
            "choose a setting must not be the seeds that report it)"
        )
    yardstick = settings.get("yardstick", "val/accuracy")
    if yardstick not in YARDSTICKS:
        raise bad_value(f"{KEY}.yardstick", yardstick, YARDSTICKS)
    direction = settings.get("direction") or (
        "maximize" if yardstick.endswith("accuracy") else "minimize"
    )
    if direction not in DIRECTIONS:
        raise bad_value(f"{KEY}.direction", direction, DIRECTIONS)
    target = settings.get("target")
    return Protocol(
        search=tuple(spaces),
        sampler=sampler,
        budget=int(budget),
        tune_seeds=tune,
        confirm_seeds=confirm,
        yardstick=yardstick,
        direction=direction,
        target=None if target is None else float(target),
        sampler_seed=int(settings.get("sampler_seed", 0)),
        keys=tuple(s.key for s in spaces),
    )


def with_values(protocol: Protocol, key: str, overrides: Sequence[str]) -> Protocol:
    """``protocol`` with the search space of ``key`` replaced by the values of ``overrides``
    (``["optimizer.lr=0.1", "optimizer.lr=0.3"]``, a sweep of a search key on the command
    line); with the grid sampler the budget follows."""
    try:
        values = tuple(float(o.split("=", 1)[1]) for o in overrides)
    except ValueError:
        raise bad_value(key, ",".join(o.split("=", 1)[1] for o in overrides), "numbers") from None
    spaces = tuple(Space(key, values) if s.key == key else s for s in protocol.search)
    budget = int(np.prod([len(s.values) for s in spaces]))
    return replace(
        protocol, search=spaces, budget=budget if protocol.sampler == "grid" else protocol.budget
    )


def grid(protocol: Protocol) -> list[dict[str, float]]:
    """Every setting of the grid, in order: the product of the search keys' values."""
    keys = [s.key for s in protocol.search]
    points = product(*(s.values for s in protocol.search))
    return [dict(zip(keys, values, strict=True)) for values in points]


def score(protocol: Protocol, outcome: str, value: float | None) -> float:
    """One run's yardstick, "higher is better": a run that did not complete counts as worst."""
    if outcome != "completed":
        return -math.inf
    return protocol.signed(value)


def choose(protocol: Protocol, tuned: pd.DataFrame) -> pd.DataFrame:
    """Each arm's best setting: the highest mean signed yardstick over the tuning seeds (a run
    that diverged or failed counts as worst); ties go to the lower mean ``val/loss`` when the
    yardstick is not a loss, then to the earlier setting.

    ``tuned``: one row per tuning run, columns ``arm, setting (index), score`` and, optionally,
    ``val/loss``. Returns one row per arm: ``arm, setting, score`` (the mean), ``seeds``.
    """
    frame = tuned.copy()
    tie = TIE_BREAK if TIE_BREAK in frame.columns and protocol.yardstick != TIE_BREAK else None
    frame["_tie"] = -frame[tie].astype(float).fillna(math.inf) if tie else 0.0
    frame.loc[~np.isfinite(frame["score"]), "_tie"] = -math.inf
    means = frame.groupby(["arm", "setting"], sort=False).agg(
        score=("score", "mean"), tie=("_tie", "mean"), seeds=("score", "size")
    )
    # Accuracies are fractions k/n: equal means must tie, not differ in the last bit.
    means["score"] = means["score"].round(12)
    means = means.reset_index().sort_values(
        ["arm", "score", "tie", "setting"], ascending=[True, False, False, True], kind="stable"
    )
    best = means.groupby("arm", sort=False).head(1)
    order = {arm: i for i, arm in enumerate(dict.fromkeys(tuned["arm"]))}
    return best.sort_values("arm", key=lambda s: s.map(order)).reset_index(drop=True)[
        ["arm", "setting", "score", "seeds"]
    ]


def time_to_target(
    epochs: Sequence[int], values: Sequence[float], target: float, direction: str
) -> float:
    """The first epoch at which ``values`` reaches ``target`` (>= when maximizing, <= when
    minimizing); ``inf`` when it never does (a miss counts as infinite)."""
    v = np.asarray(values, dtype=float)
    e = np.asarray(epochs, dtype=float)
    hit = v >= target if direction == "maximize" else v <= target
    hit &= np.isfinite(v)
    return float(e[hit].min()) if hit.any() else math.inf


def median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    """Median (the mean of the middle two for an even count: inf if either missed) and the
    25th and 75th percentiles without interpolation, so that misses (inf) stay inf."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    q = np.quantile(x, [0.25, 0.75], method="inverted_cdf")
    return float(np.median(x)), float(q[0]), float(q[1])


def final_table(protocol: Protocol, confirmed: pd.DataFrame) -> pd.DataFrame:
    """The answer: one row per arm, best first, over the confirm runs.

    ``confirmed``: one row per confirm run with ``arm, seed, outcome, value`` (the final
    yardstick), ``epochs_to_target, steps_to_target`` (inf for a miss) and the setting columns.

    Columns: ``arm``, the setting, ``effective_step``, ``seeds``, ``mean, std, ci95`` of the
    yardstick over the seeds that completed, ``diff_vs_best_mean/_ci95`` (paired by seed, over
    the seeds both arms completed), ``paired_seeds``, the median and IQR of epochs and steps
    to target (a miss counts as infinite), ``reached`` (seeds that got there), ``diverged`` and
    ``failed``.
    """
    rows, per_seed = [], {}
    for arm, group in confirmed.groupby("arm", sort=False):
        done = group[group["outcome"] == "completed"]
        values = done.set_index("seed")["value"].astype(float)
        values = values[np.isfinite(values)]
        per_seed[arm] = values
        mean, std, half = mean_std_ci(values.to_numpy())
        row = {"arm": arm}
        shown = [*protocol.keys, *(["optimizer.lr"] if EFFECTIVE_STEP in protocol.keys else [])]
        row |= {k: group.iloc[0][k] for k in shown if k in group.columns}
        row["effective_step"] = group.iloc[0].get("effective_step", math.nan)
        row |= {"seeds": len(values), "mean": mean, "std": std, "ci95": half}
        for unit in ("epochs", "steps"):
            med, q1, q3 = median_iqr(group[f"{unit}_to_target"])
            row |= {f"{unit}_to_target_median": med, f"{unit}_to_target_q1": q1}
            row[f"{unit}_to_target_q3"] = q3
        row["reached"] = int(np.isfinite(group["epochs_to_target"].astype(float)).sum())
        row["diverged"] = int((group["outcome"] == "diverged").sum())
        row["failed"] = int((~group["outcome"].isin(["completed", "diverged"])).sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["_rank"] = [protocol.signed(m) for m in table["mean"]]
    table = table.sort_values("_rank", ascending=False, kind="stable").drop(columns="_rank")
    table = table.reset_index(drop=True)
    best = per_seed[table.loc[0, "arm"]]
    diffs = []
    for arm in table["arm"]:
        shared = per_seed[arm].index.intersection(best.index)
        mean, _, half = mean_std_ci((per_seed[arm][shared] - best[shared]).to_numpy())
        diffs.append((mean, half, len(shared)))
    table["diff_vs_best_mean"] = [d[0] for d in diffs]
    table["diff_vs_best_ci95"] = [d[1] for d in diffs]
    table["paired_seeds"] = [d[2] for d in diffs]
    return table


def lr_for_step(step: float, values: Mapping[str, object]) -> float:
    """The ``optimizer.lr`` that gives an arm (``optimizer.*`` values) the effective step
    ``step``, to 3 significant digits (the grid's own precision)."""
    per_unit = effective_step(
        str(values["optimizer.name"]),
        str(values.get("optimizer.form", "classical")),
        1.0,
        float(values.get("optimizer.beta", 0.0)),
    )
    return _round(step / per_unit)


def setting_overrides(
    protocol: Protocol, setting: Mapping[str, float], arm_config: Mapping[str, object]
) -> list[str]:
    """The overrides that put an arm (``optimizer.*`` values) at ``setting``: each search key
    as itself, but :data:`EFFECTIVE_STEP` as the arm's ``optimizer.lr``."""
    out = []
    for key in protocol.keys:
        if key == EFFECTIVE_STEP:
            lr = lr_for_step(setting[key], {**arm_config, **setting})
            out.append(f"optimizer.lr={lr:g}")
        else:
            out.append(f"{key}={setting[key]:g}")
    return out


def arm_effective_step(setting: Mapping[str, object], arm_config: Mapping[str, object]) -> float:
    """The long-run step per unit gradient of an arm at a setting (see
    :func:`bpexp.optimizer.effective_step`); ``arm_config`` holds ``optimizer.*`` values."""
    if EFFECTIVE_STEP in setting:
        return float(setting[EFFECTIVE_STEP])
    values = {**arm_config, **setting}
    return effective_step(
        str(values["optimizer.name"]),
        str(values.get("optimizer.form", "classical")),
        float(values["optimizer.lr"]),
        float(values.get("optimizer.beta", 0.0)),
    )
