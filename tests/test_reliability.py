"""Reliability on real processes: commands racing on a fresh store, Ctrl-C/SIGTERM on parallel
sweeps, runs left RUNNING by a dead process, read-only and full disks, a PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import cli_env, free_port

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
