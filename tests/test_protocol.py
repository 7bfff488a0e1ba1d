"""The tune-then-confirm protocol: its pure parts against hand computations, then real sweeps
(real Hydra, real subprocesses, a real SQLite store) read back from the store."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import cli_env, run_cli

from bpexp import protocol as proto
from bpexp.errors import ConfigError

SEARCH = {"optimizer": {"lr": {"low": 0.01, "high": 10.0, "points": 4}}}


def settings(**changes) -> dict:
    return {"search": SEARCH, "tune_seeds": [0, 1], "confirm_seeds": [5, 6, 7]} | changes


# ------------------------------------------------------------------------------- settings


def test_log_grid_is_rounded_geometric_and_sets_the_budget():
    p = proto.parse(settings())
    assert p.keys == ("optimizer.lr",) and p.budget == 4
    assert p.search[0].values == (0.01, 0.1, 1.0, 10.0)
    main = proto.parse(
        settings(search={"optimizer": {"lr": {"low": 0.00316, "high": 31.6, "points": 15}}})
    )
    values = np.array(main.search[0].values)
    assert len(values) == 15 and values[0] == 0.00316 and values[-1] == 31.6
    assert (values[1:] / values[:-1]).max() <= 2.0  # neighbours at most x2 apart
    two = proto.parse(
        settings(search={"optimizer": {"lr": {"values": [0.1, 1]}, "beta": {"values": [0.5, 0.9]}}})
    )
    assert proto.grid(two) == [
        {"optimizer.lr": 0.1, "optimizer.beta": 0.5},
        {"optimizer.lr": 0.1, "optimizer.beta": 0.9},
        {"optimizer.lr": 1.0, "optimizer.beta": 0.5},
        {"optimizer.lr": 1.0, "optimizer.beta": 0.9},
    ]


def test_direction_follows_the_yardstick():
    assert proto.parse(settings()).direction == "maximize"
    assert proto.parse(settings(yardstick="train/loss")).direction == "minimize"


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"search": {}}, "hydra.sweeper.protocol.search"),
        ({"search": {"optimizer": {"lr": {"values": []}}}}, "search.optimizer.lr.values"),
        ({"search": {"optimizer": {"lr": {"low": 1.0, "high": 0.1, "points": 3}}}}, ".low"),
        ({"sampler": "tpe", "budget": 0}, "hydra.sweeper.protocol.budget=0"),
        ({"budget": 3}, "hydra.sweeper.protocol.budget=3"),
        ({"confirm_seeds": [1, 2]}, "share seeds [1]"),
        ({"tune_seeds": []}, "tune_seeds=[]"),
        ({"yardstick": "val/f1"}, "yardstick='val/f1'"),
        ({"sampler": "random"}, "sampler='random'"),
        ({"direction": "up"}, "direction='up'"),
    ],
)
def test_bad_settings_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=None) as err:
        proto.parse(settings(**changes))
    assert key in str(err.value)


# ------------------------------------------------------------------------ choice and answer


def test_choose_counts_a_divergence_as_worst_and_breaks_ties_by_val_loss():
    p = proto.parse(settings())
    tuned = pd.DataFrame(
        [
            # arm a: setting 1 has the best seed (0.99) but diverged on the other: worst.
            ("a", 0, 0, 0.90, 0.2, "completed"),
            ("a", 0, 1, 0.92, 0.2, "completed"),
            ("a", 1, 0, 0.99, 0.1, "completed"),
            ("a", 1, 1, None, None, "diverged"),
            # arm b: settings 0 and 1 tie on accuracy; setting 1 has the lower val/loss.
            ("b", 0, 0, 0.80, 0.5, "completed"),
            ("b", 0, 1, 0.90, 0.5, "completed"),
            ("b", 1, 0, 0.85, 0.3, "completed"),
            ("b", 1, 1, 0.85, 0.3, "completed"),
        ],
        columns=["arm", "setting", "seed", "val/accuracy", "val/loss", "outcome"],
    )
    tuned["score"] = [
        proto.score(p, row["outcome"], row["val/accuracy"]) for row in tuned.to_dict("records")
    ]
    assert tuned.loc[3, "score"] == -math.inf
    chosen = proto.choose(p, tuned).set_index("arm")
    assert chosen.loc["a", "setting"] == 0 and chosen.loc["a", "score"] == pytest.approx(0.91)
    assert chosen.loc["b", "setting"] == 1
    assert list(chosen.index) == ["a", "b"]  # arms keep their order


def test_time_to_target_on_made_up_histories():
    epochs = [0, 1, 2, 3, 4]
    assert proto.time_to_target(epochs, [0.1, 0.5, 0.95, 0.9, 0.97], 0.95, "maximize") == 2
    assert proto.time_to_target(epochs, [0.1, 0.5, 0.9, 0.94, 0.949], 0.95, "maximize") == math.inf
    assert proto.time_to_target(epochs, [2.0, 1.0, 0.4, 0.3, 0.2], 0.35, "minimize") == 3
    assert proto.time_to_target(epochs, [2.0, np.nan, np.nan, 5, 4], 0.35, "minimize") == math.inf
    # Median and IQR with misses counting as infinite: no interpolation between inf values.
    assert proto.median_iqr([3, 1, math.inf, 2, math.inf]) == (3.0, 2.0, math.inf)
    assert proto.median_iqr([4, 2, 6, 8]) == (5.0, 2.0, 6.0)
    assert proto.median_iqr([2, math.inf]) == (math.inf, 2.0, math.inf)


def test_final_table_is_paired_by_seed_and_ranked_best_first():
    p = proto.parse(settings(target=0.9))
    rows = []
    values = {"a": [0.90, 0.92, 0.94], "b": [0.95, 0.96, 0.99]}
    for arm, vals in values.items():
        for seed, v in zip([5, 6, 7], vals, strict=True):
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "outcome": "completed",
                    "value": v,
                    "epochs_to_target": {5: 3.0, 6: 5.0, 7: math.inf}[seed],
                    "steps_to_target": {5: 300.0, 6: 500.0, 7: math.inf}[seed],
                    "optimizer.lr": 0.1,
                    "effective_step": 1.0,
                }
            )
    rows.append(rows[0] | {"seed": 8, "outcome": "diverged", "value": np.nan})
    table = proto.final_table(p, pd.DataFrame(rows))
    assert list(table["arm"]) == ["b", "a"]
    # Independent: the t interval of the per-seed differences a - b.
    d = np.array(values["a"]) - np.array(values["b"])
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t(0.975, 2)
    assert table.loc[1, "diff_vs_best_mean"] == pytest.approx(d.mean())
    assert table.loc[1, "diff_vs_best_ci95"] == pytest.approx(half)
    assert table.loc[0, "mean"] == pytest.approx(np.mean(values["b"]))
    assert table.loc[1, "diverged"] == 1 and table.loc[1, "seeds"] == 3
    assert table.loc[0, "epochs_to_target_median"] == 5.0
    assert table.loc[0, "epochs_to_target_q3"] == math.inf
    assert table.loc[0, "steps_to_target_q1"] == 300.0
    assert table.loc[0, "reached"] == 2


def test_effective_step_lines_arms_up():
    assert proto.arm_effective_step(
        {"optimizer.lr": 0.1}, {"optimizer.name": "momentum", "optimizer.beta": 0.9}
    ) == pytest.approx(1.0)
    assert proto.arm_effective_step(
        {"optimizer.lr": 0.1}, {"optimizer.name": "nesterov", "optimizer.beta": 0.8}
    ) == pytest.approx(0.5)
    ema = {"optimizer.name": "momentum", "optimizer.form": "ema", "optimizer.beta": 0.9}
    assert proto.arm_effective_step({"optimizer.lr": 0.1}, ema) == 0.1
    assert proto.arm_effective_step({"optimizer.lr": 0.3}, {"optimizer.name": "sgd"}) == 0.3


# ----------------------------------------------------------------------------- real sweeps

TINY = [
    "sweep=optimizers",
    "optimizer.lr=0.1,1.0",
    "hydra.sweeper.protocol.confirm_seeds=[5,6]",
    "hydra.sweeper.protocol.target=0.5",
    "trainer.epochs=2",
    "tracking.plots=false",
]


def store_runs(uri: str) -> pd.DataFrame:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    rows = []
    for run in client.search_runs(["1"], max_results=1000):
        tags, params = run.data.tags, run.data.params
        rows.append(
            {
                "run_id": run.info.run_id,
                "kind": tags.get("bpexp.kind", "run"),
                "stage": tags.get("bpexp.stage"),
                "optimizer": params.get("optimizer.name"),
                "lr": float(params.get("optimizer.lr", "nan")),
                "seed": int(params.get("seed", -1)),
                "outcome": tags.get("outcome"),
                "status": run.info.status,
                "val/accuracy": run.data.metrics.get("val/accuracy"),
                "val/loss": run.data.metrics.get("val/loss"),
            }
        )
    return pd.DataFrame(rows)


def check_protocol_store(uri: str) -> pd.DataFrame:
    """What a tiny protocol must leave in the store, computed from the store alone."""
    runs = store_runs(uri)
    children = runs[runs["kind"] == "run"]
    tune, confirm = children[children["stage"] == "tune"], children[children["stage"] == "confirm"]
    assert len(tune) + len(confirm) == len(children)
    # The same budget per arm: 2 lrs x 2 tuning seeds each.
    assert tune.groupby("optimizer").size().to_dict() == {"sgd": 4, "momentum": 4, "nesterov": 4}
    assert set(tune["seed"]) == {0, 1}
    # Confirm seeds: fresh, and the same for every arm.
    assert confirm.groupby("optimizer")["seed"].apply(sorted).to_dict() == {
        "sgd": [5, 6],
        "momentum": [5, 6],
        "nesterov": [5, 6],
    }
    # Each arm's confirm lr is its best tuned lr: recomputed here by hand from the store.
    for arm, rows in tune.groupby("optimizer"):
        score = rows["val/accuracy"].where(rows["outcome"] == "completed", -np.inf)
        means = score.groupby(rows["lr"]).mean()
        losses = rows.groupby("lr")["val/loss"].mean()
        best = sorted(means.index, key=lambda lr: (-means[lr], losses[lr]))[0]
        assert set(confirm.loc[confirm["optimizer"] == arm, "lr"]) == {best}, arm
    return runs


@pytest.mark.slow
def test_tiny_protocol_end_to_end(tmp_path, store_uri):
    out = run_cli([*TINY, f"tracking.uri={store_uri}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "protocol: tune stage, 12 runs" in out.stdout
    assert "protocol: confirm stage, 6 runs" in out.stdout
    runs = check_protocol_store(store_uri)
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    table = pd.read_csv(sweep_dir / "protocol" / "final_table.csv")
    assert sorted(table["arm"]) == ["momentum", "nesterov", "sgd"]
    assert (table["yardstick"] == "val/accuracy").all()
    # The final table's means are the confirm runs' final val/accuracy, recomputed here.
    confirm = runs[runs["stage"] == "confirm"]
    for arm, mean in zip(table["arm"], table["mean"], strict=True):
        assert mean == pytest.approx(
            confirm.loc[confirm["optimizer"] == arm, "val/accuracy"].mean()
        )
    assert table["mean"].is_monotonic_decreasing
    # The parent keeps the protocol, the chosen settings and the table.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    parent = client.get_run(runs.loc[runs["kind"] == "sweep", "run_id"].item())
    assert parent.data.params["protocol.yardstick"] == "val/accuracy"
    assert parent.data.params["protocol.confirm_seeds"] == "[5, 6]"
    assert parent.data.tags["bpexp.protocol.best"] == table.loc[0, "arm"]
    for arm in ("sgd", "momentum", "nesterov"):
        lr = float(parent.data.params[f"chosen.{arm}.optimizer.lr"])
        assert set(confirm.loc[confirm["optimizer"] == arm, "lr"]) == {lr}
    names = {f.path for f in client.list_artifacts(parent.info.run_id, "protocol")}
    assert {"protocol/final_table.csv", "protocol/tune.csv", "protocol/chosen.csv"} <= names
    index = (sweep_dir / "report" / "index.md").read_text()
    assert "ranked by final val/accuracy" in index and "**Answer:**" in index
    assert "steps to val/accuracy ≥ 0.5" in index


@pytest.mark.slow
def test_tpe_gives_every_arm_the_same_number_of_trials(tmp_path, store_uri):
    tpe = [a for a in TINY if not a.startswith("optimizer.lr=")]
    tpe += ["hydra.sweeper.protocol.sampler=tpe", "hydra.sweeper.protocol.budget=3"]
    out = run_cli([*tpe, f"tracking.uri={store_uri}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = store_runs(store_uri)
    tune = runs[(runs["kind"] == "run") & (runs["stage"] == "tune")]
    # 3 trials x 2 tuning seeds per arm, each trial's lr inside the searched range.
    assert tune.groupby("optimizer").size().to_dict() == {"sgd": 6, "momentum": 6, "nesterov": 6}
    assert tune.groupby("optimizer")["lr"].nunique().max() <= 3
    assert tune["lr"].between(0.00316, 31.6).all()
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    chosen = pd.read_csv(sweep_dir / "protocol" / "chosen.csv").set_index("arm")
    confirm = runs[runs["stage"] == "confirm"]
    for arm, lr in chosen["optimizer.lr"].items():
        assert set(confirm.loc[confirm["optimizer"] == arm, "lr"]) == {lr}
    # Seeded: the same command draws the same trials (and so skips every job).
    again = run_cli([*tpe, f"tracking.uri={store_uri}"], tmp_path)
    assert again.returncode == 0 and "already has this exact config" in again.stdout
    assert "(24 jobs: 24 skipped)" in again.stdout  # 3 x 3 x 2 tune + 3 x 2 confirm


@pytest.mark.slow
def test_protocol_runs_under_the_joblib_launcher(tmp_path, store_uri):
    out = run_cli([*TINY, f"tracking.uri={store_uri}", "hydra/launcher=joblib"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    check_protocol_store(store_uri)


@pytest.mark.slow
def test_interrupted_protocol_resumes_without_rerunning_finished_jobs(tmp_path, store_uri):
    args = [*TINY, "trainer.epochs=25", f"tracking.uri={store_uri}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpexp", *args],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        results = next(tmp_path.glob("multirun/*/*/results"), None)
        if results is not None and len(list(results.glob("*.json"))) >= 4:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130
    first = {
        json.loads(p.read_text())["overrides"]: json.loads(p.read_text())
        for p in results.glob("*.json")
    }
    finished = {o for o, row in first.items() if row["outcome"] == "completed"}
    assert len(finished) >= 4

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (second_dir,) = [d for d in tmp_path.glob("multirun/*/*") if d != results.parent]
    second = pd.read_csv(second_dir / "summary.csv")
    skipped = set(second.loc[second["outcome"] == "skipped", "overrides"])
    assert finished <= skipped  # every job finished before Ctrl-C was skipped, not rerun
    runs = check_protocol_store(store_uri)
    done = runs[(runs["kind"] == "run") & (runs["outcome"] == "completed")]
    assert not done.duplicated(["optimizer", "lr", "seed"]).any()  # one completed run each


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["+hydra.sweeper.protocol.search.optimizer.lrr.values=[0.1]"], "optimizer.lrr"),
        (["+hydra.sweeper.protocol.search.network.width.values=[1]"], "network.width"),
        (["hydra.sweeper.protocol.sampler=tpe", "hydra.sweeper.protocol.budget=0"], "budget=0"),
        (["hydra.sweeper.protocol.tune_seeds=[5]"], "share seeds [5]"),
        (["hydra.sweeper.protocol.yardstick=val/f1"], "yardstick='val/f1'"),
        (["cost=quadratic,cross_entropy", "hydra.sweeper.protocol.yardstick=val/loss"], "costs"),
        (["seed=0,1"], "tune_seeds"),
    ],
)
def test_bad_protocol_input_stops_before_any_run(tmp_path, extra, message):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_cli([*TINY, f"tracking.uri={uri}", *extra], tmp_path)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert message in out.stderr
    assert "epoch 0/" not in out.stdout
    if Path(tmp_path / "mlflow.db").exists():
        from mlflow import MlflowClient

        assert MlflowClient(tracking_uri=uri).search_runs(["0", "1"]) == []


def test_the_protocol_round_trips_through_its_one_form():
    settings = {
        "search": {"optimizer": {"lr": {"low": 0.01, "high": 10, "points": 4}}},
        "tune_seeds": [0, 1],
        "confirm_seeds": [100, 101],
        "yardstick": "val/loss",
        "target": 0.2,
    }
    protocol = proto.parse(settings)
    data = json.loads(json.dumps(protocol.to_dict()))  # as protocol.json holds it
    assert proto.Protocol.from_dict(data) == protocol
    assert protocol.direction == "minimize" and protocol.keys == ("optimizer.lr",)
    params = protocol.params()
    assert params["protocol.search.optimizer.lr"] == "4 log-spaced from 0.01 to 10"
    assert params["protocol.target"] == "0.2" and params["protocol.confirm_seeds"] == "[100, 101]"
