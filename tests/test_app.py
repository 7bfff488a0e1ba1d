"""bpexp.run: the Python entry point, training targets, determinism and paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

import bpexp
from bpexp.app import build, compose

OFF = "tracking.enabled=false"


def test_run_returns_metrics_history_and_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = bpexp.run(["trainer.epochs=3", OFF])
    assert result.outcome == "completed"
    assert list(result.history.index) == [0, 1, 2, 3]
    for column in ("train/loss", "val/accuracy", "grad_norm/W1", "saturation/2"):
        assert column in result.history.columns
    assert set(result.weights) == {"W1", "b1", "W2", "b2"}
    assert result.weights["W1"].shape == (30, 64)
    # The test metrics, recomputed from the returned weights: a plain sigmoid forward pass.
    data = build(compose(["trainer.epochs=3", OFF])).data
    a = data.X_test
    for l in (1, 2):
        a = 1 / (1 + np.exp(-(a @ result.weights[f"W{l}"].T + result.weights[f"b{l}"])))
    hits = a.argmax(axis=1) == data.Y_test.argmax(axis=1)
    assert result.metrics["test/accuracy"] == pytest.approx(hits.mean(), abs=1e-12)
    quadratic = 0.5 * np.mean(np.sum((a - data.Y_test) ** 2, axis=1))
    assert result.metrics["test/loss"] == pytest.approx(quadratic, rel=1e-9)
    assert not (tmp_path / "mlflow.db").exists()  # tracking off writes no store


def test_default_network_reaches_95_percent_on_digits():
    # 64-30-10 sigmoid, quadratic cost, SGD: the defaults.
    result = bpexp.run([OFF, "trainer.instruments=false"])
    assert result.metrics["test/accuracy"] >= 0.95, result.metrics


def test_softmax_cross_entropy_reaches_96_percent_on_digits():
    result = bpexp.run(
        [
            OFF,
            "cost=softmax_cross_entropy",
            "network.init=scaled_normal",
            "optimizer.lr=0.5",
            "trainer.instruments=false",
        ]
    )
    assert result.metrics["test/accuracy"] >= 0.96, result.metrics


def test_pixels3x4_trains_to_100_percent():
    result = bpexp.run(
        [
            OFF,
            "data=pixels3x4",
            "network=pixels",
            "optimizer.lr=12.8",
            "trainer.batch_size=64",
            "trainer.epochs=300",
        ]
    )
    assert result.metrics["train/accuracy"] == 1.0


def test_same_seed_same_weights_bit_for_bit():
    a = bpexp.run([OFF, "trainer.epochs=2", "seed=4"])
    b = bpexp.run([OFF, "trainer.epochs=2", "seed=4"])
    c = bpexp.run([OFF, "trainer.epochs=2", "seed=5"])
    for key in a.weights:
        assert np.array_equal(a.weights[key], b.weights[key])
    assert not np.array_equal(a.weights["W1"], c.weights["W1"])


def test_arms_with_the_same_seed_are_paired():
    sgd = build(compose(["optimizer=sgd", "seed=3"]))
    nesterov = build(compose(["optimizer=nesterov", "seed=3"]))
    for key in sgd.initial_weights:
        assert np.array_equal(sgd.initial_weights[key], nesterov.initial_weights[key])
    # Momentum with beta = 0 takes exactly SGD's steps, so identical weights after an epoch of
    # shuffled mini-batches prove the arms saw the same batches in the same order.
    plain = bpexp.run([OFF, "optimizer=sgd", "optimizer.lr=1.0", "trainer.epochs=2"])
    momentum0 = bpexp.run(
        [OFF, "optimizer=momentum", "optimizer.lr=1.0", "optimizer.beta=0", "trainer.epochs=2"]
    )
    assert np.array_equal(plain.weights["W1"], momentum0.weights["W1"])
    other_seed = bpexp.run([OFF, "optimizer=sgd", "optimizer.lr=1.0", "trainer.epochs=2", "seed=1"])
    assert not np.array_equal(plain.weights["W1"], other_seed.weights["W1"])


def test_float32_stays_float32():
    exp = build(compose(["trainer.dtype=float32"]))
    assert exp.net.params.dtype == np.float32 and exp.data.X_train.dtype == np.float32
    result = bpexp.run([OFF, "trainer.dtype=float32", "trainer.epochs=2"])
    assert result.weights["W1"].dtype == np.float32


def test_no_shuffle_follows_data_order():
    # SGD written out over the training rows in their stored order, batches of 10: the run
    # with shuffling off lands on exactly these weights; the shuffled run does not.
    args = [OFF, "trainer.epochs=2", "seed=0", "trainer.instruments=false"]
    exp = build(compose([*args, "trainer.shuffle=false"]))
    net, X, Y = exp.net, exp.data.X_train, exp.data.Y_train
    lr = exp.cfg.optimizer.lr
    for _ in range(2):
        for start in range(0, len(X), 10):
            net.backprop(X[start : start + 10], Y[start : start + 10], exp.cost)
            net.params -= lr * net.grad
    in_order = bpexp.run([*args, "trainer.shuffle=false"])
    shuffled = bpexp.run([*args, "trainer.shuffle=true"])
    for key, W in zip(["W1", "W2"], net.W, strict=True):
        np.testing.assert_allclose(in_order.weights[key], W, rtol=1e-12, atol=1e-14)
    assert not np.allclose(shuffled.weights["W2"], net.W[1])


def test_init_file_round_trip(tmp_path):
    from bpexp.network import save_weights

    exp = build(compose(["seed=7"]))
    save_weights(exp.net, tmp_path / "init.npz")
    again = build(
        compose(["network.init=file", f"network.init_path={tmp_path / 'init.npz'}", "seed=0"])
    )
    for key in exp.initial_weights:
        assert np.array_equal(again.initial_weights[key], exp.initial_weights[key])


@pytest.mark.parametrize("opt", ["sgd", "momentum", "nesterov", "rmsprop", "adam"])
def test_every_optimizer_learns(opt):
    result = bpexp.run(
        [OFF, f"optimizer={opt}", "trainer.epochs=3", "cost=softmax_cross_entropy"]
        + (["optimizer.lr=0.3"] if opt == "sgd" else [])
    )
    assert result.history.loc[3, "train/loss"] < result.history.loc[0, "train/loss"]


def test_a_run_logs_its_spectra_and_draws_its_cockpit_when_asked(store_uri, tmp_path):
    from mlflow import MlflowClient

    from bpexp.curvature import load_spectra

    args = [f"tracking.uri={store_uri}", "tracking.plots=true", "trainer.epochs=2"]
    args += ["trainer.spectrum_every=2", "trainer.spectrum_steps=6", "trainer.spectrum_probes=2"]
    result = bpexp.run(args)
    client = MlflowClient(tracking_uri=store_uri)
    files = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/cockpit.png", "plots/spectrum.png"} <= files
    path = client.download_artifacts(result.run_id, "hessian_spectrum.npz", str(tmp_path))
    spectra = load_spectra(path)
    assert sorted(spectra) == [0, 2]  # measured at epochs 0 and 2
    grid, density = spectra[2]
    mass = np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid))  # the trapezoid rule
    assert np.all(density >= 0) and mass == pytest.approx(1, abs=0.05)
    # A skipped rerun returns the same history and weights, read from the run's artifacts.
    again = bpexp.run(args)
    assert again.skipped and again.run_id == result.run_id
    np.testing.assert_array_equal(again.weights["W1"], result.weights["W1"])
    shared = [c for c in result.history.columns if not c.startswith("test/")]
    np.testing.assert_allclose(
        again.history[shared].to_numpy(), result.history[shared].to_numpy(), rtol=1e-15
    )
