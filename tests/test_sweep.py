"""Sweeps lose nothing: divergence, failures, Ctrl-C/SIGTERM, resuming, parallel jobs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

import bpexp
from tests.conftest import assert_every_point_logged, cli_env, run_cli, start_mlflow_server

pytestmark = pytest.mark.slow


def runs_by_kind(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bpexp")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = [r for r in runs if r.data.tags.get("bpexp.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("bpexp.kind") != "sweep"]
    return client, parents, children


def summary_of(folder: Path) -> pd.DataFrame:
    (path,) = sorted(folder.glob("multirun/*/*/summary.csv"))[-1:]
    return pd.read_csv(path)


def test_divergence_is_an_outcome_and_the_sweep_goes_on(tmp_path, store_uri):
    proc = run_cli(
        [
            "-m",
            "optimizer.lr=0.1,1000",
            "network.activation=relu",
            "network.output_activation=linear",
            "network.init=he",
            "trainer.epochs=3",
            f"tracking.uri={store_uri}",
            "tracking.plots=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = summary_of(tmp_path)
    assert sorted(table["outcome"]) == ["completed", "diverged"]
    assert "1 completed, 1 diverged" in proc.stdout
    client, _, children = runs_by_kind(store_uri)
    diverged = [r for r in children if r.data.tags["outcome"] == "diverged"]
    assert len(diverged) == 1 and diverged[0].info.status == "FINISHED"
    run_id = diverged[0].info.run_id
    # Stopped at once: within the first epoch, with the points up to then kept.
    batch = client.get_metric_history(run_id, "train/batch_loss")
    assert batch and max(m.step for m in batch) < 130
    last = max(batch, key=lambda m: m.step).value
    assert not math.isfinite(last) or last > 1e6
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1]


def test_failed_job_is_recorded_and_the_command_names_it(tmp_path, store_uri):
    # Job 1 cannot reach its store (a folder that does not exist): it fails, with the reason,
    # and job 0 is kept. (A layer too wide to allocate used to be the failing job here; since
    # issue 28 it is refused as an invalid config, see test_config.py.)
    missing = "sqlite:////nonexistent-folder/mlflow.db"
    proc = run_cli(
        [
            "-m",
            f"tracking.uri={store_uri},{missing}",
            "trainer.epochs=1",
            "tracking.plots=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 1
    assert "job 1 failed" in proc.stderr and "'/nonexistent-folder' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    table = summary_of(tmp_path)
    assert list(table["outcome"]) == ["completed", "failed"]
    _, parents, children = runs_by_kind(store_uri)
    assert len(children) == 1 and parents[0].info.status == "FAILED"


def test_a_value_that_does_not_compose_stops_the_sweep_before_any_job(tmp_path, store_uri):
    # The sweeper composes each distinct override once before launching (not every job): the
    # bad value, in the last jobs only, must still stop the whole sweep before the first job.
    proc = run_cli(
        [
            "-m",
            "trainer.batch_size=10,20,oops",
            "seed=0,1",
            "trainer.epochs=1",
            f"tracking.uri={store_uri}",
        ],
        tmp_path,
    )
    assert proc.returncode != 0
    assert "trainer.batch_size" in proc.stderr and "oops" in proc.stderr
    assert "epoch" not in proc.stdout  # nothing trained
    _, parents, children = runs_by_kind(store_uri)
    assert parents == [] and children == []  # and no run, not even a parent
    assert not list(tmp_path.glob("multirun/*/*/results/*"))


def test_error_during_training_marks_the_run_failed_with_traceback(store_uri, tmp_path):
    def broken_listener(record):
        if getattr(record, "epoch", 0) == 2:
            raise RuntimeError("listener broke at epoch 2")

    with pytest.raises(RuntimeError, match="listener broke"):
        bpexp.run([f"tracking.uri={store_uri}", "trainer.epochs=5"], listeners=[broken_listener])
    client, _, (run,) = runs_by_kind(store_uri)
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "failed"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1]
    text = Path(client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path)))
    assert "listener broke at epoch 2" in text.read_text()


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bpexp", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"{text!r} not seen; output:\n{''.join(seen)}\n{proc.stderr.read()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_marks_the_run_killed_and_keeps_its_metrics(tmp_path, store_uri, sig):
    proc = start(
        [f"tracking.uri={store_uri}", "trainer.epochs=3000", "tracking.plots=false"], tmp_path
    )
    wait_for(proc, "train/loss")  # epoch 0 is done
    time.sleep(2.0)  # a few dozen epochs more
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    client, _, (run,) = runs_by_kind(store_uri)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) >= 4 and steps == list(range(len(steps)))  # flushed and kept


def test_interrupted_sweep_resumes_and_skips_completed_jobs(tmp_path, store_uri):
    # Job 0 trains 5 epochs, job 1 300 (a few seconds): Ctrl-C lands in job 1 for sure.
    args = ["-m", "trainer.epochs=5,300", f"tracking.uri={store_uri}", "tracking.plots=false"]
    args.append("verbose=2")  # the jobs' epoch and skip lines (a multirun's default: progress)
    proc = start(args, tmp_path)
    wait_for(proc, "#1 :")
    wait_for(proc, "epoch ")  # job 1 is training
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    first = summary_of(tmp_path)
    assert list(first["outcome"]) == ["completed", "interrupted"]
    _, parents, _ = runs_by_kind(store_uri)
    assert parents[0].info.status == "KILLED"

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already has this exact config (completed)" in again.stdout
    second = summary_of(tmp_path)
    assert list(second["outcome"]) == ["skipped", "completed"]
    assert second.loc[0, "run_id"] == first.loc[0, "run_id"]
    _, _, children = runs_by_kind(store_uri)
    outcomes = sorted(
        (int(r.data.params["trainer.epochs"]), r.data.tags["outcome"]) for r in children
    )
    assert outcomes == [(5, "completed"), (300, "completed"), (300, "interrupted")]

    forced = run_cli([*args[:1], "trainer.epochs=5", *args[2:], "force=true"], tmp_path)
    assert forced.returncode == 0 and "skipped" not in forced.stdout


def test_joblib_sweep_on_a_fresh_store_logs_every_point(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"  # not created beforehand: the sweep creates it
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optimizer=sgd,nesterov",
            "seed=0,1,2",
            "trainer.epochs=2",
            f"tracking.uri={uri}",
            "tracking.plots=false",
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "database is locked" not in proc.stderr
    client, parents, children = runs_by_kind(uri)
    assert len(parents) == 1 and len(children) == 6
    for run in children:
        assert_every_point_logged(client, run, tmp_path)


def test_unreachable_store_fails_at_start(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = run_cli(
        [f"tracking.uri=http://127.0.0.1:{port}", "tracking.timeout_seconds=5"], tmp_path
    )
    assert time.monotonic() - started < 60
    assert proc.returncode != 0
    assert f"tracking.uri='http://127.0.0.1:{port}'" in proc.stderr
    assert "epoch" not in proc.stdout


def test_stopped_server_gives_a_clear_error_before_training(tmp_path):
    url, proc = start_mlflow_server(tmp_path)
    try:
        ok = run_cli([f"tracking.uri={url}", "trainer.epochs=1", "tracking.plots=false"], tmp_path)
        assert ok.returncode == 0, ok.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # The README: it fails within tracking.timeout_seconds (10 s) of a command that fails at
    # once for another reason (a bad value: the same start-up, no connection at all).
    started = time.monotonic()
    baseline = run_cli(["trainer.epochs=0"], tmp_path)
    start_up = time.monotonic() - started
    assert baseline.returncode == 2 and "trainer.epochs" in baseline.stderr
    started = time.monotonic()
    proc = run_cli([f"tracking.uri={url}", "trainer.epochs=1"], tmp_path)
    assert time.monotonic() - started < start_up + 10
    assert proc.returncode == 2
    assert f"tracking.uri='{url}': the MLflow server does not answer" in proc.stderr
    assert "epoch" not in proc.stdout


def test_joblib_jobs_run_in_two_worker_processes(tmp_path):
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optimizer=sgd,momentum",
            "seed=0,1,2",
            "trainer.epochs=1",
            "tracking.enabled=false",
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    rows = [json.loads(p.read_text()) for p in (sweep_dir / "results").glob("*.json")]
    assert len(rows) == 6 and {r["outcome"] for r in rows} == {"completed"}
    pids = {r["process"] for r in rows}
    assert len(pids) == 2  # both workers ran jobs: in parallel


def test_basic_launcher_jobs_run_in_the_launching_process(tmp_path):
    proc = run_cli(
        ["-m", "optimizer=sgd,momentum", "trainer.epochs=1", "tracking.enabled=false"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    rows = sorted(
        (json.loads(p.read_text()) for p in (sweep_dir / "results").glob("*.json")),
        key=lambda r: r["job"],
    )
    assert len({r["process"] for r in rows}) == 1


def test_joblib_sweep_from_a_script_calling_main(tmp_path):
    # A script calling main() (not python -m bpexp) must not start a sweep per worker.
    script = tmp_path / "run.py"
    script.write_text("from bpexp.__main__ import main\n\nmain()\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optimizer=sgd,momentum",
            "trainer.epochs=1",
            "tracking.enabled=false",
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 jobs: 2 completed" in proc.stdout
