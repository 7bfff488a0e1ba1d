"""The EMA and ravine demonstrations: closed forms, the optimizers' behaviour, the command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from bpexp import demos
from bpexp.optimizer import Optimizer
from tests.conftest import run_cli


@pytest.mark.parametrize("beta", demos.EMA_BETAS)
def test_ema_of_a_constant_matches_the_closed_form(beta):
    c, t = 2.5, np.arange(1, 101)
    series = np.full(100, c)
    np.testing.assert_allclose(demos.ema(series, beta), c * (1 - beta**t), rtol=1e-12)
    np.testing.assert_allclose(demos.ema(series, beta, bias_correction=True), c, rtol=1e-12)


def test_ema_follows_the_recursion_on_the_noisy_cosine():
    series = demos.noisy_cosine()
    for beta in demos.EMA_BETAS:
        v, expected = 0.0, []
        for s in series:
            v = beta * v + (1 - beta) * s
            expected.append(v)
        expected = np.array(expected)
        np.testing.assert_allclose(demos.ema(series, beta), expected, rtol=1e-12, atol=1e-15)
        corrected = expected / (1 - beta ** np.arange(1, len(series) + 1))
        got = demos.ema(series, beta, bias_correction=True)
        np.testing.assert_allclose(got, corrected, rtol=1e-12, atol=1e-15)
    # Larger beta is smoother: smaller mean squared step-to-step change.
    roughness = [np.mean(np.diff(demos.ema(series, b)) ** 2) for b in demos.EMA_BETAS]
    assert roughness == sorted(roughness, reverse=True)


def test_ema_demo_frame():
    frame = demos.ema_demo()
    assert list(frame.columns) == ["step", "signal", "beta", "bias_correction", "ema"]
    assert len(frame) == 2 * len(demos.EMA_BETAS) * 200
    assert frame["step"].min() == 1


def test_sgd_zigzags_across_the_ravine_near_its_stability_limit():
    y = demos.trajectory(Optimizer("sgd", lr=0.9), steps=30)[:, 1]
    assert np.all(y[1:] * y[:-1] < 0)  # the sign of y flips every step
    np.testing.assert_allclose(y[1:] / y[:-1], 1 - 2 * 0.9)  # y ← (1 − 2η) y
    calm = demos.trajectory(Optimizer("sgd", lr=0.4), steps=30)[:, 1]
    assert np.all(calm > 0)  # below η = 0.5 it does not cross the floor
    wild = demos.trajectory(Optimizer("sgd", lr=1.05), steps=30)[:, 1]
    assert abs(wild[-1]) > abs(wild[0])  # past the limit η = 1 it diverges across


def test_momentum_and_nesterov_end_lower_than_sgd_at_the_same_long_run_step():
    steps = 30
    f = {
        name: demos.ravine_f(demos.trajectory(rule, steps)[-1])
        for name, rule in demos.ravine_rules(lr=0.9, beta=0.5).items()
    }
    assert f["momentum"] < f["sgd"] and f["nesterov"] < f["sgd"]
    assert all(value < demos.ravine_f(np.array(demos.RAVINE_START)) * 1e-2 for value in f.values())
    # With beta = 0.9 momentum does not win here (its rate is capped at sqrt(0.9) a step):
    # the demonstration's claim depends on beta, and the test says so.
    heavy = demos.ravine_rules(lr=0.9, beta=0.9)
    f_heavy = demos.ravine_f(demos.trajectory(heavy["momentum"], steps)[-1])
    assert f_heavy > f["sgd"]


def test_ravine_demo_frame_and_learning_rate_convention():
    frame = demos.ravine_demo(steps=5)
    assert list(frame.columns) == ["optimizer", "step", "x", "y", "f"]
    assert len(frame) == 3 * 6
    rules = demos.ravine_rules(lr=0.9, beta=0.5)
    assert rules["momentum"].lr == pytest.approx(0.45) and rules["sgd"].lr == 0.9
    start = frame[frame["step"] == 0]
    assert (start["x"] == -7).all() and (start["y"] == 2).all()


@pytest.mark.slow  # a subprocess
def test_demos_command_writes_pngs_and_prints_their_paths(tmp_path: Path):
    out = tmp_path / "pictures"
    proc = run_cli(["--out", str(out)], tmp_path, timeout=120, module="bpexp.demos")
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split()
    assert printed == [str(out / "ema.png"), str(out / "ravine.png")]
    for path in printed:
        image = imread(path)
        assert image.ndim == 3 and image.shape[1] > 500
