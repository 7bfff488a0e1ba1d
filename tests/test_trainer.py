"""The training loop: records, step counting, full batch and divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bpexp.cost import get_cost
from bpexp.data import load_dataset
from bpexp.datafiles import SYSTEM_FOLDERS
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


def test_epoch_end_loss_check_stops_a_run_without_step_losses():
    # With no batch loss ever computed (stride 10^9), only the epoch-end check sees the loss.
    reference = train(*_sgd_run(), TrainerConfig(epochs=3, instruments=False), 0, None, 10**9)
    losses = [h["train/loss"] for h in reference.history]
    assert reference.outcome == "completed" and losses[1] > losses[2] > losses[3]
    steps = math.ceil(setup()[1].X_train.shape[0] / 10)
    # A bound just below the epoch-1 loss: diverged after that whole epoch, not before.
    cfg = TrainerConfig(epochs=3, instruments=False, max_loss=losses[1] * (1 - 1e-9))
    stopped = train(*_sgd_run(), cfg, 0, None, 10**9)
    assert (stopped.outcome, stopped.epochs_run, stopped.steps) == ("diverged", 1, steps)
    assert stopped.history[-1]["train/loss"] == losses[1]
    # A loss equal to the bound is not above it.
    cfg = TrainerConfig(epochs=3, instruments=False, max_loss=losses[1])
    assert train(*_sgd_run(), cfg, 0, None, 10**9).outcome == "completed"


def _sgd_run(lr: float = 0.5):
    net, data, cost = setup()
    return net, Optimizer("sgd", lr), cost, data


def _by_hand(lr: float, seed: int, epochs: int, shuffle: bool) -> np.ndarray:
    """SGD written out: each epoch draws the order from the seed's "shuffle" stream."""
    net, data, cost = setup()
    opt = Optimizer("sgd", lr)
    state = opt.init(net.params)
    X, Y = data.X_train, data.Y_train
    rng = stream(seed, "shuffle")
    for _ in range(epochs):
        order = rng.permutation(len(X)) if shuffle else np.arange(len(X))
        for start in range(0, len(X), 10):
            rows = order[start : start + 10]
            net.backprop(X[rows], Y[rows], cost)
            opt.step(net.params, net.grad, state)
    return net.params


def test_probe_and_order_depend_on_the_seed_only():
    from bpexp.instruments import measure

    for lr in (0.5, 0.1):
        net, opt, cost, data = _sgd_run(lr)
        result = train(net, opt, cost, data, TrainerConfig(epochs=2, batch_size=10), 0)
        # The batches of each epoch are the seed's permutation, whatever the learning rate.
        np.testing.assert_allclose(net.params, _by_hand(lr, 0, 2, True), rtol=1e-12, atol=1e-14)
        assert not np.allclose(net.params, _by_hand(lr, 0, 2, False))
        assert not np.allclose(net.params, _by_hand(lr, 1, 2, True))
        # The probe: the first probe_size rows of the seed's "probe" permutation, sorted.
        fresh, data, cost = setup()
        n = data.X_train.shape[0]
        rows = np.sort(stream(0, "probe").permutation(n)[:256])
        expected = measure(fresh, data.X_train[rows], data.Y_train[rows], cost)
        assert {k: result.history[0][k] for k in expected} == expected


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


def test_shuffled_batches_are_the_seeds_permutation_gathered_without_a_copy():
    # The order is re-derived here from NumPy alone: the shuffle stream is the generator of
    # SeedSequence([seed, 2]) and epoch e uses its e-th permutation. A twin trained on the
    # permuted copies X[order] (the old way) must land on bit-identical weights.
    from bpexp.trainer import train_epoch

    seed = 3
    net, data, cost = setup(seed=seed)
    twin = Network([64, 16, 10], "sigmoid", "sigmoid")
    twin.params[...] = net.params
    opt = Optimizer("momentum", 0.5, 0.9)
    cfg = TrainerConfig(epochs=2, batch_size=32, instruments=False)
    train(net, opt, cost, data, cfg, seed)

    X, Y = data.X_train, data.Y_train
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    state = opt.init(twin.params)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(X))
        train_epoch(twin, opt, state, cost, X[order], Y[order], 32)
    np.testing.assert_array_equal(net.params, twin.params)


