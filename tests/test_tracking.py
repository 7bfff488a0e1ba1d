"""MLflow tracking against real stores: SQLite in a temporary folder and a real mlflow server."""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

import bpexp
from bpexp.app import build, compose
from bpexp.errors import TrackingError
from bpexp.tracking import RunLogger, connect, end_run, finished_run
from bpexp.trainer import EndRecord, EpochRecord, StepRecord
from tests.conftest import AUTH_ADMIN, run_cli, start_mlflow_server

LAYER_METRICS = [
    "grad_norm/W{l}",
    "grad_norm/b{l}",
    "delta_norm/{l}",
    "activation_mean/{l}",
    "activation_std/{l}",
    "sigma_prime_mean/{l}",
    "saturation/{l}",
    "update_ratio/W{l}",
]


# The params of the run below (nesterov, lr 0.5, seed 1, 3 epochs), tracking.uri apart.
LOGGED_PARAMS = {
    "cost.name": "quadratic",
    "data.cache_dir": "null",
    "data.n_samples": "null",
    "data.n_train": "1294",
    "data.name": "digits",
    "data.path": "null",
    "data.test_fraction": "0.2",
    "data.url": "null",
    "data.val_fraction": "0.1",
    "force": "False",
    "network.activation": "sigmoid",
    "network.hidden": "[30]",
    "network.init": "normal",
    "network.init_path": "null",
    "network.output_activation": "sigmoid",
    "network.sizes": "[64, 30, 10]",
    "optimizer.beta": "0.9",
    "optimizer.beta2": "0.999",
    "optimizer.bias_correction": "False",
    "optimizer.eps": "1e-08",
    "optimizer.form": "classical",
    "optimizer.lr": "0.5",
    "optimizer.name": "nesterov",
    "optimizer.weight_decay": "0.0",
    "seed": "1",
    "tracking.enabled": "True",
    "tracking.experiment": "bpexp",
    "tracking.log_every_n_steps": "20",
    "tracking.plots": "True",
    "tracking.timeout_seconds": "10.0",
    "trainer.batch_size": "10",
    "trainer.dtype": "float64",
    "trainer.epochs": "3",
    "trainer.eval_train_rows": "10000",
    "trainer.instruments": "True",
    "trainer.max_loss": "1000000.0",
    "trainer.probe_size": "256",
    "trainer.saturation_epsilon": "0.01",
    "trainer.sharpness_every": "15",
    "trainer.sharpness_iterations": "20",
    "trainer.shuffle": "True",
    "trainer.alpha_every": "0",
    "trainer.checkpoint_every": "10",
    "trainer.gradient_tests_every": "1",
    "trainer.spectrum_every": "0",
    "trainer.spectrum_probes": "4",
    "trainer.spectrum_sigma": "0.02",
    "trainer.spectrum_steps": "30",
    "trainer.top_k": "5",
    "trainer.top_k_every": "0",
    "trainer.top_k_iterations": "40",
    "trainer.trace_every": "0",
    "trainer.trace_hvps": "30",
    "workload.name": "",
    "workload.target": "null",
}


