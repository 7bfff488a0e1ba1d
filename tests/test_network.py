"""Backprop against independent computations: centred differences and a hand-computed net."""

import numpy as np
import pytest

from bpexp.cost import COSTS
from bpexp.errors import ConfigError
from bpexp.gradcheck import check, main, random_problem
from bpexp.network import Network, initialize, load_weights, save_weights
from bpexp.rng import stream

SMOOTH_HIDDEN = ["sigmoid", "tanh", "linear"]
# Every (output activation, cost) pair the core allows.
PAIRS = [
    ("sigmoid", "quadratic"),
    ("linear", "quadratic"),
    ("sigmoid", "cross_entropy"),
    ("softmax", "softmax_cross_entropy"),
]


@pytest.mark.parametrize("hidden", SMOOTH_HIDDEN)
@pytest.mark.parametrize(("output", "cost"), PAIRS)
def test_gradient_check_smooth_activations(hidden, output, cost):
    net, X, Y, c = random_problem([4, 5, 3, 3], hidden, output, cost, m=6, seed=1)
    errors = check(net, X, Y, c)
    assert len(errors) == 3
    assert max(errors) < 1e-7, errors


@pytest.mark.parametrize(("output", "cost"), PAIRS)
def test_gradient_check_relu_away_from_kinks(output, cost):
    # ReLU is not differentiable at z = 0; a centred difference that straddles a kink is off.
    # With random inputs no z lies within h = 1e-5 of 0, so the bound holds; we check that too.
    net, X, Y, c = random_problem([4, 6, 5, 3], "relu", output, cost, m=6, seed=2)
    net.backprop(X, Y, c)
    assert min(np.abs(z).min() for z in net.trace(X).z[:-1]) > 1e-4
    assert max(check(net, X, Y, c)) < 1e-6


def test_single_layer_network_gradient():
    net, X, Y, c = random_problem([3, 2], "sigmoid", "softmax", "softmax_cross_entropy")
    assert check(net, X, Y, c)[0] < 1e-7


def test_backprop_matches_hand_computation():
    # 2-2-1 sigmoid network, one sample, quadratic cost: BP1..BP4 written out by hand.
    net = Network([2, 2, 1], "sigmoid", "sigmoid")
    net.W[0][...] = [[0.1, -0.2], [0.3, 0.4]]
    net.b[0][...] = [0.05, -0.1]
    net.W[1][...] = [[0.5, -0.6]]
    net.b[1][...] = [0.2]
    x, y = np.array([1.0, 2.0]), np.array([1.0])

    def s(z):
        return 1 / (1 + np.exp(-z))

    z1 = np.array([0.1 * 1 - 0.2 * 2 + 0.05, 0.3 * 1 + 0.4 * 2 - 0.1])
    a1 = s(z1)
    z2 = 0.5 * a1[0] - 0.6 * a1[1] + 0.2
    a2 = s(z2)
    d2 = (a2 - y[0]) * a2 * (1 - a2)  # BP1
    d1 = np.array([0.5, -0.6]) * d2 * a1 * (1 - a1)  # BP2
    from bpexp.cost import COSTS

    loss = net.backprop(x[None, :], y[None, :], COSTS["quadratic"], loss=True)
    assert loss == pytest.approx(0.5 * (a2 - 1.0) ** 2, rel=1e-14)
    np.testing.assert_allclose(net.gb[1], [d2], rtol=1e-13)  # BP3
    np.testing.assert_allclose(net.gW[1], [d2 * a1], rtol=1e-13)  # BP4
    np.testing.assert_allclose(net.gb[0], d1, rtol=1e-13)
    np.testing.assert_allclose(net.gW[0], np.outer(d1, x), rtol=1e-13)


def test_batch_gradient_is_mean_of_sample_gradients():
    net, X, Y, c = random_problem([4, 5, 3], "tanh", "sigmoid", "cross_entropy", m=5)
    net.backprop(X, Y, c)
    batch = net.grad.copy()
    per_sample = []
    for i in range(5):
        net.backprop(X[i : i + 1], Y[i : i + 1], c)
        per_sample.append(net.grad.copy())
    np.testing.assert_allclose(batch, np.mean(per_sample, axis=0), rtol=1e-12, atol=1e-15)