def test_gathered_batches_take_the_rows_of_the_order():
    from bpexp.trainer import train_epoch

    net, data, cost = setup()
    twin, _, _ = setup()
    X, Y = data.X_train[:95], data.Y_train[:95]
    order = np.arange(95)[::-1].copy()  # a last batch of 5 rows, gathered into a shorter view
    opt = Optimizer("sgd", 0.5)
    train_epoch(net, opt, opt.init(net.params), cost, X, Y, 10, order=order)
    train_epoch(twin, opt, opt.init(twin.params), cost, X[::-1].copy(), Y[::-1].copy(), 10)
    np.testing.assert_array_equal(net.params, twin.params)


def test_train_metrics_on_a_fixed_subset_and_validation_complete():
    net, data, cost = setup()
    n = data.X_train.shape[0]
    cfg = TrainerConfig(epochs=1, batch_size=10, instruments=False, eval_train_rows=200)
    first = train(net, Optimizer("sgd", 0.5), cost, data, cfg, 7).history[0]
    # An independent derivation of the subset: 200 rows of the stream SeedSequence([7, 5]).
    rows = np.sort(np.random.default_rng(np.random.SeedSequence([7, 5])).permutation(n)[:200])
    fresh, _, _ = setup()
    a = fresh.forward(data.X_train[rows])
    assert first["train/loss"] == cost.fn(a, data.Y_train[rows])
    a_val = fresh.forward(data.X_val)
    assert first["val/loss"] == cost.fn(a_val, data.Y_val)  # every validation row
    # More rows asked than there are: every training row.
    fresh, _, _ = setup()
    cfg_all = TrainerConfig(epochs=1, batch_size=10, instruments=False, eval_train_rows=n + 1)
    everything = train(fresh, Optimizer("sgd", 0.5), cost, data, cfg_all, 7).history[0]
    again, _, _ = setup()
    assert everything["train/loss"] == cost.fn(again.forward(data.X_train), data.Y_train)


def test_bad_eval_train_rows_names_the_key():
    from bpexp.errors import ConfigError
    from bpexp.trainer import validate

    with pytest.raises(ConfigError, match="trainer.eval_train_rows"):
        validate(TrainerConfig(eval_train_rows=0), 100)


@pytest.mark.slow
@pytest.mark.skipif(
    not (SYSTEM_FOLDERS["fashion_mnist"] / "train-images-idx3-ubyte.gz").is_file(),
    reason="no Fashion-MNIST in /usr/share/datasets (apt-get install dataset-fashion-mnist)",
)
def test_one_epoch_on_real_fashion_mnist_learns():
    # 784-100-10 ReLU, softmax, classical momentum 0.9, batch 50: one shuffled epoch over the
    # 50,000 real training images reaches ~0.84 test accuracy (chance is 0.10).
    data = load_dataset("fashion_mnist", val_fraction=1 / 6, dtype="float32")
    net = Network([784, 100, 10], "relu", "softmax", "float32")
    initialize(net, "xavier", stream(0, "init"))
    cost = get_cost("softmax_cross_entropy", "softmax")
    cfg = TrainerConfig(epochs=1, batch_size=50, dtype="float32", instruments=False)
    result = train(net, Optimizer("momentum", 0.01, 0.9), cost, data, cfg, 0)
    assert result.outcome == "completed"
    assert result.final_metrics["test/accuracy"] > 0.8
    assert result.final_metrics["val/accuracy"] > 0.8


# --- Cockpit's instruments and the Hessian's trace, top-k and spectrum (issue 26) -----------

NEW_OFF = dict(gradient_tests_every=0, alpha_every=0, trace_every=0, top_k_every=0)
GROUPS_ON = dict(
    alpha_every=1, trace_every=2, trace_hvps=9, top_k_every=2, top_k=3, top_k_iterations=12
)
SPECTRUM = dict(spectrum_every=2, spectrum_steps=8, spectrum_probes=2)


def test_first_step_receives_the_weights_after_the_first_step():
    from bpexp.trainer import train_epoch

    net, data, cost = setup()
    twin, _, _ = setup()
    X, Y = data.X_train[:95], data.Y_train[:95]
    opt = Optimizer("momentum", 0.5, 0.9)
    after_first = np.empty_like(net.params)
    train_epoch(net, opt, opt.init(net.params), cost, X, Y, 10, first_step=after_first)
    twin.backprop(X[:10], Y[:10], cost, scale=-0.5)
    opt.update(twin.params, twin.grad, opt.init(twin.params))
    np.testing.assert_array_equal(after_first, twin.params)
    assert not np.array_equal(after_first, net.params)


