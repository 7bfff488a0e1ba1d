"""The README's sweep guarantees, each on a real store and a real `python -m bpexp` multirun:
what a rerun skips, what a config hash takes in, a bad job between good ones, the parent run's
first valid job, one BLAS thread a parallel job, and a tracking server that does not answer."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

import bpexp
from bpexp.errors import TrackingError
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

DIVERGING = ["network.activation=relu", "network.output_activation=linear", "network.init=he"]


def runs_in(uri: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bpexp")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = [r for r in runs if r.data.tags.get("bpexp.kind") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("bpexp.kind") != "sweep"]


def latest_summary(folder: Path) -> pd.DataFrame:
    return pd.read_csv(sorted(folder.glob("multirun/*/*/summary.csv"))[-1])


def test_rerun_skips_diverged_jobs_and_runs_failed_ones_again(tmp_path, store_uri):
    common = [*DIVERGING, "trainer.epochs=2", "tracking.plots=false", f"tracking.uri={store_uri}"]

    # A failed run of the lr=0.1 job (a listener raising mid-training), as a crash would leave.
    def broken(record):
        if getattr(record, "epoch", 0) == 1:
            raise RuntimeError("crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        bpexp.run([*common, "optimizer.lr=0.1"], listeners=[broken], echo=False)
    (failed,) = runs_in(store_uri)[1]
    assert failed.info.status == "FAILED"

    args = ["-m", "optimizer.lr=1000,0.1", *common]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert list(latest_summary(tmp_path)["outcome"]) == ["diverged", "completed"]  # ran again
    second = run_cli(args, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert list(latest_summary(tmp_path)["outcome"]) == ["skipped", "skipped"]
    assert "already has this exact config (diverged)" in second.stdout
    assert "already has this exact config (completed)" in second.stdout
    outcomes = sorted(
        (float(r.data.params["optimizer.lr"]), r.data.tags["outcome"])
        for r in runs_in(store_uri)[1]
    )
    assert outcomes == [(0.1, "completed"), (0.1, "failed"), (1000.0, "diverged")]


def test_a_changed_init_file_is_a_new_job(tmp_path, store_uri):
    from bpexp.network import Network, initialize, save_weights
    from bpexp.rng import stream

    path = tmp_path / "init.npz"
    net = Network([64, 30, 10])
    initialize(net, "normal", stream(1, "init"))
    save_weights(net, path)
    args = [
        "network.init=file",
        f"network.init_path={path}",
        "trainer.epochs=1",
        "tracking.plots=false",
        f"tracking.uri={store_uri}",
    ]
    first = bpexp.run(args, echo=False)
    assert not first.skipped
    assert bpexp.run(args, echo=False).skipped  # same path, same content: done already
    initialize(net, "normal", stream(2, "init"))
    save_weights(net, path)  # same path, new content
    changed = bpexp.run(args, echo=False)
    assert not changed.skipped and changed.run_id != first.run_id
    assert not np.array_equal(changed.weights["W1"], first.weights["W1"])
    hashes = {r.data.tags["bpexp.config_hash"] for r in runs_in(store_uri)[1]}
    assert len(hashes) == 2


def test_the_sweep_goes_on_after_a_bad_job_in_the_middle(tmp_path, store_uri):
    # Job 1 is refused while building (a 10^11-unit layer cannot fit in memory: an invalid
    # config naming network.hidden, checked before allocating); jobs 0 and 2 around it complete.
    hidden = "network.hidden=[20],[100000000000],[30]"
    proc = run_cli(
        ["-m", hidden, "trainer.epochs=1", "tracking.plots=false", f"tracking.uri={store_uri}"],
        tmp_path,
    )
    assert proc.returncode == 1
    assert "job 1 invalid" in proc.stderr and "network.hidden" in proc.stderr
    table = latest_summary(tmp_path)
    assert list(table["outcome"]) == ["completed", "invalid", "completed"]
    (parent,), children = runs_in(store_uri)
    assert sorted(r.data.params["network.hidden"] for r in children) == ["[20]", "[30]"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}


def test_the_first_valid_job_creates_the_parent_run(tmp_path, store_uri):
    # Jobs 0 and 2 are invalid (a negative learning rate): job 1 creates the parent, job 2's
    # error does not stop job 3, and both valid jobs hang under the one parent.
    proc = run_cli(
        [
            "-m",
            "optimizer.lr=-1,0.5,-2,1.0",
            "trainer.epochs=1",
            "tracking.plots=false",
            f"tracking.uri={store_uri}",
            "verbose=2",  # the jobs' own lines: the one that creates the parent says so
        ],
        tmp_path,
    )
    assert proc.returncode == 1
    assert list(latest_summary(tmp_path)["outcome"]) == [
        "invalid",
        "completed",
        "invalid",
        "completed",
    ]
    assert "optimizer.lr" in proc.stderr
    out = proc.stdout
    created = out.index("parent run ")
    assert out[created:].startswith(f"parent run {runs_in(store_uri)[0][0].info.run_id} created")
    assert out.index("#0 :") < out.index("#1 :") < created < out.index("#2 :")
    (parent,), children = runs_in(store_uri)
    assert parent.info.status == "FAILED"  # invalid jobs make the sweep fail
    assert sorted(float(r.data.params["optimizer.lr"]) for r in children) == [0.5, 1.0]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    first_child_start = min(r.info.start_time for r in children)
    assert parent.info.start_time <= first_child_start


PROBE = '''
import json, os
from pathlib import Path

from hydra.experimental.callback import Callback
from threadpoolctl import threadpool_info


class BlasProbe(Callback):
    """Records, from inside each job's process after the job ran, its BLAS thread pools."""

    def on_job_end(self, config, job_return, **kwargs):
        folder = Path(os.environ["BLAS_PROBE_DIR"])
        pools = [p for p in threadpool_info() if p["user_api"] == "blas"]
        (folder / f"{os.getpid()}-{job_return.hydra_cfg.hydra.job.num}.json").write_text(
            json.dumps({"pid": os.getpid(), "pools": pools})
        )
'''


def test_parallel_jobs_use_one_blas_thread_each(tmp_path):
    # A Hydra callback (in the job's process, after the job) reads threadpoolctl's view of
    # the BLAS pools; this machine's OpenBLAS would use every core without the limit.
    (tmp_path / "blas_probe.py").write_text(PROBE)
    probes = tmp_path / "probes"
    probes.mkdir()
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    proc = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "+hydra.callbacks.blas_probe._target_=blas_probe.BlasProbe",
            "optimizer=sgd,momentum",
            "seed=0,1",
            "trainer.epochs=1",
            "tracking.enabled=false",
        ],
        tmp_path,
        timeout=600,
        PYTHONPATH=path,
        BLAS_PROBE_DIR=str(probes),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    assert len(seen) == 4
    assert len({s["pid"] for s in seen}) == 2, "the jobs did not run in two processes"
    assert all(s["pools"] for s in seen), "no BLAS library seen in a job"
    assert {pool["num_threads"] for s in seen for pool in s["pools"]} == {1}


def test_a_silent_server_fails_within_the_timeout():
    # A socket that accepts connections and never answers: the /health probe must give up
    # after tracking.timeout_seconds, not hang in the client's retries.
    from bpexp import tracking

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError, match="does not answer"):
            tracking.connect(url, timeout=1.0)
        waited = time.monotonic() - started
    assert 1.0 <= waited < 10.0  # the timeout, not MLflow's minutes of retries