def test_gradcheck_command_prints_each_layer(capsys):
    code = main(
        [
            "--hidden",
            "4",
            "--activation",
            "tanh",
            "--output-activation",
            "softmax",
            "--cost",
            "softmax_cross_entropy",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "layer 1: relative error" in out and "layer 2: relative error" in out


@pytest.mark.parametrize("init", ["normal", "scaled_normal", "uniform", "xavier", "he"])
def test_initialisers_have_their_distribution(init):
    net = Network([400, 300, 10], "sigmoid", "sigmoid")
    initialize(net, init, stream(0, "init"))
    W = net.W[0]
    expected_std = {
        "normal": 1.0,
        "scaled_normal": 1 / np.sqrt(400),
        "uniform": 1 / np.sqrt(3),
        "xavier": np.sqrt(6 / 700) / np.sqrt(3),
        "he": np.sqrt(2 / 400),
    }[init]
    assert W.std() == pytest.approx(expected_std, rel=0.02)
    assert abs(W.mean()) < 0.01 * max(expected_std, 0.1)
    if init == "uniform":
        assert W.min() >= -1 and W.max() <= 1
    if init in ("xavier", "he"):
        assert all(np.array_equal(b, np.zeros_like(b)) for b in net.b)  # exactly zero
    else:
        # 300 draws: the sample std is within ~4% (one standard error) of the true one.
        bias_std = {"normal": 1.0, "scaled_normal": 1.0, "uniform": 1 / np.sqrt(3)}[init]
        assert net.b[0].std() == pytest.approx(bias_std, rel=0.12)
        assert abs(net.b[0].mean()) < 4 * bias_std / np.sqrt(300)


def test_float32_and_float64_start_from_the_same_draws():
    n64 = Network([5, 4, 2], dtype="float64")
    n32 = Network([5, 4, 2], dtype="float32")
    initialize(n64, "normal", stream(3, "init"))
    initialize(n32, "normal", stream(3, "init"))
    assert n32.params.dtype == np.float32
    np.testing.assert_allclose(n32.params, n64.params, rtol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    net = Network([6, 5, 4, 3], "relu", "softmax")
    initialize(net, "he", stream(1, "init"))
    net.b[0][...] = np.arange(5) / 7  # he gives zero biases; make them nonzero
    path = tmp_path / "w.npz"
    save_weights(net, path)
    with np.load(path) as npz:
        assert sorted(npz.files) == ["W1", "W2", "W3", "b1", "b2", "b3"]
        assert npz["W1"].shape == (5, 6)
    other = Network([6, 5, 4, 3], "relu", "softmax")
    initialize(other, "file", stream(9, "init"), str(path))
    assert np.array_equal(other.params, net.params)


def test_load_rejects_mismatched_shapes(tmp_path):
    net = Network([6, 5, 3])
    initialize(net, "normal", stream(0, "init"))
    path = tmp_path / "w.npz"
    save_weights(net, path)
    with pytest.raises(ConfigError, match=r"W1.*shape \(5, 6\).*needs \(4, 6\)"):
        load_weights(Network([6, 4, 3]), path)
    with pytest.raises(ConfigError, match="missing array 'W3'"):
        load_weights(Network([6, 5, 3, 2]), path)


def test_load_rejects_bad_files(tmp_path):
    net = Network([2, 2])
    with pytest.raises(ConfigError, match="network.init_path"):
        load_weights(net, None)
    with pytest.raises(ConfigError, match="no such file"):
        load_weights(net, tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConfigError, match="not a readable .npz"):
        load_weights(net, bad)
    nan = tmp_path / "nan.npz"
    np.savez(nan, W1=np.full((2, 2), np.nan), b1=np.zeros(2))
    with pytest.raises(ConfigError, match="NaN or inf"):
        load_weights(net, nan)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"activation": "softmax"}, "network.activation"),
        ({"activation": "swish"}, "network.activation"),
        ({"output_activation_name": "relu"}, "network.output_activation"),
        ({"dtype": "float16"}, "trainer.dtype"),
    ],
)
def test_bad_network_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Network([3, 2, 2], **kwargs)


def test_unknown_init_names_the_key():
    with pytest.raises(ConfigError, match="network.init"):
        initialize(Network([2, 2]), "glorot", stream(0, "init"))


def test_backprop_scale_multiplies_every_gradient():
    rng = np.random.default_rng(1)
    net = Network([5, 7, 3], "tanh", "sigmoid")
    net.params[...] = rng.standard_normal(net.params.size)
    X, Y = rng.standard_normal((9, 5)), rng.random((9, 3))
    for cost in ("quadratic", "cross_entropy"):
        net.backprop(X, Y, COSTS[cost])
        plain = net.grad.copy()
        net.backprop(X, Y, COSTS[cost], scale=-0.37)
        np.testing.assert_allclose(net.grad, -0.37 * plain, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize(("output", "cost"), PAIRS)
def test_gradient_check_covers_weight_decay(output, cost):
    # C + λ/(2n) Σ‖W‖²: backprop plus (λ/n) W on the weights against centred differences of
    # the whole regularised cost. A decayed bias or a missing factor would fail the bound.
    net, X, Y, c = random_problem([4, 5, 3, 3], "tanh", output, cost, m=6, seed=3)
    errors = check(net, X, Y, c, weight_decay=5.0, n=6)
    assert max(errors) < 1e-7, errors
    from bpexp.network import add_l2_gradient

    net.backprop(X, Y, c)
    biases = [gb.copy() for gb in net.gb]
    weights = [gW.copy() for gW in net.gW]
    add_l2_gradient(net, 5.0 / 6, [np.empty_like(W) for W in net.W])
    for gb, before in zip(net.gb, biases, strict=True):
        np.testing.assert_array_equal(gb, before)  # biases untouched
    for gW, before, W in zip(net.gW, weights, net.W, strict=True):
        np.testing.assert_allclose(gW, before + 5.0 / 6 * W, rtol=1e-15)