def test_new_instruments_change_no_other_metric_and_log_where_due():
    records = []
    cfg_off = TrainerConfig(epochs=3, batch_size=20, sharpness_every=2, **NEW_OFF)
    off = train(*_sgd_run(2.0), cfg_off, 0)
    cfg_on = TrainerConfig(epochs=3, batch_size=20, sharpness_every=2, **GROUPS_ON, **SPECTRUM)
    on = train(*_sgd_run(2.0), cfg_on, 0, collect(records))
    for before, after in zip(off.history, on.history, strict=True):
        assert {k: after[k] for k in before} == before  # bit for bit
    tests = {
        f"{t}/{w}"
        for t in ("norm_test", "inner_product_test", "orthogonality_test")
        for w in ("probe", "batch")
    }
    hessian = {"hessian_trace", "hessian_trace_hvps", "hessian_top_converged", "hessian_top_hvps"}
    hessian |= {"hessian_top/1", "hessian_top/2", "hessian_top/3", "hessian_spectrum_hvps"}
    for h in on.history:
        new = set(h) - set(off.history[h["epoch"]])
        expected = tests | ({"alpha", "update_size"} if h["epoch"] else set())
        expected |= hessian if h["epoch"] % 2 == 0 else set()
        assert new == expected, h["epoch"]
    last = on.history[2]
    assert last["hessian_trace_hvps"] == 9 and last["hessian_spectrum_hvps"] <= 16
    assert last["hessian_top/1"] >= last["hessian_top/2"] >= last["hessian_top/3"]
    # sharpness and hessian_top/1 are the same eigenvalue, from different starts.
    assert last["hessian_top/1"] == pytest.approx(last["sharpness"], rel=0.05)
    spectra = {r.epoch: r.spectrum for r in records if isinstance(r, EpochRecord)}
    assert [e for e, s in spectra.items() if s is not None] == [0, 2] == sorted(on.spectra)
    assert spectra[2] is on.spectra[2] and on.spectra[2].density.shape == on.spectra[2].grid.shape


def test_instruments_off_turns_off_the_tests_and_alpha_but_not_the_hessian():
    cfg = TrainerConfig(epochs=1, batch_size=20, instruments=False, sharpness_every=0, **GROUPS_ON)
    history = train(*_sgd_run(), cfg, 0).history
    assert not any("test/" in k or k in ("alpha", "update_size") for h in history for k in h)
    assert "hessian_trace" in history[0] and "hessian_trace" not in history[1]


@pytest.mark.parametrize("batch_size", [100, None])
def test_alpha_is_that_of_each_epochs_first_step(batch_size):
    from bpexp.instruments import step_alpha

    # The trainer observes the start on the previous epoch's probe backprop, and the end on
    # the epoch's own when the epoch is one step (full batch); here both ends are recomputed.
    cfg = TrainerConfig(
        epochs=2, batch_size=batch_size, shuffle=False, gradient_tests_every=0, alpha_every=1
    )
    net, opt, cost, data = _sgd_run(2.0)
    result = train(net, opt, cost, data, cfg, 0)
    twin, _, _ = setup()
    X, Y = data.X_train, data.Y_train
    n = X.shape[0]
    rows = np.sort(stream(0, "probe").permutation(n)[:256])
    m = batch_size or n
    state = opt.init(twin.params)
    for epoch in (1, 2):
        before = twin.params.copy()
        for start in range(0, n, m):
            twin.backprop(X[start : start + m], Y[start : start + m], cost)
            opt.step(twin.params, twin.grad, state)
            if start == 0:
                after = twin.params.copy()
        current = twin.params.copy()
        expected = step_alpha(twin, X[rows], Y[rows], cost, before, after)
        np.testing.assert_array_equal(twin.params, current)
        logged = {k: result.history[epoch][k] for k in expected}
        assert logged == pytest.approx(expected, rel=1e-9), epoch
        assert expected["update_size"] == pytest.approx(np.linalg.norm(after - before))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gradient_tests_every", -1),
        ("alpha_every", -1),
        ("trace_every", -1),
        ("top_k_every", -1),
        ("spectrum_every", -1),
        ("trace_hvps", 2),
        ("top_k", 0),
        ("top_k_iterations", 4),
        ("spectrum_steps", 0),
        ("spectrum_probes", 0),
        ("spectrum_sigma", 0.0),
    ],
)
def test_bad_instrument_settings_name_the_key(key, value):
    from bpexp.errors import ConfigError
    from bpexp.trainer import validate

    with pytest.raises(ConfigError, match=f"trainer.{key}"):
        validate(TrainerConfig(**{key: value}), 100)
