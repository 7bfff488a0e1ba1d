"""Sweeps through a real SLURM cluster (tests/slurm_cluster.py: munged, MariaDB, slurmdbd,
slurmctld and slurmd started by the test): ``hydra/launcher=slurm`` as shipped, only the
partition overridden, and a ``scancel`` of one running job."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from bpexp import tracking
from tests.conftest import cli_env, run_cli, start_mlflow_server
from tests.slurm_cluster import PARTITION, slurm_cluster  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow


def sweep_args(folder: Path, *overrides: str) -> list[str]:
    return [
        "-m",
        *overrides,
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={PARTITION}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
    ]


def runs(folder: Path):
    """(the sweep's parent run, its job runs by trainer.epochs and lr) in the store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    found = client.search_runs(["1"]) if client.get_experiment("1") else []
    parents = [r for r in found if r.data.tags.get("bpexp.kind") == "sweep"]
    jobs = [r for r in found if r.data.tags.get("bpexp.kind") != "sweep"]
    return client, parents, jobs


def accounting(cluster, job: str) -> dict[str, tuple[str, str]]:
    """sacct's view of an array job: task id (``N_k``) -> (raw job id, state)."""
    out = cluster.run("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,JobIDRaw,State")
    rows = [line.split("|") for line in out.stdout.splitlines() if line]
    return {task: (raw, state) for task, raw, state in rows}


@pytest.fixture(scope="module")
def slurm_sweep(slurm_cluster, tmp_path_factory):  # noqa: F811
    """``python -m bpexp -m optimizer.lr=0.3,1.0 trainer.epochs=2 hydra/launcher=slurm
    hydra.launcher.partition=debug tracking.uri=sqlite:///...`` in a fresh folder."""
    folder = tmp_path_factory.mktemp("slurm_sweep")
    started = time.monotonic()
    out = run_cli(
        sweep_args(folder, "optimizer.lr=0.3,1.0", "trainer.epochs=2"),
        cwd=folder,
        timeout=600,
        SLURM_CONF=str(slurm_cluster.conf),
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (submitted,) = {p.name.split("_")[0] for p in folder.glob("multirun/*/*/.submitit/[0-9]*_*")}
    return {"folder": folder, "out": out, "job": submitted, "seconds": elapsed}


def test_the_shipped_slurm_launcher_runs_a_multirun_with_only_the_partition_set(
    slurm_sweep,
    slurm_cluster,  # noqa: F811
):
    folder, out = slurm_sweep["folder"], slurm_sweep["out"]
    assert "Submitit 'slurm' sweep output dir" in out.stderr + out.stdout
    assert "sweep summary (2 jobs: 2 completed)" in out.stdout
    # Both jobs ran as one SLURM job array, and the cluster's accounting saw them complete.
    tasks = accounting(slurm_cluster, slurm_sweep["job"])
    job = slurm_sweep["job"]
    assert {task: state for task, (_, state) in tasks.items()} == {
        f"{job}_0": "COMPLETED",
        f"{job}_1": "COMPLETED",
    }
    _, parents, jobs = runs(folder)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(float(r.data.params["optimizer.lr"]) for r in jobs) == [0.3, 1.0]
    for run in jobs:
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
        assert run.data.params["trainer.epochs"] == "2"
        assert run.data.tags["bpexp.host"] == slurm_cluster.node
    # Each job logged to the store the launcher reads, from its own SLURM process.
    assert len({r.data.tags["bpexp.pid"] for r in jobs}) == 2
    print(f"SLURM array {job}: {tasks} in {slurm_sweep['seconds']:.0f} s")


def test_each_run_is_tagged_with_its_slurm_job_id(slurm_sweep, slurm_cluster):  # noqa: F811
    tasks = accounting(slurm_cluster, slurm_sweep["job"])
    ids = {raw for raw, _ in tasks.values()} | set(tasks)
    _, _, jobs = runs(slurm_sweep["folder"])
    tagged = [r.data.tags.get("bpexp.slurm_job_id") for r in jobs]
    assert len(tagged) == 2 and set(tagged) <= ids and len(set(tagged)) == 2


def test_scancel_of_one_running_job_closes_its_run_killed_with_its_points(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    if not slurm_cluster.accounting:
        pytest.skip("no slurmdbd + MariaDB: submitit cannot read a cancelled job's state")
    # Job 0 trains 2 epochs, job 1 3000 (minutes): job 1 is cancelled while it trains.
    log = (tmp_path / "launcher.out").open("w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "bpexp", *sweep_args(tmp_path, "trainer.epochs=2,3000")],
        cwd=tmp_path,
        env=cli_env(SLURM_CONF=str(slurm_cluster.conf)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client, run = _wait_for_long_run_with_points(launcher, tmp_path, points=20)
        (task,) = [
            line.split()[0]
            for line in slurm_cluster.run("squeue", "-h", "-o", "%i %T").stdout.splitlines()
            if line.endswith("RUNNING") and line.split()[0].endswith("_1")
        ]
        cancelled_at = time.time()
        slurm_cluster.run("scancel", task)
        launcher.wait(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()
    output = (tmp_path / "launcher.out").read_text()
    assert "#1 : trainer.epochs=3000" in output, output[-3000:]
    assert "sweep summary (2 jobs: 1 completed, 1 interrupted)" in output, output[-3000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"
    # Closed by bpexp's SIGTERM handler well before SLURM's SIGKILL (KillWait seconds later).
    closed_after = run.info.end_time / 1000 - cancelled_at
    assert 0 < closed_after < slurm_cluster.kill_wait, closed_after
    # With its points: every epoch it trained, none missing, up to the interruption.
    history = {
        key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        for key in ("train/loss", "val/loss", "grad_norm/W1")
    }
    epochs = len(history["train/loss"])
    assert 20 <= epochs < 3000
    assert all(steps == list(range(epochs)) for steps in history.values()), history
    assert client.get_metric_history(run.info.run_id, "train/batch_loss")
    job = task.split("_")[0]
    states = {t: state for t, (_, state) in accounting(slurm_cluster, job).items()}
    assert states[f"{job}_0"] == "COMPLETED" and states[task].startswith("CANCELLED")
    _, parents, jobs = runs(tmp_path)
    short = [r for r in jobs if r.data.params["trainer.epochs"] == "2"]
    assert [r.info.status for r in short] == ["FINISHED"]
    # The sweep is not complete: its parent is KILLED and the command says how to finish it.
    assert [p.info.status for p in parents] == ["KILLED"]
    assert launcher.returncode == 1
    assert "1 job(s) interrupted: the same command again resumes" in output
    print(
        f"scancel {task}: run {run.info.run_id} KILLED {closed_after:.1f} s later, {epochs} epochs"
    )


def _wait_for_long_run_with_points(launcher, folder: Path, points: int, timeout: float = 300):
    """The job run of 3000 epochs once it is RUNNING with ``points`` train/loss points."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, (folder / "launcher.out").read_text()[-3000:]
        if (folder / "mlflow.db").exists():
            try:
                client, _, jobs = runs(folder)
            except Exception:  # the store is being created
                jobs = []
            for run in jobs:
                if run.data.params.get("trainer.epochs") == "3000" and run.info.status == "RUNNING":
                    history = client.get_metric_history(run.info.run_id, "train/loss")
                    if len(history) >= points:
                        return client, run
        time.sleep(1)
    raise AssertionError(f"no running 3000-epoch run with {points} points in {timeout} s")


# ------------------------------------------------------------ preemption and exact resume


def queue(cluster) -> dict[str, tuple[str, str]]:
    """squeue's view: job id (``N`` or ``N_k``) -> (state, reason)."""
    out = cluster.run("squeue", "-h", "-o", "%i %T %r")
    return {
        job: (state, reason)
        for job, state, reason in (line.split(maxsplit=2) for line in out.stdout.splitlines())
    }


def wait_for(what: str, ready, launcher, log: Path, timeout: float = 300):
    """Poll ``ready()`` until it returns something true; the launcher must live meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, log.read_text()[-3000:]
        found = ready()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s; {log.read_text()[-3000:]}")


def start_launcher(cluster, folder: Path, *overrides: str) -> subprocess.Popen:
    log = (folder / "launcher.out").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "bpexp", *sweep_args(folder, *overrides)],
        cwd=folder,
        env=cli_env(SLURM_CONF=str(cluster.conf)),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def release_if_held(cluster, job: str) -> bool:
    """SLURM holds a requeued job for about two minutes (reason BeginTime); a scheduler starts
    it then by itself. The test starts it at once, to save that time; True once it runs."""
    state, reason = queue(cluster).get(job, ("", ""))
    if state == "PENDING" and reason == "BeginTime":
        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    return state == "RUNNING"


LONG = ["trainer.epochs=2500", "trainer.checkpoint_every=100", "tracking.plots=false"]


def test_sigusr2_requeues_the_job_and_it_resumes_the_same_run_bit_identical(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    """SLURM's warning before a time limit or a preemption (SIGUSR2, here sent with
    ``scancel --signal=USR2``): the job closes its run KILLED, submitit requeues it, and the
    requeued job continues the same MLflow run from its last checkpoint. Twice; the final
    weights equal a run never interrupted (basic launcher), bit for bit, and the metric
    history has every epoch once."""
    log = tmp_path / "launcher.out"
    launcher = start_launcher(slurm_cluster, tmp_path, *LONG)
    client = None
    try:
        job = wait_for(
            "a running job", lambda: next(iter(queue(slurm_cluster)), None), launcher, log
        )
        after = -1
        for resumes in range(2):

            def checkpointed(after=after, resumes=resumes):
                if not (tmp_path / "mlflow.db").exists():
                    return None
                try:
                    client, _, jobs = runs(tmp_path)
                except Exception:  # the store is being created
                    return None
                for run in jobs:
                    tags = run.data.tags
                    if (
                        run.info.status == "RUNNING"
                        and int(tags.get("bpexp.resumes", "0")) == resumes
                        and int(tags.get("bpexp.checkpoint_epoch", "-1")) > after
                    ):
                        return client, run
                return None

            client, run = wait_for(f"checkpoint after {after}", checkpointed, launcher, log)
            slurm_cluster.run("scancel", "--signal=USR2", job)
            wait_for(
                "the job requeued",
                lambda: queue(slurm_cluster).get(job, ("",))[0] == "PENDING",
                launcher,
                log,
            )

            # submitit requeues the job (PENDING) before the SystemExit that closes the run
            # unwinds the job's process: the run is KILLED a moment later, not at once.
            def closed(run_id=run.info.run_id, client=client):
                found = client.get_run(run_id)
                return found if found.info.status != "RUNNING" else None

            killed = wait_for("the run closed", closed, launcher, log, timeout=60)
            assert killed.info.status == "KILLED" and killed.data.tags["outcome"] == "interrupted"
            after = int(killed.data.tags["bpexp.checkpoint_epoch"])
            wait_for(
                "the requeued job running",
                lambda: release_if_held(slurm_cluster, job),
                launcher,
                log,
            )
        launcher.wait(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    output = log.read_text()
    assert launcher.returncode == 0, output[-3000:]
    assert "sweep summary (1 jobs: 1 completed)" in output, output[-3000:]
    client, (parent,), (run,) = runs(tmp_path)  # one run all along
    assert parent.info.status == "FINISHED"
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["outcome"] == "completed"
    assert tags["bpexp.resumes"] == "2" and tags["bpexp.slurm_job_id"] == job
    assert int(tags["bpexp.resumed_from_epoch"]) == after
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert steps == list(range(2501))
    states = slurm_cluster.run("sacct", "-n", "-X", "-P", "-j", job, "-o", "State").stdout
    assert "REQUEUED" in states or "PREEMPTED" in states or "COMPLETED" in states, states
    # The same config, never interrupted, on the basic launcher (its own store).
    ref = tmp_path / "reference"
    ref.mkdir()
    out = run_cli([*LONG, f"tracking.uri=sqlite:///{ref / 'mlflow.db'}"], cwd=ref, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ref_client = MlflowClient(tracking_uri=f"sqlite:///{ref / 'mlflow.db'}")
    (ref_run,) = ref_client.search_runs(["1"])
    mine = np.load(client.download_artifacts(run.info.run_id, "weights/final.npz", str(tmp_path)))
    theirs = np.load(
        ref_client.download_artifacts(ref_run.info.run_id, "weights/final.npz", str(ref))
    )
    assert sorted(mine) == sorted(theirs) and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    ref_steps = {
        key: [(m.step, m.value) for m in ref_client.get_metric_history(ref_run.info.run_id, key)]
        for key in ("val/loss", "train/accuracy", "grad_norm/W1")
    }
    for key, expected in ref_steps.items():
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == sorted(expected), key
    print(f"SLURM job {job}: 2 x SIGUSR2, requeued, resumed from epoch {after}: bit-identical")


def test_scancel_of_the_whole_array_kills_the_parent_and_a_rerun_finishes_the_rest(
    slurm_cluster,  # noqa: F811
    tmp_path,
):
    if not slurm_cluster.accounting:
        pytest.skip("no slurmdbd + MariaDB: submitit cannot read a cancelled job's state")
    log = tmp_path / "launcher.out"
    overrides = ["trainer.epochs=2500,2501", "trainer.checkpoint_every=100", "tracking.plots=false"]
    launcher = start_launcher(slurm_cluster, tmp_path, *overrides)
    try:

        def both_checkpointed():
            if not (tmp_path / "mlflow.db").exists():
                return None
            try:
                _, _, jobs = runs(tmp_path)
            except Exception:
                return None
            done = [r for r in jobs if "bpexp.checkpoint_epoch" in r.data.tags]
            return len(done) == 2 and {r.data.tags["bpexp.slurm_job_id"] for r in done}

        tasks = wait_for("two runs with a checkpoint", both_checkpointed, launcher, log)
        (array,) = {task.split("_")[0] for task in tasks}
        slurm_cluster.run("scancel", array)
        launcher.wait(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    output = log.read_text()
    assert launcher.returncode == 1, output[-3000:]
    assert "sweep summary (2 jobs: 2 interrupted)" in output, output[-3000:]
    assert "2 job(s) interrupted: the same command again resumes" in output
    assert "Traceback" not in output, output[-3000:]
    client, (parent,), jobs = runs(tmp_path)
    assert parent.info.status == "KILLED"
    assert sorted(r.info.status for r in jobs) == ["KILLED", "KILLED"]
    (summary,) = tmp_path.glob("multirun/*/*/summary.csv")
    assert list(pd.read_csv(summary)["outcome"]) == ["interrupted", "interrupted"]
    # The same command again: both runs resume from their checkpoints and finish.
    again = run_cli(
        sweep_args(tmp_path, *overrides),
        cwd=tmp_path,
        timeout=900,
        SLURM_CONF=str(slurm_cluster.conf),
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "sweep summary (2 jobs: 2 completed)" in again.stdout
    client, parents, jobs = runs(tmp_path)
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]
    assert len(jobs) == 2, [r.info.run_id for r in jobs]  # resumed, not run anew
    for run in jobs:
        assert run.info.status == "FINISHED" and run.data.tags["bpexp.resumes"] == "1"
        epochs = int(run.data.params["trainer.epochs"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
        assert steps == list(range(epochs + 1))
    print(f"scancel {array}: parent KILLED, exit 1; the rerun resumed both runs")


def test_a_run_whose_slurm_job_ended_is_stale_from_any_host(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    """The stale-run check asks the scheduler about a run's SLURM job, not this host about a
    pid: a RUNNING run of a job that ended is closed as interrupted, one of a job still
    running is left alone, as is one of another host without a job id (cannot tell)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    batch = ["sbatch", "--parsable", "-p", PARTITION, "-o", str(tmp_path / "slurm-%j.out")]
    ended = slurm_cluster.run(*batch, "--wrap", "true")
    ended = ended.stdout.strip().split(";")[0]
    alive = slurm_cluster.run(*batch, "--wrap", "sleep 300")
    alive = alive.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = queue(slurm_cluster)
        if ended not in states and states.get(alive, ("",))[0] == "RUNNING":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"jobs {ended} (to end) and {alive} (to run): {queue(slurm_cluster)}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.connect(uri)
    experiment = tracking.ensure_experiment(client, "stale")
    elsewhere = {"bpexp.host": "a-node-far-away", "bpexp.pid": "4242424"}
    runs_by_case = {}
    for case, job in (
        ("ended", ended),
        ("alive", alive),
        ("forgotten", "999999"),
        ("no job", None),
    ):
        tags = {**elsewhere, **({"bpexp.slurm_job_id": job} if job else {})}
        runs_by_case[case] = client.create_run(experiment, tags=tags).info.run_id
    closed = tracking.close_stale_runs(client, experiment)
    assert sorted(closed) == sorted([runs_by_case["ended"], runs_by_case["forgotten"]])
    status = {case: client.get_run(run).info.status for case, run in runs_by_case.items()}
    assert status == {
        "ended": "KILLED",
        "alive": "RUNNING",
        "forgotten": "KILLED",
        "no job": "RUNNING",
    }
    assert client.get_run(runs_by_case["ended"]).data.tags["bpexp.stale"] == "process gone"
    slurm_cluster.run("scancel", alive)
    deadline = time.monotonic() + 120
    while alive in queue(slurm_cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert tracking.close_stale_runs(client, experiment) == [runs_by_case["alive"]]


# ----------------------------------------------------------------- the main job on SLURM

MAIN_JOB = [
    "sweep=optimizers",
    "hydra.sweeper.protocol.search.optimizer.lr.points=3",
    "hydra.sweeper.protocol.tune_seeds=[0]",
    "hydra.sweeper.protocol.confirm_seeds=[100,101]",
    "trainer.epochs=3",
    "tracking.plots=false",
]


def test_the_main_job_through_slurm_gives_the_basic_launchers_answer(
    slurm_cluster,  # noqa: F811
    postgres_url,
    tmp_path,
):
    """``python -m bpexp sweep=optimizers hydra/launcher=slurm`` (shrunk: 3 learning rates, one
    tuning seed, two confirm seeds, 3 epochs) against the README's cluster store, an `mlflow
    server` on PostgreSQL: the tune stage and then the confirm stage run as SLURM job arrays,
    and the answer (protocol/final_table.csv, the chosen settings) is the basic launcher's,
    value for value."""
    url, server = start_mlflow_server(tmp_path, backend=postgres_url)
    try:
        slurm = tmp_path / "slurm"
        slurm.mkdir()
        args = [*MAIN_JOB, "hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}"]
        out = run_cli(
            [*args, f"tracking.uri={url}"],
            cwd=slurm,
            timeout=1200,
            SLURM_CONF=str(slurm_cluster.conf),
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        found = client.search_runs([client.get_experiment_by_name("bpexp").experiment_id])
        jobs = [r for r in found if r.data.tags.get("bpexp.kind") != "sweep"]
        assert len(jobs) == 15 and {r.info.status for r in jobs} == {"FINISHED"}
        stages = {r.data.tags["bpexp.stage"] for r in jobs}
        assert stages == {"tune", "confirm"}
        assert all(r.data.tags.get("bpexp.slurm_job_id") for r in jobs)
        arrays = {r.data.tags["bpexp.slurm_job_id"].split("_")[0] for r in jobs}
        assert len(arrays) == 2  # one job array per stage
    finally:
        server.terminate()
        server.wait(timeout=60)
    basic = tmp_path / "basic"
    basic.mkdir()
    ref = run_cli([*MAIN_JOB, f"tracking.uri=sqlite:///{basic / 'mlflow.db'}"], cwd=basic)
    assert ref.returncode == 0, ref.stderr[-3000:]
    for name in ("final_table.csv", "chosen.csv"):
        (mine,) = slurm.glob(f"multirun/*/*/protocol/{name}")
        (theirs,) = basic.glob(f"multirun/*/*/protocol/{name}")
        pd.testing.assert_frame_equal(pd.read_csv(mine), pd.read_csv(theirs), check_exact=True)
    (final,) = slurm.glob("multirun/*/*/protocol/final_table.csv")
    table = pd.read_csv(final)
    print(f"main job on SLURM (arrays {sorted(arrays)}): final table = basic launcher's")
    print(table[["arm", "optimizer.lr", "mean"]].to_string(index=False))
