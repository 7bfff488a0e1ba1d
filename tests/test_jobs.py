"""The sweeper decides each job's arm and stage once, and every output says the same.

The unit tests pin the arm labels and the JobResult round trip; the end-to-end test runs a new
user's 2 x 2 factorial protocol (``optimizer.beta: 0.5,0.9`` x ``trainer.batch_size: 10,100``,
lr searched) and checks the report, the parent run, the runs' tags and ``compare`` against the
sweeper's own ``protocol/final_table.csv``.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import bpexp.analysis as ba
from bpexp import jobs
from tests.conftest import run_cli


def test_one_group_key_is_named_by_its_option_and_other_keys_by_name():
    assert jobs.arm_label(["optimizer=sgd"]) == "sgd"
    assert jobs.arm_label(["cost=cross_entropy"]) == "cross_entropy"
    assert jobs.arm_label(["trainer.batch_size=null"]) == "batch_size=null"
    assert (
        jobs.arm_label(["optimizer.beta=0.5", "trainer.batch_size=10"]) == "beta=0.5 batch_size=10"
    )
    # Two keys with one last part keep their whole names; a group among several is named.
    assert jobs.arm_label(["a.size=1", "b.size=2"]) == "a.size=1 b.size=2"
    assert jobs.arm_label(["network=deep_relu", "network.hidden=[30,30]"]) == (
        "network=deep_relu hidden=[30,30]"
    )
    assert jobs.arm_label([]) == "all"


def test_arm_overrides_pick_the_arm_keys_in_their_order():
    # In a plain grid the seed repeats an arm and lr and beta are searched within it.
    overrides = ["seed=3", "trainer.batch_size=10", "optimizer.lr=0.1", "cost=cross_entropy"]
    swept = ["cost", "seed", "trainer.batch_size", "optimizer.lr", "optimizer.beta"]
    keys = jobs.grid_arm_keys(swept)
    assert keys == ["cost", "trainer.batch_size"]
    assert jobs.arm_overrides(overrides, keys) == ["cost=cross_entropy", "trainer.batch_size=10"]


def test_mlflow_names_keep_the_label_readable():
    assert jobs.mlflow_name("beta=0.5 batch_size=10") == "beta:0.5_batch_size:10"
    assert jobs.mlflow_name("momentum/ema+bc") == "momentum-ema-bc"
    assert jobs.mlflow_name("hidden=[30, 30]") == "hidden:_30_30_"


def test_a_job_result_round_trips_through_its_file(tmp_path):
    result = jobs.JobResult(
        job=7,
        overrides="optimizer.lr=3 seed=1",
        arm="beta=0.5 batch_size=10",
        stage="confirm",
        outcome="completed",
        skipped=True,
        run_id="a" * 32,
        epochs=2,
        steps_per_epoch=130,
        metrics={"val/accuracy": 0.5, "val/loss": math.inf},
        curve=[0.1, 0.3, 0.5],
    )
    result.write(tmp_path)
    (back,) = jobs.read_results(tmp_path)
    assert back == result
    row = jobs.summary(tmp_path).iloc[0]
    assert row["outcome"] == "skipped" and row["arm"] == "beta=0.5 batch_size=10"
    assert row["stage"] == "confirm" and row["val/accuracy"] == 0.5
    jobs.write_plans(tmp_path, 5, [jobs.JobPlan("sgd", "tune"), jobs.JobPlan("adam", "tune")])
    assert jobs.read_plan(tmp_path, 6) == jobs.JobPlan("adam", "tune")
    assert jobs.read_plan(tmp_path, 9) == jobs.JobPlan()  # a job no bpexp sweeper planned


FACTORIAL = [
    "sweep=optimizers",
    "optimizer=momentum",
    "optimizer.beta=0.5,0.9",
    "trainer.batch_size=10,100",
    "optimizer.lr=0.1,3",
    "hydra.sweeper.protocol.tune_seeds=[0]",
    "hydra.sweeper.protocol.confirm_seeds=[100,101,102]",
    "trainer.epochs=2",
    "trainer.sharpness_every=0",
]
ARMS = {"beta=0.5 batch_size=10", "beta=0.5 batch_size=100", "beta=0.9 batch_size=10"}
ARMS |= {"beta=0.9 batch_size=100"}


@pytest.mark.slow
def test_a_factorial_sweep_stays_factorial_in_every_output(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_cli([*FACTORIAL, f"tracking.uri={uri}"], cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    table = pd.read_csv(sweep_dir / "protocol" / "final_table.csv")
    assert set(table["arm"]) == ARMS and (table["seeds"] == 3).all()
    chosen = table.set_index("arm")["optimizer.lr"]

    # The runs' tags: every job carries the arm and stage the sweeper planned for it.
    client = MlflowClient(tracking_uri=uri)
    children = [r for r in client.search_runs(["1"]) if r.data.tags.get("bpexp.kind") != "sweep"]
    assert len(children) == 4 * 2 + 4 * 3
    for run in children:
        params, tags = run.data.params, run.data.tags
        beta, batch = float(params["optimizer.beta"]), int(params["trainer.batch_size"])
        assert tags["bpexp.arm"] == f"beta={beta:g} batch_size={batch}"
        assert tags["bpexp.stage"] == ("confirm" if int(params["seed"]) >= 100 else "tune")
        if tags["bpexp.stage"] == "confirm":  # at the lr the sweeper chose for that arm
            assert float(params["optimizer.lr"]) == chosen[tags["bpexp.arm"]]

    # The answer, recomputed by hand from the confirm runs' final val/accuracy.
    for arm, row in table.set_index("arm").iterrows():
        values = [
            r.data.metrics["val/accuracy"]
            for r in children
            if r.data.tags["bpexp.arm"] == arm and r.data.tags["bpexp.stage"] == "confirm"
        ]
        assert row["mean"] == pytest.approx(np.mean(values), rel=1e-12)

    # The report shows the sweeper's table, arm for arm, and says 4 arms.
    page = (sweep_dir / "report" / "index.md").read_text()
    assert "protocol (docs/protocol.md): 4 arms" in page
    shown = re.findall(r"^\| (beta=\S+ batch_size=\S+) \| (\S+) \| ", page, re.M)
    assert [(a, float(lr)) for a, lr in shown] == list(
        zip(table["arm"], table["optimizer.lr"], strict=True)
    )
    report_table = pd.read_csv(sweep_dir / "report" / "final_table.csv")
    pd.testing.assert_frame_equal(report_table, table)

    # The parent run: chosen params, best tag and mean curves under the same labels.
    (parent,) = client.search_runs(["1"], "tags.`bpexp.kind` = 'sweep'")
    best = table.loc[0, "arm"]
    assert parent.data.tags["bpexp.protocol.best"] == best
    for arm in ARMS:
        name = jobs.mlflow_name(arm)
        assert float(parent.data.params[f"chosen.{name}.optimizer.lr"]) == chosen[arm]
        assert f"{name}/val/accuracy/optimizers" in parent.data.metrics
    plan = json.loads((sweep_dir / "protocol" / "protocol.json").read_text())
    assert set(plan["arms"]) == ARMS
    assert parent.data.params["protocol.yardstick"] == plan["protocol"]["yardstick"]

    # pandas: the confirm runs compared by their tagged arms give the same four means.
    runs = ba.runs(sweep="optimizers", tracking_uri=uri)
    confirm = runs[runs["stage"] == "confirm"]
    compared = ba.compare(confirm, over=["optimizer.lr"]).set_index("arm")
    assert set(compared.index) == ARMS
    for arm, row in table.set_index("arm").iterrows():
        assert compared.loc[arm, "val/accuracy_mean"] == pytest.approx(row["mean"], rel=1e-12)

    # The factorial analysis: beta's paired effect within each batch size, and the
    # interaction, each against a hand computation over the seeds.
    effects = ba.factor_effects(confirm, "optimizer.beta", "trainer.batch_size")
    per = confirm.pivot_table(
        index="seed", columns=["optimizer.beta", "trainer.batch_size"], values="val/accuracy"
    )
    at10 = per[(0.9, 10)] - per[(0.5, 10)]
    at100 = per[(0.9, 100)] - per[(0.5, 100)]
    got = effects.set_index("within")["mean"]
    assert got["trainer.batch_size=10"] == pytest.approx(at10.mean(), rel=1e-12)
    assert got["trainer.batch_size=100"] == pytest.approx(at100.mean(), rel=1e-12)
    assert got["interaction"] == pytest.approx((at100 - at10).mean(), rel=1e-12)
    assert (effects["seeds"] == 3).all()
