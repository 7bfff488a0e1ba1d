"""`python -m bpexp` as a user runs it: real subprocesses, real Hydra, a real SQLite store."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def runs_in(uri: str, experiment: str = "bpexp"):
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def test_default_run_prints_progress_and_logs_to_the_default_store(tmp_path):
    proc = run_cli(["trainer.epochs=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 0/2" in proc.stdout and "epoch 2/2" in proc.stdout
    assert "train/loss" in proc.stdout and "test/accuracy" in proc.stdout
    assert "logged: run" in proc.stdout and "mlflow ui" in proc.stdout
    runs = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}")  # MLflow's default, in the cwd
    assert len(runs) == 1 and runs[0].data.tags["outcome"] == "completed"
    assert not (tmp_path / "config.yaml").exists()  # Hydra writes into outputs/, not over files
    assert (tmp_path / "outputs").is_dir()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.beta=1.5", "optimizer.beta"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("optimizer=adamw", "optimizer"),
        ("network.hidden=[abc]", "network.hidden"),
        ("trainer.epochs=two", "trainer.epochs"),
        ("network.init=file", "network.init_path"),
    ],
)
def test_bad_config_stops_before_any_run(tmp_path, store_uri, override, key):
    proc = run_cli([override, f"tracking.uri={store_uri}"], tmp_path)
    assert proc.returncode != 0
    assert key in proc.stderr, proc.stderr
    assert "epoch" not in proc.stdout
    assert runs_in(store_uri) == []


@pytest.mark.parametrize(
    ("args", "named", "folder"),
    [
        (["sweep=optimisers"], "sweep='optimisers'", "sweeps/sweep"),
        (["-m", "optimizer=sgd,nesterv"], "optimizer='nesterv'", "conf/optimizer"),
        (["data=digit", "trainer.epochs=1"], "data='digit'", "conf/data"),
    ],
)
def test_an_unknown_sweep_or_group_option_stops_before_anything_runs(
    tmp_path, store_uri, args, named, folder
):
    # Hydra alone would drop the optional sweep group's unknown option and train the default.
    proc = run_cli([*args, f"tracking.uri={store_uri}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {named} is not allowed; allowed: "), proc.stderr
    for option in (ROOT / folder).glob("*.yaml"):
        assert option.stem in proc.stderr
    assert "epoch" not in proc.stdout and "Traceback" not in proc.stderr
    assert runs_in(store_uri) == []
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_bad_config_in_a_multirun_creates_no_run(tmp_path, store_uri):
    proc = run_cli(
        ["-m", "optimizer.lr=-1,-2", "trainer.epochs=1", f"tracking.uri={store_uri}"], tmp_path
    )
    assert proc.returncode == 1
    assert "job 0 invalid" in proc.stderr and "optimizer.lr=-1" in proc.stderr
    assert runs_in(store_uri) == []
    assert "2 invalid" in proc.stdout


def test_multirun_from_the_command_line(tmp_path, store_uri):
    proc = run_cli(
        [
            "-m",
            "optimizer=sgd,nesterov",
            "optimizer.lr=0.5",
            "seed=0,1",
            "trainer.epochs=1",
            f"tracking.uri={store_uri}",
            "tracking.plots=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    runs = runs_in(store_uri)
    parents = [r for r in runs if r.data.tags.get("bpexp.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].info.run_name.startswith("multirun ")
    assert "sweep summary (4 jobs: 4 completed)" in proc.stdout


# Protocol sweeps: one lr, one tuning seed and one confirm seed, so two jobs an arm.
SEEDS = ["hydra.sweeper.protocol.tune_seeds=[0]", "hydra.sweeper.protocol.confirm_seeds=[1]"]
TINY = {
    "optimizers": ["optimizer.lr=0.5", *SEEDS, "trainer.epochs=1"],
    "momentum_beta": ["optimizer.beta=0.9", "optimizer.lr=0.3", *SEEDS, "trainer.epochs=1"],
    "cost_saturation": ["optimizer.lr=0.5", *SEEDS, "trainer.epochs=1"],
    "depth": ["network.hidden=[30],[30,30]", "optimizer.lr=0.5", *SEEDS, "trainer.epochs=1"],
    "batch_size": ["trainer.batch_size=100,null", "optimizer.lr=0.5", *SEEDS, "trainer.epochs=1"],
    "pixels3x4": ["seed=0", "trainer.epochs=5"],
}
JOBS = {
    "optimizers": 6,
    "momentum_beta": 6,
    "cost_saturation": 4,
    "depth": 8,
    "batch_size": 4,
    "pixels3x4": 1,
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_named_sweep_runs_without_dash_m(tmp_path, store_uri, name):
    proc = run_cli(
        [f"sweep={name}", *TINY[name], f"tracking.uri={store_uri}", "tracking.plots=false"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = list(tmp_path.glob("multirun/*/*/summary.csv"))
    assert len(summaries) == 1
    table = pd.read_csv(summaries[0])
    assert len(table) == JOBS[name]
    assert set(table["outcome"]) == {"completed"}
    assert table["val/loss"].notna().all() or name == "pixels3x4"
    runs = runs_in(store_uri)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == JOBS[name]
    assert {r.data.tags["sweep"] for r in children} == {name}
    parent = [r for r in runs if r.data.tags.get("bpexp.kind") == "sweep"][0]
    assert parent.info.run_name.startswith(f"{name} ")
    assert "summary.csv" in {
        a.path for a in MlflowClient(store_uri).list_artifacts(parent.info.run_id)
    }


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_a_4_job_sweep(tmp_path, store_uri, launcher):
    extra = (
        ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=10"]
    )
    proc = run_cli(
        [
            "-m",
            f"hydra/launcher={launcher}",
            "optimizer=sgd,momentum",
            "seed=0,1",
            "trainer.epochs=1",
            f"tracking.uri={store_uri}",
            "tracking.plots=false",
            *extra,
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_in(store_uri)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 4
    assert all(r.data.tags["outcome"] == "completed" for r in children)
    # Every point of every child was logged: 2 epochs + step 0 of train/loss per run.
    client = MlflowClient(store_uri)
    assert all(len(client.get_metric_history(r.info.run_id, "train/loss")) == 2 for r in children)
    with sqlite3.connect(store_uri.removeprefix("sqlite:///")) as db:
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_works_from_any_directory(tmp_path, store_uri):
    elsewhere = tmp_path / "some" / "where"
    elsewhere.mkdir(parents=True)
    proc = run_cli(
        ["sweep=pixels3x4", "trainer.epochs=2", "seed=0", "tracking.enabled=false"], elsewhere
    )
    assert proc.returncode == 0, proc.stderr
    assert list(elsewhere.glob("multirun/*/*/summary.csv"))
