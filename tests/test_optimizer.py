"""Update rules against hand-computed vectors and the exact identities of docs/science.md."""

import numpy as np
import pytest

from bpexp.errors import ConfigError
from bpexp.optimizer import RULES, Optimizer, sharpness_threshold

W0 = np.array([1.0, -2.0])
G1 = np.array([0.5, -1.0])
G2 = np.array([0.2, 0.4])


def two_steps(opt: Optimizer) -> tuple[np.ndarray, np.ndarray]:
    w = W0.copy()
    state = opt.init(w)
    opt.step(w, G1, state)
    after_one = w.copy()
    opt.step(w, G2, state)
    return after_one, w


# Worked by hand in the comments; lr = 0.1, beta = 0.9 unless said.
HAND = {
    # w − 0.1 g
    "sgd": (Optimizer("sgd", 0.1), [0.95, -1.9], [0.93, -1.94]),
    # v1 = −0.1 g1 = [−0.05, 0.1]; v2 = 0.9 v1 − 0.1 g2 = [−0.065, 0.05]
    "classical": (Optimizer("momentum", 0.1, 0.9), [0.95, -1.9], [0.885, -1.85]),
    # v1 = 0.1 g1 = [0.05, −0.1]; v2 = 0.9 v1 + 0.1 g2 = [0.065, −0.05]; w −= 0.1 v
    "ema": (Optimizer("momentum", 0.1, 0.9, "ema"), [0.995, -1.99], [0.9885, -1.985]),
    # as ema, step sizes 0.1/(1 − 0.9) = 1 and 0.1/(1 − 0.81) = 0.1/0.19
    "ema_bias_corrected": (
        Optimizer("momentum", 0.1, 0.9, "ema", bias_correction=True),
        [0.95, -1.9],
        [0.95 - 0.065 * 0.1 / 0.19, -1.9 + 0.05 * 0.1 / 0.19],
    ),
    # w ← w + β v − η g: [1 − 0.045 − 0.05, −2 + 0.09 + 0.1]; then [0.905 − 0.0585 − 0.02, ...]
    "nesterov": (Optimizer("nesterov", 0.1, 0.9), [0.905, -1.81], [0.8265, -1.805]),
    # first Adam step is −η g/(|g| + ε) = −η sign(g); second: m̂, ŝ by hand below
    "adam": (
        Optimizer("adam", 0.1, 0.9, beta2=0.999),
        [0.9, -1.9],
        [
            0.9
            - 0.1
            * ((0.9 * 0.05 + 0.1 * 0.2) / 0.19)
            / np.sqrt((0.999 * 0.001 * 0.25 + 0.001 * 0.04) / (1 - 0.999**2)),
            -1.9
            - 0.1
            * ((0.9 * -0.1 + 0.1 * 0.4) / 0.19)
            / np.sqrt((0.999 * 0.001 * 1.0 + 0.001 * 0.16) / (1 - 0.999**2)),
        ],
    ),
    # s1 = 0.1 g1² → w −= 0.01 g/√(0.1 g²) = 0.01/√0.1 sign(g)
    "rmsprop": (
        Optimizer("rmsprop", 0.01, beta2=0.9),
        [1 - 0.01 / np.sqrt(0.1), -2 + 0.01 / np.sqrt(0.1)],
        [
            1 - 0.01 / np.sqrt(0.1) - 0.01 * 0.2 / np.sqrt(0.9 * 0.1 * 0.25 + 0.1 * 0.04),
            -2 + 0.01 / np.sqrt(0.1) - 0.01 * 0.4 / np.sqrt(0.9 * 0.1 * 1.0 + 0.1 * 0.16),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(HAND))
def test_hand_computed_vectors(case):
    opt, one, two = HAND[case]
    after_one, after_two = two_steps(opt)
    np.testing.assert_allclose(after_one, one, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(after_two, two, rtol=1e-7, atol=1e-12)


def test_state_is_explicit():
    opt = Optimizer("nesterov", 0.1, 0.9)
    w = W0.copy()
    state = opt.init(w)
    opt.step(w, G1, state)
    assert state["t"] == 1
    np.testing.assert_allclose(state["v"], [-0.05, 0.1])


# --- exact identities over 50 steps on a quadratic C(w) = ½ wᵀAw − cᵀw -----------------------

A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.1]])
C = np.array([1.0, -2.0, 0.5])
START = np.array([2.0, 1.0, -3.0])
STEPS = 50


def grad(w):
    return A @ w - C


def run(opt: Optimizer) -> list[np.ndarray]:
    w = START.copy()
    state = opt.init(w)
    path = []
    for _ in range(STEPS):
        opt.step(w, grad(w), state)
        path.append(w.copy())
    return path


def library_sgd(lrs, mu, nesterov=False):
    """The widely used library's rule: b_1 = g_1, b_t = μ b_{t−1} + g_t; w ← w − γ_t b_t
    (or w ← w − γ_t (g_t + μ b_t) with Nesterov), written independently of bpexp."""
    w, b, path = START.copy(), None, []
    for lr in lrs:
        g = grad(w)
        b = g.copy() if b is None else mu * b + g
        w = w - lr * (g + mu * b if nesterov else b)
        path.append(w.copy())
    return path


