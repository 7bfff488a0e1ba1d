"""Exact resume through the shell (bpexp/app.py ``execute``, bpexp/tracking.py): an
interrupted run of a config continues from its last checkpoint (the artifact
``checkpoint/last.npz``) in the *same* MLflow run, and ends bit-identical to a run never
interrupted: final weights, every metric point (key, step, value), history.parquet.

The in-process tests interrupt from a listener (the KeyboardInterrupt that Ctrl-C raises);
the slow one sends real SIGINTs to ``python -m bpexp`` and runs the same command again. The
SLURM path (SIGUSR2, requeue) is in tests/test_slurm.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from bpexp import app
from bpexp.trainer import EpochRecord
from tests.conftest import cli_env, run_cli

EPOCHS = 24
BASE = ["trainer.epochs=24", "trainer.checkpoint_every=4", "tracking.plots=false"]


class StopAt:
    """A listener that raises KeyboardInterrupt (what Ctrl-C raises) once epoch ``epoch`` has
    been emitted to the listeners before it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, record) -> None:
        if isinstance(record, EpochRecord) and record.epoch == self.epoch:
            raise KeyboardInterrupt


def overrides(uri: str, *extra: str) -> list[str]:
    return [*BASE, *extra, f"tracking.uri={uri}"]


def points(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric point of a run, by key, in step order."""
    run = client.get_run(run_id)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in run.data.metrics
    }


def history_table(client: MlflowClient, run_id: str, folder: Path) -> pd.DataFrame:
    path = client.download_artifacts(run_id, "history.parquet", str(folder / run_id))
    table = pd.read_parquet(path).drop(columns="run_id")
    return table.sort_values(["metric", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module", params=["sgd", "nesterov"])
def reference(request, tmp_path_factory):
    """The uninterrupted run of each optimizer (Nesterov: the optimizer's buffers cross the
    checkpoint), in a store of its own."""
    folder = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    extra = (f"optimizer={request.param}",)
    out = app.execute(app.compose(overrides(uri, *extra)), echo=False)
    client = MlflowClient(tracking_uri=uri)
    return {
        "extra": extra,
        "out": out,
        "points": points(client, out.run_id),
        "history": history_table(client, out.run_id, folder),
    }


@pytest.mark.parametrize("stops", [[5], [9, 10], [6, 13, 22]], ids=["at5", "at9-10", "at6-13-22"])
def test_interrupted_runs_resume_into_the_same_run_bit_identical(
    reference, stops, store_uri, tmp_path
):
    cfg = overrides(store_uri, *reference["extra"])
    client = MlflowClient(tracking_uri=store_uri)
    run_id = None
    resumed_from = []
    for stop in stops:
        with pytest.raises(KeyboardInterrupt):
            app.execute(app.compose(cfg), echo=False, listeners=[StopAt(stop)])
        (run,) = client.search_runs(["1"])  # one run all along
        assert run_id in (None, run.info.run_id)
        run_id = run.info.run_id
        assert run.info.status == "KILLED" and run.data.tags["outcome"] == "interrupted"
        # the last checkpoint before the stop (every 4 epochs): at 9 and again at 10, epoch 8
        checkpointed = int(run.data.tags["bpexp.checkpoint_epoch"])
        assert checkpointed == (stop - 1) // 4 * 4, (stop, checkpointed)
        resumed_from.append(checkpointed)
    out = app.execute(app.compose(cfg), echo=False)
    (run,) = client.search_runs(["1"])
    assert out.run_id == run.info.run_id == run_id
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    assert run.data.tags["bpexp.resumes"] == str(len(stops))
    assert run.data.tags["bpexp.resumed_from_epoch"] == str(resumed_from[-1])
    ref = reference["out"]
    assert ref.weights.keys() == out.weights.keys()
    for name in ref.weights:
        assert np.array_equal(ref.weights[name], out.weights[name]), name
    # Every point of every metric, once, with the uninterrupted run's value: no gap, no
    # repeated step, although epochs after each checkpoint were trained twice.
    assert points(client, run_id) == reference["points"]
    pd.testing.assert_frame_equal(history_table(client, run_id, tmp_path), reference["history"])
    final = np.load(client.download_artifacts(run_id, "weights/final.npz", str(tmp_path / "w")))
    assert all(np.array_equal(final[k], ref.weights[k]) for k in ref.weights)


def test_force_starts_a_new_run_and_leaves_the_interrupted_one(store_uri):
    cfg = overrides(store_uri)
    with pytest.raises(KeyboardInterrupt):
        app.execute(app.compose(cfg), echo=False, listeners=[StopAt(10)])
    client = MlflowClient(tracking_uri=store_uri)
    (killed,) = client.search_runs(["1"])
    out = app.execute(app.compose([*cfg, "force=true"]), echo=False)
    assert out.run_id != killed.info.run_id
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    fresh = client.get_run(out.run_id)
    assert "bpexp.resumes" not in fresh.data.tags
    assert [m.step for m in client.get_metric_history(out.run_id, "val/loss")] == list(
        range(EPOCHS + 1)
    )


def test_a_run_stopped_before_its_first_checkpoint_starts_over(store_uri):
    cfg = overrides(store_uri)
    with pytest.raises(KeyboardInterrupt):
        app.execute(app.compose(cfg), echo=False, listeners=[StopAt(2)])
    client = MlflowClient(tracking_uri=store_uri)
    (killed,) = client.search_runs(["1"])
    assert "bpexp.checkpoint_epoch" not in killed.data.tags
    out = app.execute(app.compose(cfg), echo=False)
    assert out.run_id != killed.info.run_id
    assert client.get_run(out.run_id).info.status == "FINISHED"


def test_a_damaged_checkpoint_starts_a_new_run_and_says_why(store_uri, capsys):
    cfg = overrides(store_uri)
    with pytest.raises(KeyboardInterrupt):
        app.execute(app.compose(cfg), echo=False, listeners=[StopAt(10)])
    client = MlflowClient(tracking_uri=store_uri)
    (killed,) = client.search_runs(["1"])
    uri = client.get_run(killed.info.run_id).info.artifact_uri
    saved = Path(uri.removeprefix("file://")) / "checkpoint" / "last.npz"
    assert saved.is_file()
    saved.write_bytes(saved.read_bytes()[:300])  # cut short, as a kill -9 mid-copy leaves it
    out = app.execute(app.compose(cfg), echo=False)
    assert "warning: not resumed, a new run starts" in capsys.readouterr().err
    assert out.run_id != killed.info.run_id
    assert client.get_run(out.run_id).info.status == "FINISHED"


def test_a_failed_run_is_not_resumed(store_uri):
    """A run that FAILED (an error, maybe a bug) runs again from epoch 0."""

    def fail(record):
        if isinstance(record, EpochRecord) and record.epoch == 10:
            raise RuntimeError("a bug")

    cfg = overrides(store_uri)
    with pytest.raises(RuntimeError):
        app.execute(app.compose(cfg), echo=False, listeners=[fail])
    client = MlflowClient(tracking_uri=store_uri)
    (failed,) = client.search_runs(["1"])
    assert failed.info.status == "FAILED" and failed.data.tags["bpexp.checkpoint_epoch"] == "8"
    out = app.execute(app.compose(cfg), echo=False)
    assert out.run_id != failed.info.run_id


def test_the_checkpoint_in_the_store_follows_every_point_before_it(store_uri, tmp_path):
    """When the checkpoint of epoch 8 is written, every point up to epoch 8 is already in the
    store (a resume never leaves a gap): the listener after the logger sees the store."""
    from bpexp.checkpoint import load
    from bpexp.trainer import CheckpointRecord

    client = MlflowClient(tracking_uri=store_uri)
    seen = []

    def look(record):
        if isinstance(record, CheckpointRecord):
            (run,) = client.search_runs(["1"])
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
            path = client.download_artifacts(
                run.info.run_id, "checkpoint/last.npz", str(tmp_path / str(record.epoch))
            )
            seen.append((record.epoch, steps, load(path).epoch))

    # The logger is the last listener: look at the store on the record after the checkpoint.
    pending = []

    def after(record):
        if pending:
            look(pending.pop())
        if isinstance(record, CheckpointRecord):
            pending.append(record)

    app.execute(app.compose(overrides(store_uri)), echo=False, listeners=[after])
    assert [epoch for epoch, _, _ in seen] == [4, 8, 12, 16, 20]
    for epoch, steps, saved in seen:
        assert saved == epoch and steps[: epoch + 1] == list(range(epoch + 1)), (epoch, steps)


@pytest.mark.slow
def test_ctrl_c_twice_and_the_same_command_again_is_bit_identical(tmp_path):
    """The local path as a user takes it: ``python -m bpexp ...`` gets a real SIGINT after a
    checkpoint, twice, and the same command, run again each time, resumes the same run; the
    final weights equal an uninterrupted run's (another store), bit for bit."""
    args = ["trainer.epochs=1500", "trainer.checkpoint_every=100", "tracking.plots=false"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    stopped_at = []
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bpexp", *args, f"tracking.uri={uri}"],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        after = stopped_at[-1] if stopped_at else -1
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            runs = client.search_runs(["1"]) if (tmp_path / "mlflow.db").exists() else []
            epoch = int(runs[0].data.tags.get("bpexp.checkpoint_epoch", -1)) if runs else -1
            if epoch > after:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, output[-3000:]
        (run,) = client.search_runs(["1"])
        assert run.info.status == "KILLED", output[-3000:]
        stopped_at.append(int(run.data.tags["bpexp.checkpoint_epoch"]))
    out = run_cli([*args, f"tracking.uri={uri}"], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from its checkpoint at epoch {stopped_at[-1]}" in out.stdout
    (run,) = client.search_runs(["1"])
    assert run.info.status == "FINISHED" and run.data.tags["bpexp.resumes"] == "2"
    ref_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    ref = run_cli([*args, f"tracking.uri={ref_uri}"], tmp_path, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ref_client = MlflowClient(tracking_uri=ref_uri)
    (ref_run,) = ref_client.search_runs(["1"])
    mine = np.load(client.download_artifacts(run.info.run_id, "weights/final.npz", str(tmp_path)))
    theirs = np.load(
        ref_client.download_artifacts(ref_run.info.run_id, "weights/final.npz", str(tmp_path / "r"))
    )
    assert sorted(mine) == sorted(theirs)
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
    assert steps == list(range(1501))
    print(f"SIGINT after checkpoints {stopped_at}, resumed twice: final weights bit-identical")
