"""Reliability on real processes: commands racing on a fresh store, Ctrl-C/SIGTERM on parallel
sweeps, runs left RUNNING by a dead process, read-only and full disks, a PostgreSQL server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import assert_every_point_logged, cli_env, free_port, run_cli

pytestmark = pytest.mark.slow


def popen_cli(args: list[str], cwd: Path, module: str = "bpexp", **env: str) -> subprocess.Popen:
    """``python -m MODULE ARGS`` started in its own process group (as a terminal's foreground
    job is), its output to a file in ``cwd``."""
    log = cwd / f"{module}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(**env),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log.read_text()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (a server and its workers), SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            assert proc.poll() is None, output(proc)
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {seconds} s:\n{output(proc)}")


@pytest.mark.parametrize("attempt", range(3))
def test_commands_started_together_on_a_fresh_folder_all_succeed(tmp_path, attempt):
    """Three commands (and, the first time, `mlflow ui`) start at once in a folder with no
    mlflow.db: every command logs its run, and the UI serves the store. Before the store was
    built aside, one command in each try died in MLflow's migrations ("duplicate column name",
    "Online migration expected to match one row")."""
    port = free_port()
    ui_args = ["ui", "--backend-store-uri", "sqlite:///mlflow.db", "--port", str(port)]
    ui = (
        popen_cli([*ui_args, "--workers", "1"], tmp_path, module="mlflow") if attempt == 0 else None
    )
    commands = [
        popen_cli([f"seed={seed}", "trainer.epochs=1", "tracking.plots=false"], tmp_path)
        for seed in range(3)
    ]
    try:
        for proc in commands:
            proc.wait(timeout=300)
        for proc in commands:
            assert proc.returncode == 0, output(proc)[-3000:]
            assert "Traceback" not in output(proc)
        if ui is not None:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, ui)
            search = "/ajax-api/2.0/mlflow/experiments/search?max_results=5"
            with urllib.request.urlopen(url + search) as resp:
                assert b'"bpexp"' in resp.read()
    finally:
        for proc in [ui, *commands]:
            if proc is not None:
                stop_group(proc)
    if ui is not None:
        assert "Traceback" not in output(ui), output(ui)[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bpexp").experiment_id])
    assert sorted(int(r.data.params["seed"]) for r in runs) == [0, 1, 2]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert not list(tmp_path.glob(".mlflow.db.*.tmp"))  # the store built aside was moved in


def wait_for_training_runs(
    uri: str, count: int, proc: subprocess.Popen, seconds: float = 240, epochs: str | None = None
) -> list[str]:
    """The ids of the runs, once ``count`` runs of the store are RUNNING with a logged epoch
    (and, if ``epochs`` is given, that ``trainer.epochs``: a short run is RUNNING with its
    points for a moment before it ends, and must not be taken for the long one)."""
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, output(proc)[-3000:]
        experiment = client.get_experiment_by_name("bpexp")
        if experiment is not None:
            runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
            training = [
                r
                for r in runs
                if "train/loss" in r.data.metrics
                and epochs in (None, r.data.params.get("trainer.epochs"))
            ]
            if len(training) >= count:
                return [r.info.run_id for r in training]
        time.sleep(0.5)
    raise AssertionError(f"{count} runs not training after {seconds} s:\n{output(proc)[-3000:]}")


def sweep_runs(uri: str):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:  # MLflow keeps its connections: to a file deleted since, maybe
        engine.dispose()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("bpexp").experiment_id])
    parents = [r for r in runs if r.data.tags.get("bpexp.kind") == "sweep"]
    return client, parents, [r for r in runs if r not in parents]


LONG_SWEEP = ["-m", "optimizer=sgd,momentum,nesterov", "seed=0,1", "trainer.epochs=3000"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_stops_a_parallel_sweep(tmp_path, store_uri, launcher, sig):
    """As a terminal's Ctrl-C (or a SIGTERM to the job's processes): every job in progress
    closes its run as KILLED with its points, no new job starts, the summary is written, the
    parent run is KILLED and the command exits 130 (SIGINT) or 143 (SIGTERM)."""
    args = [*LONG_SWEEP, f"hydra/launcher={launcher}", "tracking.plots=false"]
    proc = popen_cli([*args, f"tracking.uri={store_uri}"], tmp_path)
    try:
        training = wait_for_training_runs(store_uri, 2, proc)
        time.sleep(1.0)  # a few epochs more
        os.killpg(proc.pid, sig)
        start = time.monotonic()
        proc.wait(timeout=120)
        print(f"{launcher}: exited {time.monotonic() - start:.1f} s after {sig.name}")
    finally:
        stop_group(proc)
    log = output(proc)
    assert proc.returncode == 128 + sig, log[-3000:]
    client, (parent,), children = sweep_runs(store_uri)
    assert parent.info.status == "KILLED"
    assert children and {r.info.status for r in children} == {"KILLED"}, log[-3000:]
    assert {r.data.tags["outcome"] for r in children} == {"interrupted"}
    for run in children:  # every point up to the signal is kept, none of 3000 epochs done
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert len(steps) < 3000 and steps == list(range(len(steps)))
        # A job that was still starting (submitit starts all six at once) may have been stopped
        # before its first epoch; those seen training had points.
        assert len(steps) >= 1 or run.info.run_id not in training
    (summary,) = tmp_path.glob("multirun/*/*/summary.csv")
    table = pd.read_csv(summary)
    assert set(table["outcome"]) == {"interrupted"}
    # A job stopped before its run existed (loading its data) has a row and no run.
    assert set(table["run_id"].dropna()) == {r.info.run_id for r in children}
    if launcher == "joblib":  # two workers: the jobs queued behind them never started
        assert len(children) == 2


def test_second_ctrl_c_kills_every_process_at_once(tmp_path, store_uri):
    args = [*LONG_SWEEP, "hydra/launcher=joblib", "tracking.plots=false"]
    proc = popen_cli([*args, f"tracking.uri={store_uri}"], tmp_path)
    try:
        wait_for_training_runs(store_uri, 2, proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        assert proc.returncode == 130, output(proc)[-3000:]
        assert "stopped at once" in output(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the workers were killed too
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("processes of the sweep still alive 30 s after a second Ctrl-C")
    finally:
        stop_group(proc)


def test_runs_of_a_killed_sweep_are_closed_as_interrupted_when_it_resumes(tmp_path, store_uri):
    from bpexp.tracking import close_stale_runs

    args = ["-m", "trainer.epochs=2,3000", "tracking.plots=false", f"tracking.uri={store_uri}"]
    proc = popen_cli(args, tmp_path)
    try:
        wait_for_training_runs(store_uri, 1, proc, epochs="3000")
        client, (parent,), children = sweep_runs(store_uri)
        assert close_stale_runs(client, "1") == []  # alive: left alone
        os.killpg(proc.pid, signal.SIGKILL)  # as kill -9, or a lost node: nothing is closed
        proc.wait(timeout=30)
    finally:
        stop_group(proc)
    _, _, children = sweep_runs(store_uri)
    (killed,) = [r for r in children if r.info.status == "RUNNING"]
    assert killed.data.tags["bpexp.host"] == socket.gethostname()
    assert int(killed.data.tags["bpexp.pid"]) > 0

    again = run_cli(["-m", "trainer.epochs=2", *args[2:]], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "closed 2 stale RUNNING run(s) as interrupted" in again.stdout
    client = MlflowClient(tracking_uri=store_uri)
    killed = client.get_run(killed.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["outcome"] == "interrupted"
    assert killed.data.tags["bpexp.stale"] == "process gone"
    assert client.get_run(parent.info.run_id).info.status == "KILLED"
    assert len(client.get_metric_history(killed.info.run_id, "train/loss")) >= 1

    report = run_cli(
        [parent.info.run_id, "--tracking-uri", store_uri, "--no-log"],
        tmp_path,
        module="bpexp.report",
    )
    assert report.returncode == 0, report.stderr[-3000:]
    index = Path(report.stdout.strip().splitlines()[-1]).read_text()
    assert "runs: 2 (1 completed, 1 interrupted)" in index


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs (``mount(dir, size, read_only)``); unmounted after the test. Tests run
    as root, whom file modes do not stop: a read-only or full file system does."""
    mounted = []

    def mount(folder: Path, size: str = "1m", read_only: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_tracking_uri_in_a_read_only_folder_is_a_clear_error(tmp_path, tmpfs):
    folder = tmpfs(tmp_path / "ro", read_only=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    out = run_cli([f"tracking.uri={uri}", "trainer.epochs=1"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert f"error: tracking.uri={uri!r}: cannot create the store in folder" in out.stderr
    assert "Read-only file system" in out.stderr
    assert "epoch" not in out.stdout  # stopped before training


def test_full_disk_for_artifacts_fails_each_run_with_its_reason_and_the_sweep_goes_on(
    tmp_path, tmpfs
):
    """The artifacts of a SQLite store go to ./mlruns: a 64 KiB file system there fills up
    with the first run's weights and plots (asked for: tracking.plots=true)."""
    tmpfs(tmp_path / "mlruns", size="64k")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "seed=0,1", "trainer.epochs=2", "tracking.plots=true", f"tracking.uri={uri}"]
    out = run_cli(args, tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    client, (parent,), children = sweep_runs(uri)
    assert len(children) == 2  # the second job ran after the first failed
    for run in children:
        assert run.info.status == "FAILED" and run.data.tags["outcome"] == "failed"
        assert "No space left on device" in run.data.tags["bpexp.error"]
        assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 3  # epochs 0-2
    assert parent.info.status == "FAILED"
    table = pd.read_csv(next(tmp_path.glob("multirun/*/*/summary.csv")))
    assert list(table["outcome"]) == ["failed", "failed"]
    assert table["error"].str.contains("No space left on device").all()
    assert "job 0 failed" in out.stderr and "job 1 failed" in out.stderr


def test_joblib_sweep_against_an_mlflow_server_on_postgresql(tmp_path, postgres_url):
    """The shared store for a cluster: `mlflow server` with 2 workers on PostgreSQL; 8 jobs
    on 2 joblib workers log every point, with no error."""
    port = free_port()
    server = popen_cli(
        [
            "server",
            "--backend-store-uri",
            postgres_url,
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        tmp_path,
        module="mlflow",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, seconds=180)
        args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3"]
        args += ["optimizer=sgd,nesterov", "trainer.epochs=2", "tracking.plots=false"]
        out = run_cli([*args, f"tracking.uri={url}"], tmp_path, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Traceback" not in out.stderr
        client, (parent,), children = sweep_runs(url)
        assert parent.info.status == "FINISHED" and len(children) == 8
        for run in children:
            assert run.info.status == "FINISHED"
            assert_every_point_logged(client, run, tmp_path)
    finally:
        stop_group(server)
    assert "Traceback" not in output(server), output(server)[-3000:]


def points_in_store(client, run) -> int:
    return sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics)


def points_in_history(client, run, folder: Path) -> int:
    """The rows of the run's history.parquet (artifacts live outside the store's file)."""
    local = client.download_artifacts(run.info.run_id, "history.parquet", str(folder))
    return len(pd.read_parquet(local))


def test_a_full_store_fails_its_runs_and_the_rerun_runs_them_again(tmp_path, tmpfs):
    """Issue 28, defect 1: the SQLite store on a 2 MB file system fills up mid-sweep. A run is
    FINISHED/completed only with every point written; the others are FAILED with the reason in
    bpexp.error, and once there is room the same command runs them again."""
    store = tmpfs(tmp_path / "store", size="2m")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    args = ["-m", "optimizer.lr=0.1,0.5,1,2,3,4,5,6", "trainer.epochs=30"]
    args += ["trainer.sharpness_every=0", f"tracking.uri={uri}"]
    full = run_cli(args, tmp_path, timeout=900)
    assert full.returncode == 1, full.stderr[-3000:]
    client, _, children = sweep_runs(uri)
    complete = []
    for run in children:
        if run.info.status == "FINISHED":
            assert run.data.tags["outcome"] == "completed"
            stored = points_in_store(client, run)
            assert stored == points_in_history(client, run, tmp_path / "dl") > 100, run.info
            complete.append(run.info.run_id)
        else:  # the store refused a write: FAILED, and says why
            assert run.info.status == "FAILED", (run.info, run.data.tags)
            assert run.data.tags["outcome"] == "failed"
            assert "database or disk is full" in run.data.tags["bpexp.error"]
    print(f"{len(complete)} of {len(children)} runs complete on the full store")
    assert len(complete) < 8  # the disk did fill up

    subprocess.run(["mount", "-o", "remount,size=20m", str(store)], check=True)
    again = run_cli(args, tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    table = pd.read_csv(sorted(tmp_path.glob("multirun/*/*/summary.csv"))[-1])
    skipped = set(table.loc[table["outcome"] == "skipped", "run_id"])
    assert skipped == set(complete), again.stdout[-3000:]  # only the complete runs are skipped
    assert (table["outcome"] == "completed").sum() == 8 - len(complete)
    client, _, children = sweep_runs(uri)
    done = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(float(r.data.params["optimizer.lr"]) for r in done) == [
        0.1,
        0.5,
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    for run in done:
        assert points_in_store(client, run) == points_in_history(client, run, tmp_path / "dl2")


@pytest.mark.parametrize("damage", ["corrupt", "malformed", "read-only"])
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_a_corrupt_or_read_only_store_is_a_clear_error_before_training(
    tmp_path, tmpfs, damage, multirun
):
    """Issue 28, defect 5: an existing store that cannot be used stops the command with exit
    code 2 and a message naming the store and what to do, before training, no traceback."""
    folder = tmpfs(tmp_path / "store", size="4m")
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    if damage == "corrupt":
        db.write_bytes(os.urandom(100_000))
    elif damage == "malformed":  # SQLite's header, then garbage (as a crash mid-write leaves)
        db.write_bytes(b"SQLite format 3\x00" + os.urandom(100_000))
    else:  # a store with a run in it, on a file system remounted read-only
        seeded = run_cli(["trainer.epochs=1", f"tracking.uri={uri}"], tmp_path)
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    args = ["-m", "seed=0,1"] if multirun else []  # verbose=2: a multirun's epoch lines too
    out = run_cli([*args, "trainer.epochs=1", "verbose=2", f"tracking.uri={uri}"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert f"error: tracking.uri={uri!r}" in out.stderr
    expected = {
        "corrupt": "is not an SQLite database",
        "malformed": "the SQLite store is damaged",
        "read-only": "cannot be written (Read-only file system)",
    }[damage]
    assert expected in out.stderr, out.stderr[-3000:]
    assert "epoch" not in out.stdout  # nothing trained


def mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server --workers 1` on 127.0.0.1:PORT over a SQLite store in ``folder``, in a
    process group of its own (SIGKILL to the group kills it as a crash would)."""
    args = ["server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    args += ["--artifacts-destination", str(folder / "artifacts")]
    server = popen_cli(args, folder, module="mlflow")
    wait_healthy(f"http://127.0.0.1:{port}", server, seconds=120)
    return server


STORE_FAILURES = ["server killed", "read-only", "deleted", "corrupt"]


@pytest.mark.parametrize("failure", STORE_FAILURES)
def test_a_store_failing_mid_sweep_names_the_failed_jobs_and_the_parent(tmp_path, tmpfs, failure):
    """Issue 28, defect 2: the store breaks while a joblib sweep runs (its server killed and
    restarted 15 s later; its file made read-only, deleted or overwritten). The command still
    exits 1 with no traceback, writes the summary, prints every failed job, and either closes
    the parent run with a final status or says it could not, naming the store and what to do.
    No run is FINISHED without all its points, and the same command, once the store works,
    closes what was left open and runs the failed jobs again."""
    folder = tmpfs(tmp_path / "store", size="64m")
    server = None
    if failure == "server killed":
        port = free_port()
        server = mlflow_server(folder, port)
        uri = f"http://127.0.0.1:{port}"
    else:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = ["-m", "seed=0,1,2,3", "trainer.epochs=80", "tracking.plots=false"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"tracking.uri={uri}"]
    proc = popen_cli(args, tmp_path)
    try:
        wait_for_training_runs(uri, 1, proc)
        if failure == "server killed":
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
            time.sleep(15)
            server = mlflow_server(folder, port)
        elif failure == "read-only":  # (remount,ro refuses files open for writing: bind it)
            subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        elif failure == "deleted":
            (folder / "mlflow.db").unlink()
        else:
            (folder / "mlflow.db").write_bytes(os.urandom(300_000))
        proc.wait(timeout=600)
        log = output(proc)
        assert proc.returncode == 1, log[-3000:]
        assert "Traceback" not in log, log[-5000:]
        (summary,) = tmp_path.glob("multirun/*/*/summary.csv")
        table = pd.read_csv(summary)
        assert list(table["job"]) == [0, 1, 2, 3]
        failed = table[table["outcome"] == "failed"]
        assert len(failed), log[-3000:]
        for job in failed["job"]:
            assert f"job {job} failed" in log, log[-3000:]
        assert f"tracking.uri={uri!r}" in log
        print(f"{failure}: exit {proc.returncode}, failed jobs {list(failed['job'])}")
        if failure == "read-only":
            subprocess.run(["umount", str(folder)], check=True)  # the read-only bind
        if failure in ("server killed", "read-only"):  # the store works again: look at it
            client, parents, children = sweep_runs(uri)
            (parent,) = parents
            print(f"{failure}: parent {parent.info.status}")
            if parent.info.status == "RUNNING":
                assert f"parent run {parent.info.run_id} could not be closed" in log
            else:
                assert parent.info.status == "FAILED"
            for run in children:
                if run.info.status == "FINISHED":
                    stored = points_in_store(client, run)
                    assert stored == points_in_history(client, run, tmp_path / "dl")
        elif failure == "deleted":
            assert "was deleted or replaced during the sweep" in log, log[-3000:]
        again = run_cli(args, tmp_path, timeout=900)
        if failure == "corrupt":
            assert again.returncode == 2, again.stderr[-3000:]
            # the random bytes, or SQLite's own page 1 written back over them by a job still
            # running: either way the error names the damage and what to do
            assert "restore it from a backup" in again.stderr, again.stderr[-3000:]
            assert "Traceback" not in again.stderr
            return
        assert again.returncode == 0, again.stderr[-3000:]
        client, parents, children = sweep_runs(uri)
        assert {p.info.status for p in parents} <= {"FINISHED", "FAILED", "KILLED"}, (
            [(p.info.run_id, p.info.status) for p in parents],
            log[-3000:],
            again.stdout[-3000:],
        )
        done = [r for r in children if r.info.status == "FINISHED"]
        assert sorted(int(r.data.params["seed"]) for r in done) == [0, 1, 2, 3]
        for run in done:
            assert points_in_store(client, run) == points_in_history(client, run, tmp_path / "d2")
        assert "RUNNING" not in {r.info.status for r in children}
    finally:
        stop_group(proc)
        if server is not None:
            stop_group(server)


def wait_for_output(proc: subprocess.Popen, text: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while text not in output(proc):
        assert proc.poll() is None, output(proc)[-3000:]
        assert time.monotonic() < deadline, f"{text!r} not printed:\n{output(proc)[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_ctrl_c_during_the_end_of_sweep_report_kills_the_parent_and_exits_130(
    tmp_path, store_uri, launcher
):
    """Issue 28, defect 7: SIGINT to the process group 0.3 s after `summary:` is printed, while
    the report is drawn. As for a Ctrl-C at any other moment of a sweep: the summary is kept,
    the parent run is KILLED, the command exits 130, and no traceback is printed (before: a
    KeyboardInterrupt traceback and a RUNNING parent; with joblib, exit 0 and FINISHED)."""
    args = [
        "-m",
        "seed=0,1",
        "trainer.epochs=2",
        "tracking.plots=false",
        f"hydra/launcher={launcher}",
    ]
    proc = popen_cli([*args, f"tracking.uri={store_uri}"], tmp_path)
    try:
        wait_for_output(proc, "summary: ")
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        stop_group(proc)
    log = output(proc)
    assert "report: " not in log  # the signal did land during the report
    assert proc.returncode == 130, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    _, (parent,), children = sweep_runs(store_uri)
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in children] == ["FINISHED", "FINISHED"]
    (summary,) = tmp_path.glob("multirun/*/*/summary.csv")
    assert list(pd.read_csv(summary)["outcome"]) == ["completed", "completed"]


def sweep_folder(proc: subprocess.Popen) -> Path:
    (line,) = [x for x in output(proc).splitlines() if "outputs in " in x]
    return Path(line.split("outputs in ", 1)[1])


def test_two_sweeps_started_in_the_same_second_get_their_own_folders_and_parents(
    tmp_path, store_uri
):
    """Issue 28, defect 3: two commands started together (here they pick their folder in the
    same second, which the test checks) each get a sweep folder and a parent run of their own;
    neither hangs its runs on the other's parent or overwrites its results."""
    sweeps = {"0.1,0.5": [0.1, 0.5], "1,2": [1.0, 2.0]}
    same_second = False
    for attempt in range(3):  # until the two picked their folder in the same second
        # (another seed each attempt: the same configs again would be skipped, not completed)
        procs = {
            lrs: popen_cli(
                ["-m", f"optimizer.lr={lrs}", f"seed={attempt}", "trainer.epochs=2"]
                + ["tracking.plots=false", f"tracking.uri={store_uri}"],
                tmp_path,
            )
            for lrs in sweeps
        }
        try:
            for proc in procs.values():
                proc.wait(timeout=300)
        finally:
            for proc in procs.values():
                stop_group(proc)
        for proc in procs.values():
            assert proc.returncode == 0, output(proc)[-3000:]
            assert "Traceback" not in output(proc)
        folders = {lrs: sweep_folder(proc) for lrs, proc in procs.items()}
        assert len(set(folders.values())) == 2, folders
        for lrs, folder in folders.items():
            table = pd.read_csv(folder / "summary.csv")
            assert list(table["outcome"]) == ["completed", "completed"]
            assert [float(o.split()[0].split("=")[1]) for o in table["overrides"]] == sweeps[lrs]
        names = [f.name for f in folders.values()]
        same_second = names[0][:8] == names[1][:8]  # HH-MM-SS
        if same_second:
            break
    assert same_second, f"the two commands never started in the same second: {folders}"
    print(f"same second: {sorted(names)}")
    client, parents, children = sweep_runs(store_uri)
    for lrs, folder in folders.items():
        parent = (folder / "parent_run_id").read_text()
        (run,) = [p for p in parents if p.info.run_id == parent]
        assert run.info.status == "FINISHED"
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent]
        lr_of = [float(c.data.params["optimizer.lr"]) for c in mine]
        assert sorted(lr_of) == sweeps[lrs]


def test_a_sweep_folder_in_use_is_refused_and_an_ended_ones_state_is_not_inherited(
    tmp_path, store_uri
):
    """The same hydra.sweep.dir given twice: while the first sweep runs, the second command is
    refused (exit 2, before any job); once it ended, a new sweep there gets a parent run of its
    own, and the earlier sweep's results are moved to earlier/, not summed up again."""
    folder = tmp_path / "shared-folder"
    common = [f"hydra.sweep.dir={folder}", "tracking.plots=false", f"tracking.uri={store_uri}"]
    first = popen_cli(["-m", "trainer.epochs=2,3000", *common], tmp_path)
    try:
        wait_for_training_runs(store_uri, 1, first, epochs="3000")
        second = run_cli(["-m", "seed=5,6", "trainer.epochs=1", "verbose=2", *common], tmp_path)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"sweep folder {folder} is in use by another sweep" in second.stderr
        assert "epoch" not in second.stdout
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=120)
    finally:
        stop_group(first)
    assert first.returncode == 130, output(first)[-3000:]
    first_parent = (folder / "parent_run_id").read_text()
    third = run_cli(["-m", "seed=5,6", "trainer.epochs=1", *common], tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    table = pd.read_csv(folder / "summary.csv")
    assert list(table["overrides"].str.split().str[0]) == ["seed=5", "seed=6"]
    third_parent = (folder / "parent_run_id").read_text()
    assert third_parent != first_parent
    (earlier,) = (folder / "earlier").iterdir()
    assert (earlier / "parent_run_id").read_text() == first_parent
    assert len(list((earlier / "results").glob("*.json"))) == 2
    client = MlflowClient(tracking_uri=store_uri)
    assert client.get_run(first_parent).info.status == "KILLED"
    assert client.get_run(third_parent).info.status == "FINISHED"


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_second_copy_of_a_running_sweep_trains_no_job_twice(tmp_path, store_uri, launcher):
    """Issue 28, defect 4: the same sweep started again while the first copy runs. Each job is
    claimed in the store before it is trained: the second copy waits for the jobs the first
    holds and takes their results (skipped), trains only jobs nobody holds, and no config is
    trained twice (before: 6 completed runs for 3 configs)."""
    args = ["-m", "seed=0,1,2", "trainer.epochs=100", "tracking.plots=false"]
    args += [f"hydra/launcher={launcher}", f"tracking.uri={store_uri}"]
    first = popen_cli(args, tmp_path)
    second = None
    try:
        wait_for_output(first, "outputs in ")
        second = popen_cli(args, tmp_path)
        for proc in (first, second):
            proc.wait(timeout=600)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_group(proc)
    for proc in (first, second):
        assert proc.returncode == 0, output(proc)[-3000:]
        assert "Traceback" not in output(proc)
    client, parents, children = sweep_runs(store_uri)
    assert len(parents) == 2
    assert sorted(int(r.data.params["seed"]) for r in children) == [0, 1, 2]  # once each
    assert {(r.info.status, r.data.tags["outcome"]) for r in children} == {
        ("FINISHED", "completed")
    }
    tables = [pd.read_csv(sweep_folder(p) / "summary.csv") for p in (first, second)]
    for table in tables:  # each copy reports every job, trained by it or taken from the other
        assert len(table) == 3 and set(table["run_id"]) == {r.info.run_id for r in children}
    trained = [set(t.loc[t["outcome"] == "completed", "run_id"]) for t in tables]
    assert not trained[0] & trained[1] and len(trained[0] | trained[1]) == 3
    print(f"{launcher}: first copy trained {len(trained[0])}, second {len(trained[1])}")
    claims = [e.name for e in client.search_experiments() if e.name.startswith("bpexp.claim")]
    assert claims == []  # every claim was given back


@pytest.mark.parametrize("case", ["label 2**40", "label 10**6", "npz header", "layer width"])
def test_sizes_that_cannot_fit_stop_the_command_with_exit_2_naming_the_key(
    tmp_path, store_uri, case
):
    """Issue 28, defect 6, from the command line: each case crashed with a raw MemoryError
    (exit 1) or built a 1,000,001-output network; each now stops before any run with exit 2
    and a message naming the key."""
    from tests.test_datafiles import npz_claiming

    data = tmp_path / "data.npz"
    if case.startswith("label"):
        label = 2**40 if case.endswith("40") else 10**6
        np.savez(data, X=np.ones((30, 3)), y=np.array([0, 1] * 14 + [1, label], dtype=np.int64))
        args, key = ["data=file", f"data.path={data}"], "data.path"
    elif case == "npz header":
        data.write_bytes(npz_claiming((10**7, 10**5)))
        args, key = ["data=file", f"data.path={data}"], "data.path"
    else:
        args, key = ["network.hidden=[1000000000]"], "network.hidden"
    out = run_cli([*args, "trainer.epochs=1", f"tracking.uri={store_uri}"], tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr
    assert f"error: {key}" in out.stderr, out.stderr[-3000:]
    assert "epoch" not in out.stdout
    client = MlflowClient(tracking_uri=store_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


HOSTILE_SWEEP_TAG = "x\n![a](../../../../../../../../../etc/hostname)\ny"


def test_a_hostile_sweep_tag_makes_the_report_read_or_create_nothing_outside_it(tmp_path):
    """Issue 28, defect 8: anyone who can set a tag on a shared store set the parent's `sweep`
    tag to the value above. `python -m bpexp.report` then made a folder under /etc/ and
    embedded /etc/hostname in index.html, which it logged to the run. No value read from the
    store may become a path or a file read: the folder name is sanitised into a fixed
    alphabet, only the report's own PNGs are embedded, and the name is shown as inert text."""
    import base64

    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    swept = run_cli(["-m", "seed=0,1", "trainer.epochs=1", f"tracking.uri={uri}"], work)
    assert swept.returncode == 0, swept.stderr[-3000:]
    client, (parent,), _ = sweep_runs(uri)
    client.set_tag(parent.info.run_id, "sweep", HOSTILE_SWEEP_TAG)
    etc_before = set(os.listdir("/etc"))
    tree_before = {p for p in tmp_path.rglob("*") if p.is_dir()}

    out = run_cli(["--tracking-uri", uri], work, module="bpexp.report")
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(os.listdir("/etc")) == etc_before  # no folder made under /etc/
    made = {p for p in tmp_path.rglob("*") if p.is_dir()} - tree_before
    (folder,) = [p for p in made if p.parent == work / "reports"]
    assert made <= {work / "reports", folder, *folder.rglob("*")}, made
    assert re.fullmatch(r"[\w.-]+", folder.name) and folder.name.startswith("x_")
    assert folder.name.endswith(f"-{parent.info.run_id[:8]}")

    secret = Path("/etc/hostname").read_bytes()
    logged = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path / "dl")))
    for page in (folder / "index.html", logged / "index.html"):
        html = page.read_text()
        assert base64.b64encode(secret).decode() not in html
        sources = [s.split('"', 1)[0] for s in html.split('src="')[1:]]
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
        assert "href=" not in html and "<img" not in html.replace('<img alt="', "")
    for page in (folder / "index.md", logged / "index.md"):
        links = [link.split(")")[0] for link in page.read_text().split("](")[1:]]
        assert links and all(re.fullmatch(r"[\w.-]+\.png", link) for link in links), links
        assert all((folder / link).is_file() for link in links)


def test_joblib_workers_of_a_killed_launcher_close_their_runs_and_exit(tmp_path, store_uri):
    """Issue 28 ("also weak"): kill -9 of a joblib sweep's launching process alone left its
    workers alive as orphans, ignoring SIGTERM, their runs RUNNING. A job process watches its
    launcher: once it is gone, the job in progress closes its run KILLED and the process
    exits."""
    args = [*LONG_SWEEP, "hydra/launcher=joblib", "tracking.plots=false"]
    proc = popen_cli([*args, f"tracking.uri={store_uri}"], tmp_path)
    try:
        training = wait_for_training_runs(store_uri, 2, proc)
        client = MlflowClient(tracking_uri=store_uri)
        workers = {int(client.get_run(r).data.tags["bpexp.pid"]) for r in training}
        assert proc.pid not in workers and len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, as a crash would
        proc.wait(timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.5)
        alive = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not alive, f"workers {alive} outlived their launcher by 120 s"
    finally:
        stop_group(proc)
    for run_id in training:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"
        assert len(client.get_metric_history(run_id, "train/loss")) >= 1