def assert_same_path(p, q, tol=1e-12):
    for t, (a, b) in enumerate(zip(p, q, strict=True), start=1):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"step {t}")


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.98])
def test_classical_equals_library_sgd(beta):
    assert_same_path(run(Optimizer("momentum", 0.05, beta)), library_sgd([0.05] * STEPS, beta))


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.98])
def test_ema_equals_classical_with_scaled_lr(beta):
    alpha = 0.3
    ema = run(Optimizer("momentum", alpha, beta, "ema"))
    classical = run(Optimizer("momentum", alpha * (1 - beta), beta, "classical"))
    assert_same_path(ema, classical)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.98])
def test_bias_corrected_ema_equals_per_step_lr(beta):
    # With a per-step learning rate η_t the identity holds in the convention where η_t scales the
    # whole step (w ← w − η_t b_t, the library's form); constant-lr classical and that form agree.
    alpha = 0.3
    ema_bc = run(Optimizer("momentum", alpha, beta, "ema", bias_correction=True))
    lrs = [alpha * (1 - beta) / (1 - beta**t) for t in range(1, STEPS + 1)]
    assert_same_path(ema_bc, library_sgd(lrs, beta))
    # ... and with that schedule the classical form v ← βv − η_t g no longer matches: the
    # identities break under a schedule (docs/science.md#identities-between-forms).
    w, v = START.copy(), np.zeros(3)
    for lr in lrs:
        v = beta * v - lr * grad(w)
        w = w + v
    assert np.max(np.abs(w - ema_bc[-1])) > 1e-6


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.98])
def test_nesterov_equals_library_and_look_ahead_form(beta):
    lr = 0.05
    reformulated = run(Optimizer("nesterov", lr, beta))
    assert_same_path(reformulated, library_sgd([lr] * STEPS, beta, nesterov=True))
    # Look-ahead form: v ← βv − η∇C(θ + βv); θ ← θ + v. Stored weights are w = θ + βv.
    theta, v = START.copy(), np.zeros(3)
    look_ahead_points = []
    for _ in range(STEPS):
        v = beta * v - lr * grad(theta + beta * v)
        theta = theta + v
        look_ahead_points.append(theta + beta * v)
    assert_same_path(reformulated, look_ahead_points)
    # The stored weights are not θ itself.
    assert np.max(np.abs(reformulated[-1] - theta)) > 1e-9


def test_every_rule_descends_a_quadratic():
    f0 = 0.5 * START @ A @ START - C @ START
    for name in RULES:
        w = run(Optimizer(name, 0.05, 0.9))[-1]
        assert 0.5 * w @ A @ w - C @ w < f0, name


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "adamw", "lr": 0.1}, "optimizer.name"),
        ({"name": "sgd", "lr": -1.0}, "optimizer.lr"),
        ({"name": "sgd", "lr": 0.0}, "optimizer.lr"),
        ({"name": "momentum", "lr": 0.1, "beta": 1.5}, "optimizer.beta"),
        ({"name": "momentum", "lr": 0.1, "beta": 1.0}, "optimizer.beta"),
        ({"name": "momentum", "lr": 0.1, "form": "heavy_ball"}, "optimizer.form"),
        ({"name": "momentum", "lr": 0.1, "bias_correction": True}, "optimizer.bias_correction"),
        ({"name": "adam", "lr": 0.1, "bias_correction": True}, "optimizer.bias_correction"),
        ({"name": "nesterov", "lr": 0.1, "form": "ema"}, "optimizer.form"),
    ],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Optimizer(**kwargs)


ALL_RULES = [
    Optimizer("sgd", 0.1),
    Optimizer("momentum", 0.1, 0.9),
    Optimizer("momentum", 0.1, 0.9, "ema"),
    Optimizer("momentum", 0.1, 0.9, "ema", bias_correction=True),
    Optimizer("nesterov", 0.1, 0.9),
    Optimizer("rmsprop", 0.01),
    Optimizer("adam", 0.01),
]


@pytest.mark.parametrize("opt", ALL_RULES, ids=lambda o: o.name + "/" + o.form)
def test_update_on_the_scaled_gradient_is_step(opt):
    # The trainer hands update() the gradient already multiplied by gradient_scale (folded
    # into δ^L by backprop); step(g) must be exactly update(gradient_scale · g).
    rng = np.random.default_rng(0)
    w_step = rng.standard_normal(50)
    w_update = w_step.copy()
    s_step, s_update = opt.init(w_step), opt.init(w_update)
    for _ in range(20):
        g = rng.standard_normal(50)
        g_before = g.copy()
        opt.step(w_step, g, s_step)
        assert np.array_equal(g, g_before)  # step leaves the gradient alone
        opt.update(w_update, opt.gradient_scale * g, s_update)
    np.testing.assert_array_equal(w_step, w_update)
    expected = {"sgd": -0.1, "nesterov": -0.1, "rmsprop": 1.0, "adam": 1.0}
    if opt.name == "momentum":
        expected["momentum"] = -0.1 if opt.form == "classical" else 1.0 - 0.9
    assert opt.gradient_scale == expected[opt.name]