def only_run(uri: str):
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bpexp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_run_holds_name_params_tags_metrics_and_artifacts(store_uri, tmp_path):
    overrides = [
        f"tracking.uri={store_uri}",
        "trainer.epochs=3",
        "optimizer=nesterov",
        "optimizer.lr=0.5",
        "seed=1",
        "tracking.log_every_n_steps=20",
        "tracking.plots=true",  # the per-run PNGs are opt-in
    ]
    result = bpexp.run(overrides)
    client, run = only_run(store_uri)
    assert run.info.run_id == result.run_id
    assert run.info.run_name == "nesterov lr=0.5 beta=0.9 seed=1"
    assert run.info.status == "FINISHED"
    # Every param, key and value as MLflow stores it, and the config hash that recognises the
    # job in an existing store: both are contracts with the runs already in users' stores.
    assert run.data.params == {**LOGGED_PARAMS, "tracking.uri": store_uri}
    tags = run.data.tags
    assert tags["bpexp.config_hash"] == (
        "b29130a74dff2cc5434672b46856a7d16975a69193cf9bab3886c4e4bbbe1cdd"
    )
    assert tags["outcome"] == "completed" and tags["optimizer"] == "nesterov"
    assert tags["bpexp.version"] == bpexp.__version__ and tags["numpy.version"] == np.__version__

    # Every metric at steps 0..3; per layer l = 1, 2.
    names = {f.format(l=l) for f in LAYER_METRICS for l in (1, 2)} - {"update_ratio/W{l}"}
    names |= {"train/loss", "train/accuracy", "val/loss", "val/accuracy"}
    for name in names:
        history = client.get_metric_history(run.info.run_id, name)
        steps = sorted(m.step for m in history)
        expected = [1, 2, 3] if name.startswith("update_ratio") else [0, 1, 2, 3]
        assert steps == expected, name
    assert {m.step for m in client.get_metric_history(run.info.run_id, "test/loss")} == {3}
    # 1294 training samples / 10 = 130 steps an epoch, 390 in all, one point every 20 steps.
    batch = client.get_metric_history(run.info.run_id, "train/batch_loss")
    assert sorted(m.step for m in batch) == list(range(20, 391, 20))

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "weights", "plots", "history.parquet"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "weights")} == {
        "weights/initial.npz",
        "weights/final.npz",
    }
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/loss.png",
        "plots/grad_norm.png",
        "plots/saturation.png",
        "plots/cockpit.png",  # no spectrum.png: trainer.spectrum_every=0
    }

    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    with np.load(folder / "weights" / "initial.npz") as initial:
        expected_initial = build(compose(["seed=1"])).net
        assert np.array_equal(initial["W1"], expected_initial.W[0])
    with np.load(folder / "weights" / "final.npz") as final:
        assert np.array_equal(final["W2"], result.weights["W2"])
    # config.yaml is the composed config, resolved, as Hydra gave it.
    composed = OmegaConf.to_yaml(compose(overrides), resolve=True)
    assert "lr: 0.5" in composed and (folder / "config.yaml").read_text() == composed
    assert (folder / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The number of points logged equals what the run produced, and history.parquet holds them.
    table = pd.read_parquet(folder / "history.parquet")
    logged = sum(len(client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics)
    produced = result.history.notna().sum().sum() + len(batch) + 2  # + test/loss, test/accuracy
    assert logged == len(table) == produced
    assert set(table.columns) == {"run_id", "metric", "step", "value"}


def test_vanishing_gradient_at_initialisation(store_uri):
    bpexp.run(
        [
            f"tracking.uri={store_uri}",
            "network=deep_sigmoid",
            "trainer.epochs=1",
            "tracking.plots=false",
        ]
    )
    client, run = only_run(store_uri)

    def at_step0(name):
        (point,) = [m for m in client.get_metric_history(run.info.run_id, name) if m.step == 0]
        return point.value

    norms = [at_step0(f"grad_norm/b{l}") for l in (1, 2, 3)]
    assert norms[0] < norms[1] < norms[2], norms
    weights = [at_step0(f"grad_norm/W{l}") for l in (1, 2, 3)]
    assert weights[0] < weights[2], weights


def test_relu_layers_log_dead_fraction_not_saturation(store_uri):
    from bpexp.app import build, compose
    from bpexp.rng import stream

    args = ["network=deep_relu", "trainer.epochs=1", "tracking.plots=false", "optimizer.lr=0.1"]
    result = bpexp.run([f"tracking.uri={store_uri}", *args])
    _, run = only_run(store_uri)
    metrics = run.data.metrics
    assert {"dead_fraction/1", "dead_fraction/3", "saturation/4"} <= set(metrics)
    assert "saturation/1" not in metrics
    # Recomputed from the final weights on the probe rows (the seed's "probe" permutation):
    # the fraction of units of each ReLU layer with z <= 0 on every probe sample.
    exp = build(compose(args))
    X = exp.data.X_train
    a = X[np.sort(stream(0, "probe").permutation(len(X))[:256])]
    for l in range(1, len(exp.net.sizes) - 1):
        z = a @ result.weights[f"W{l}"].T + result.weights[f"b{l}"]
        dead = np.mean(np.all(z <= 0, axis=0))
        assert metrics[f"dead_fraction/{l}"] == pytest.approx(dead, abs=1e-12), l
        a = np.maximum(z, 0)


def test_cost_saturation_quadratic_learns_slower():
    # The cost_saturation sweep's settings: N(0,1) weights, sigmoid outputs, lr 0.5.
    for seed in (0, 1, 2):
        runs = {
            cost: bpexp.run(
                [
                    "tracking.enabled=false",
                    "sweep=cost_saturation",
                    f"cost={cost}",
                    f"seed={seed}",
                    "trainer.epochs=3",
                ]
            ).history
            for cost in ("quadratic", "cross_entropy")
        }
        quad, ce = runs["quadratic"], runs["cross_entropy"]
        # Same initial weights: the same outputs are saturated at the wrong end at step 0 ...
        assert quad.loc[0, "wrong_saturation/2"] == ce.loc[0, "wrong_saturation/2"] > 0
        # ... and stay so under the quadratic cost, while cross-entropy frees them.
        assert quad.loc[1:3, "wrong_saturation/2"].mean() > ce.loc[1:3, "wrong_saturation/2"].mean()
        # Slower early loss decrease, relative to each cost's own starting value.
        assert (
            quad.loc[1, "train/loss"] / quad.loc[0, "train/loss"]
            > ce.loc[1, "train/loss"] / ce.loc[0, "train/loss"]
        )


def test_unreachable_server_fails_fast_with_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    start = time.monotonic()
    with pytest.raises(TrackingError, match=rf"tracking.uri='http://127.0.0.1:{port}'"):
        connect(f"http://127.0.0.1:{port}", timeout=5)
    assert time.monotonic() - start < 10


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend, stopped after the module."""
    url, proc = start_mlflow_server(tmp_path_factory.mktemp("server"))
    yield url, proc
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_run_logs_to_a_real_mlflow_server(mlflow_server, tmp_path):
    url, _ = mlflow_server
    result = bpexp.run(
        [
            f"tracking.uri={url}",
            "trainer.epochs=2",
            "tracking.experiment=remote",
            "tracking.plots=false",
        ]
    )
    client = MlflowClient(tracking_uri=url)
    run = client.get_run(result.run_id)
    assert run.data.tags["outcome"] == "completed"
    assert len(client.get_metric_history(result.run_id, "train/loss")) == 3
    folder = Path(client.download_artifacts(result.run_id, "", str(tmp_path)))
    table = pd.read_parquet(io.BytesIO((folder / "history.parquet").read_bytes()))
    assert (table["metric"] == "val/loss").sum() == 3


def test_experiment_opens_on_the_training_runs_view(store_uri):
    from bpexp.tracking import ensure_experiment

    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = ensure_experiment(client, "fresh")
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert ensure_experiment(client, "fresh") == experiment_id


class CountingClient(MlflowClient):
    """A real client that also records the requests a RunLogger makes through it."""

    def __init__(self, uri: str) -> None:
        super().__init__(tracking_uri=uri)
        self.calls: list[tuple] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        self.calls.append(("log_batch", len(metrics), {t.key: t.value for t in tags}))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def set_terminated(self, run_id, status=None, **kwargs):
        self.calls.append(("set_terminated", status))
        return super().set_terminated(run_id, status=status, **kwargs)


def _new_run(client: MlflowClient) -> str:
    experiment_id = client.create_experiment("requests")
    return client.create_run(experiment_id).info.run_id


def test_end_run_sends_the_last_metrics_with_the_outcome_in_one_request(store_uri):
    client = CountingClient(store_uri)
    logger = RunLogger(client, _new_run(client))
    logger(EpochRecord(0, {"train/loss": 1.0, "val/loss": 1.1}))
    logger(StepRecord(10, 1, 0.9))
    logger(EndRecord(1, {"test/loss": 0.8}, "completed"))
    assert client.calls == []  # a short run's metrics wait for end_run
    end_run(logger, "completed")
    assert client.calls == [
        ("log_batch", 4, {"outcome": "completed"}),
        ("set_terminated", "FINISHED"),
    ]
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "completed"
    assert run.data.metrics == {
        "train/loss": 1.0,
        "val/loss": 1.1,
        "train/batch_loss": 0.9,
        "test/loss": 0.8,
    }
    assert logger.points_logged == 4 == len(logger.rows)


def test_a_run_whose_last_points_cannot_be_sent_is_failed_not_completed(store_uri):
    # MLflow refuses the whole batch for one metric name it does not allow ('!'): the run
    # would have lost its points, so it is not "completed" but FAILED, saying why (issue 28).
    from mlflow.exceptions import MlflowException

    client = CountingClient(store_uri)
    logger = RunLogger(client, _new_run(client))
    logger(EpochRecord(0, {"train/loss": 1.0, "bad name!": 2.0}))
    with pytest.raises(MlflowException):
        end_run(logger, "completed", {"warning.x": "y"})
    assert [c[:2] for c in client.calls] == [
        ("log_batch", 2),
        ("log_batch", 0),
        ("set_terminated", "FAILED"),
    ]
    assert client.calls[0][2] == {"outcome": "completed", "warning.x": "y"}  # refused
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["outcome"] == "failed" and run.data.tags["warning.x"] == "y"
    assert "bad name!" in run.data.tags["bpexp.error"]
    assert run.data.metrics == {}  # nothing of the refused batch was written
    assert finished_run(client, run.info.experiment_id, "no-such-digest") is None


def test_a_run_whose_status_cannot_be_set_is_not_taken_as_finished(store_uri):
    # The last points and outcome=completed are written, then setting FINISHED fails: the run
    # must not be skipped by a rerun (finished_run needs the FINISHED status too).
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.create_experiment("status")
    run = client.create_run(experiment_id, tags={"bpexp.config_hash": "abc"})
    client.set_tag(run.info.run_id, "outcome", "completed")
    assert finished_run(client, experiment_id, "abc") is None  # still RUNNING
    client.set_terminated(run.info.run_id, "FINISHED")
    assert finished_run(client, experiment_id, "abc").info.run_id == run.info.run_id


def test_curvature_metrics_at_step_epoch_and_a_warning_tag_when_lanczos_stops_short(store_uri):
    common = [f"tracking.uri={store_uri}", "trainer.epochs=3", "tracking.plots=false"]
    common += ["optimizer=momentum", "optimizer.lr=0.1", "trainer.sharpness_every=2"]
    bpexp.run([*common, "trainer.sharpness_iterations=2"])
    client, run = only_run(store_uri)
    run_id = run.info.run_id

    def series(name):
        return {m.step: m.value for m in client.get_metric_history(run_id, name)}

    # Every sharpness_every = 2 epochs, step 0 included; the bound of momentum is (2 + 2β)/η.
    assert sorted(series("sharpness")) == [0, 2]
    assert series("sharpness_threshold") == {0: pytest.approx(38.0), 2: pytest.approx(38.0)}
    assert series("sharpness_converged") == {0: 0.0, 2: 0.0}  # 2 Lanczos steps: not enough
    assert "epochs 0, 2" in run.data.tags["warning.sharpness"]
    assert sorted(series("distance_from_init/W1")) == [0, 1, 2, 3]
    assert series("distance_from_init/W2")[0] == 0.0 < series("distance_from_init/W2")[3]
    assert sorted(series("distance_from_init_ratio/W1")) == [0, 1, 2, 3]
    assert all(v > 0 for v in series("grad_noise_scale").values())
    assert sorted(series("grad_snr/W2")) == [0, 1, 2, 3]

    # With the default budget the same measurements converge: no warning.
    client.delete_run(run_id)
    result = bpexp.run([*common, "force=true"])
    converged = client.get_run(result.run_id)
    assert "warning.sharpness" not in converged.data.tags
    assert converged.data.metrics["sharpness_converged"] == 1.0
    assert converged.data.metrics["sharpness"] > 0


@pytest.mark.slow
def test_a_server_with_basic_auth_needs_credentials_before_training(tmp_path, monkeypatch):
    # A real `mlflow server --app-name basic-auth` (the `auth` extra), driven as a user would.
    url, proc = start_mlflow_server(tmp_path / "server", auth=True)
    try:
        args = ["trainer.epochs=1", "tracking.plots=false", f"tracking.uri={url}"]
        for env in ({}, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "x"}):
            refused = run_cli(args, tmp_path, **env)
            assert refused.returncode == 2, refused.stderr[-2000:]
            assert "asks for a user name and password" in refused.stderr
            assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in refused.stderr
            assert ("refused those given" in refused.stderr) == bool(env)
            assert "epoch" not in refused.stdout and "Traceback" not in refused.stderr
        # A sweep stops before its first job too (exit 2, not every job failing).
        swept = run_cli(["-m", "seed=0,1", *args], tmp_path)
        assert swept.returncode == 2, swept.stderr[-2000:]
        assert "asks for a user name and password" in swept.stderr and "#0" not in swept.stdout
        user, password = AUTH_ADMIN
        env = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
        logged = run_cli(args, tmp_path, **env)
        assert logged.returncode == 0, logged.stderr[-2000:]
        assert "epoch 1/1" in logged.stdout
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(tracking_uri=url)
        (run,) = client.search_runs([client.get_experiment_by_name("bpexp").experiment_id])
        assert run.data.tags["outcome"] == "completed"
        assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_per_run_plots_are_drawn_only_when_asked(store_uri):
    bpexp.run([f"tracking.uri={store_uri}", "trainer.epochs=1"])
    client, run = only_run(store_uri)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "plots" not in artifacts and "history.parquet" in artifacts


class SignalledClient(MlflowClient):
    """A real client to a real store that gets a real SIGINT of its own process right after
    the ``call``-th call of one of its writes (``method``), as a Ctrl-C landing in the middle
    of that write would."""

    def __init__(self, uri: str, method: str, call: int) -> None:
        super().__init__(tracking_uri=uri)
        self.method, self.calls_left = method, call

    def __getattribute__(self, name: str):
        attribute = super().__getattribute__(name)
        if name != object.__getattribute__(self, "method"):
            return attribute

        def write_then_signal(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self.calls_left -= 1
            if self.calls_left == 0:
                os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # Python runs the handler between two bytecodes
                pass
            return result

        return write_then_signal


@pytest.mark.parametrize(
    "method, call, status, steps",
    [
        ("create_run", 1, "KILLED", []),
        ("log_batch", 1, "KILLED", []),  # its params
        ("log_batch", 2, "KILLED", [0]),  # the points of epoch 0
        ("set_terminated", 1, "FINISHED", [0, 1]),  # it had ended when the signal came
    ],
)
def test_ctrl_c_during_any_write_of_a_run_closes_it_and_leaves_the_store_usable(
    store_uri, method, call, status, steps
):
    """``python -m bpexp``'s own Ctrl-C handler, a real signal: whether it lands while the run
    is created, its params or points are sent, or its status is set, the run ends closed (KILLED
    if it had not ended yet) and the store takes the next write. ``started`` hears of the run
    even when the signal came while it was created (a sweep's job then records the run it
    closed: CI once found a KILLED run missing from summary.csv)."""
    from bpexp import stop
    from bpexp.tracking import ensure_experiment, tracked_run

    client = SignalledClient(store_uri, method, call)
    experiment_id = ensure_experiment(MlflowClient(tracking_uri=store_uri), "bpexp")
    previous = signal.signal(signal.SIGINT, stop.on_signal)
    heard = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with tracked_run(
                client, experiment_id, "r", {"seed": 0}, {}, started=heard.append
            ) as logger:
                logger(EpochRecord(epoch=0, metrics={"train/loss": 1.0}))
                logger.flush()
                logger(EpochRecord(epoch=1, metrics={"train/loss": 0.5}))
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.reset()  # the handler marked this process as stopping
    plain = MlflowClient(tracking_uri=store_uri)
    (run,) = plain.search_runs([experiment_id])
    assert heard == [run.info.run_id]
    assert run.info.status == status, run.data.tags
    assert run.data.params == {"seed": "0"}
    logged = [m.step for m in plain.get_metric_history(run.info.run_id, "train/loss")]
    assert logged == steps
    plain.set_tag(run.info.run_id, "after", "yes")  # not locked
    assert plain.get_run(run.info.run_id).data.tags["after"] == "yes"


@pytest.mark.parametrize("how", ["override", "sweep", "untracked sweep", "environment"])
def test_a_password_in_the_tracking_uri_is_refused_and_never_printed(tmp_path, how):
    """Issue 28: `http://user:pw@host` failed as "Name or service not known" and printed the
    password. It is refused before anything runs, naming the two variables to use instead; the
    password appears nowhere in the output (and so in no param, tag or summary)."""
    secret = "s3cret-pw-28"
    uri = f"http://alice:{secret}@127.0.0.1:9/"
    env = {}
    if how == "environment":
        args, env = ["trainer.epochs=1"], {"MLFLOW_TRACKING_URI": uri}
    else:
        args = (["-m", "seed=0,1"] if "sweep" in how else []) + [f"tracking.uri={uri}"]
        args += ["tracking.enabled=false"] if how == "untracked sweep" else []
    out = run_cli(args, tmp_path, **env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert secret not in out.stdout + out.stderr
    assert "http://alice:***@127.0.0.1:9/" in out.stderr
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in out.stderr
    assert "Traceback" not in out.stderr and "epoch" not in out.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_a_reader_does_not_create_a_store_where_there_is_none(tmp_path):
    """`connect(create=False)` (for readers such as the report, which made an mlflow.db in an
    empty folder): a clear TrackingError, and no file made."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="there is no store at"):
        connect(uri, create=False)
    assert list(tmp_path.iterdir()) == []
    connect(uri)  # a writer makes it
    assert (tmp_path / "mlflow.db").exists()
