"""The training loop: records, step counting, full batch and divergence."""

from __future__ import annotations

import math

import numpy as np

from bpexp.cost import get_cost
from bpexp.data import load_dataset
from bpexp.network import Network, initialize
from bpexp.optimizer import Optimizer
from bpexp.rng import stream
from bpexp.trainer import EndRecord, EpochRecord, StepRecord, TrainerConfig, train


def setup(activation="sigmoid", output="sigmoid", cost="quadratic", seed=0):
    data = load_dataset("digits", seed=seed)
    net = Network([64, 16, 10], activation, output)
    initialize(net, "scaled_normal" if activation == "sigmoid" else "he", stream(seed, "init"))
    return net, data, get_cost(cost, output)


def collect(records):
    return lambda record: records.append(record)


def test_records_and_step_counting():
    net, data, cost = setup()
    records = []
    cfg = TrainerConfig(epochs=3, batch_size=100, instruments=False)
    result = train(net, Optimizer("sgd", 1.0), cost, data, cfg, 0, collect(records), 4)
    n = data.X_train.shape[0]
    per_epoch = math.ceil(n / 100)
    assert result.outcome == "completed" and result.steps == 3 * per_epoch
    epochs = [r.epoch for r in records if isinstance(r, EpochRecord)]
    assert epochs == [0, 1, 2, 3]
    steps = [r.step for r in records if isinstance(r, StepRecord)]
    assert steps == list(range(4, 3 * per_epoch + 1, 4))
    assert isinstance(records[-1], EndRecord) and set(records[-1].metrics) == {
        "test/loss",
        "test/accuracy",
    }
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]


def test_full_batch_takes_one_step_an_epoch():
    net, data, cost = setup()
    cfg = TrainerConfig(epochs=5, batch_size=None, instruments=False)
    result = train(net, Optimizer("sgd", 1.0), cost, data, cfg, 0)
    assert result.steps == 5
    # Full-batch gradient descent with a small enough step decreases the loss every step.
    losses = [h["train/loss"] for h in result.history]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))


def test_non_finite_error_stops_at_once_before_the_update():
    net, data, cost = setup("relu", "linear")
    records = []
    cfg = TrainerConfig(epochs=50, batch_size=10, instruments=False)
    result = train(net, Optimizer("sgd", 1e4), cost, data, cfg, 0, collect(records), 10**9)
    assert result.outcome == "diverged"
    assert result.epochs_run == 1 and result.steps < math.ceil(data.X_train.shape[0] / 10)
    (last,) = [r for r in records if isinstance(r, StepRecord)]  # only the fatal step
    # The update −η ∂C/∂b^L overflowed; the loss itself is inf, NaN or past max_loss.
    assert last.step == result.steps
    assert not math.isfinite(last.batch_loss) or last.batch_loss > cfg.max_loss
    assert np.all(np.isfinite(net.params))  # the poisoned update was not applied
    assert records[-1].outcome == "diverged"


def test_loss_above_the_bound_is_divergence():
    net, data, cost = setup()
    cfg = TrainerConfig(epochs=5, batch_size=10, instruments=False, max_loss=1e-6)
    result = train(net, Optimizer("sgd", 0.1), cost, data, cfg, 0)
    assert result.outcome == "diverged" and result.epochs_run == 1


def test_probe_and_order_depend_on_the_seed_only():
    runs = []
    for lr in (0.5, 0.5, 0.1):
        net, data, cost = setup()
        cfg = TrainerConfig(epochs=1, batch_size=10)
        runs.append(train(net, Optimizer("sgd", lr), cost, data, cfg, 0).history[0])
    # Step 0 is measured before any update: identical for every optimizer setting.
    assert runs[0] == runs[1] == runs[2]


def test_an_epoch_is_backprop_then_step_on_each_batch():
    # train_epoch folds the optimizer's gradient_scale into backprop and calls update();
    # the same epoch written with the plain gradient and step() lands on the same weights.
    from bpexp.trainer import train_epoch

    for opt in (Optimizer("momentum", 0.5, 0.9), Optimizer("nesterov", 0.5, 0.9)):
        net, data, cost = setup()
        twin, _, _ = setup()
        X, Y = data.X_train[:200], data.Y_train[:200]
        state, twin_state = opt.init(net.params), opt.init(twin.params)
        steps, stopped = train_epoch(net, opt, state, cost, X, Y, 10)
        for start in range(0, 200, 10):
            twin.backprop(X[start : start + 10], Y[start : start + 10], cost)
            opt.step(twin.params, twin.grad, twin_state)
        assert (steps, stopped) == (20, False)
        np.testing.assert_allclose(net.params, twin.params, rtol=1e-12, atol=1e-14)
        assert not np.array_equal(net.params, setup()[0].params)  # it did train