def test_weight_decay_with_sgd_is_the_decoupled_step():
    # C + λ/(2n) Σ‖W‖² under sgd: w ← (1 − ηλ/n) w − η ∂C/∂w on weights, biases as without.
    from bpexp.cost import COSTS
    from bpexp.data import load_dataset
    from bpexp.network import Network, initialize
    from bpexp.rng import stream
    from bpexp.trainer import train_epoch

    data = load_dataset("digits", seed=0)
    X, Y = data.X_train[:300], data.Y_train[:300]
    eta, lam, n = 0.5, 5.0, 300
    nets = [Network([64, 12, 10], "sigmoid", "sigmoid") for _ in range(2)]
    for net in nets:
        initialize(net, "scaled_normal", stream(0, "init"))
    opt = Optimizer("sgd", eta, weight_decay=lam)
    train_epoch(nets[0], opt, opt.init(nets[0].params), COSTS["quadratic"], X, Y, 10)
    twin = nets[1]
    for start in range(0, n, 10):
        twin.backprop(X[start : start + 10], Y[start : start + 10], COSTS["quadratic"])
        for W in twin.W:
            W *= 1 - eta * lam / n
        twin.params -= eta * twin.grad
    np.testing.assert_allclose(nets[0].params, twin.params, rtol=1e-12, atol=1e-15)
    # λ changes the weights, and a run without it differs: the test can fail.
    plain = Network([64, 12, 10], "sigmoid", "sigmoid")
    initialize(plain, "scaled_normal", stream(0, "init"))
    sgd = Optimizer("sgd", eta)
    train_epoch(plain, sgd, sgd.init(plain.params), COSTS["quadratic"], X, Y, 10)
    assert np.linalg.norm(nets[0].W[0]) < np.linalg.norm(plain.W[0])


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan")])
def test_bad_weight_decay_names_the_key(value):
    with pytest.raises(ConfigError, match="optimizer.weight_decay"):
        Optimizer("sgd", 0.1, weight_decay=value)


THRESHOLD_RULES = [
    Optimizer("sgd", 0.3),
    Optimizer("momentum", 0.3, 0.9),
    Optimizer("momentum", 0.05, 0.5),
    Optimizer("nesterov", 0.3, 0.9),
    Optimizer("nesterov", 0.1, 0.5),
    Optimizer("momentum", 0.3, 0.9, "ema"),
    Optimizer("momentum", 0.3, 0.9, "ema", bias_correction=True),
]


@pytest.mark.parametrize("opt", THRESHOLD_RULES, ids=lambda o: f"{o.name}-{o.form}-{o.beta}")
def test_divergence_sets_in_exactly_at_the_sharpness_threshold(opt):
    # f(w) = Σ λ_i w_i² / 2 with λ just below and just above the bound, all in one vector
    # (the rules act coordinate by coordinate): the run must shrink below it and grow above.
    threshold = sharpness_threshold(opt)
    factors = np.array([0.9, 0.99, 0.999, 1.001, 1.01, 1.1])
    lam = threshold * factors
    w = np.ones_like(lam)
    state = opt.init(w)
    steps, window = 20_000, 200
    middle, late = np.zeros_like(w), np.zeros_like(w)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(steps):
            opt.step(w, lam * w, state)
            if steps // 2 <= t < steps // 2 + window:
                middle = np.maximum(middle, np.abs(w))
            elif t >= steps - window:
                late = np.maximum(late, np.abs(w))
    # Far below the bound w reaches the subnormal floor early and stays there; far above it
    # overflows to inf or NaN, which compares False (not shrinking).
    shrinks = (late < middle) | (late < 1e-300)
    np.testing.assert_array_equal(shrinks, factors < 1)
    # Just above, the growth over the second half is unmistakable (not rounding noise).
    assert not np.any(late[factors > 1] <= 1.5 * middle[factors > 1])


def test_sharpness_threshold_values():
    assert sharpness_threshold(Optimizer("sgd", 0.5)) == pytest.approx(4.0)
    assert sharpness_threshold(Optimizer("momentum", 0.5, 0.9)) == pytest.approx(3.8 / 0.5)
    # Nesterov: 2(1 + β)/((1 + 2β) η) = 3.8/(2.8 · 0.5)
    assert sharpness_threshold(Optimizer("nesterov", 0.5, 0.9)) == pytest.approx(3.8 / 1.4)
    # EMA(η, β) ≡ classical(η (1 − β)), with or without bias correction in the long run.
    ema = sharpness_threshold(Optimizer("momentum", 0.5, 0.9, "ema"))
    assert ema == pytest.approx(3.8 / 0.05)
    assert sharpness_threshold(Optimizer("momentum", 0.5, 0.9, "ema", True)) == ema
    assert sharpness_threshold(Optimizer("rmsprop", 0.01)) is None
    assert sharpness_threshold(Optimizer("adam", 0.01)) is None
