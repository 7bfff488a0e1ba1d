"""Plots: run-level ones on a real run's history, sweep-level ones on small known frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage, imread

import bpexp
from bpexp import plots
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def run_history() -> pd.DataFrame:
    """A real 2-epoch run's per-epoch history, tidy: ``metric, step, value``."""
    result = bpexp.run(["trainer.epochs=2", "tracking.enabled=false"])
    tidy = result.history.reset_index().melt(id_vars="epoch", var_name="metric")
    return tidy.rename(columns={"epoch": "step"})


def _sweep_history() -> pd.DataFrame:
    """Two arms x two seeds x epochs 0..3; value = known function of arm, seed and step."""
    rows = []
    for a, arm in enumerate(["sgd", "nesterov"]):
        for seed in (0, 1):
            for step in range(4):
                base = (a + 1) * (1 + seed) / (step + 1)
                rows += [
                    (f"{arm}{seed}", "train/loss", step, base, arm),
                    (f"{arm}{seed}", "val/loss", step, base + 0.1, arm),
                    (f"{arm}{seed}", "grad_norm/b1", step, 0.01 * base, arm),
                    (f"{arm}{seed}", "grad_norm/b2", step, 0.1 * base, arm),
                    (f"{arm}{seed}", "saturation/1", step, 0.1 * step, arm),
                    (f"{arm}{seed}", "saturation/2", step, 0.2 * a, arm),
                ]
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "value", "arm"])


def test_run_plots_keep_their_signatures(run_history, tmp_path):
    for name, plot in plots.RUN_PLOTS.items():
        ax = plots.new_axes()
        fig = plot(run_history, ax)
        assert isinstance(fig, Figure) and fig is ax.figure  # drawn on the Axes given
        fig.savefig(tmp_path / name)
        assert imread(tmp_path / name).ndim == 3
    ax = plots.new_axes()
    plots.loss_curves(run_history, ax)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["train/loss", "val/loss"]
    for line in lines:  # the run's own points, epoch by epoch
        points = run_history[run_history["metric"] == line.get_label()].sort_values("step")
        np.testing.assert_array_equal(line.get_xdata(), points["step"])
        np.testing.assert_array_equal(line.get_ydata(), points["value"])


def test_save_run_plots_writes_the_three_run_plots(run_history, tmp_path):
    paths = plots.save_run_plots(run_history, tmp_path / "plots", dpi=80)
    assert [p.name for p in paths] == list(plots.RUN_PLOTS)
    for path in paths:
        assert imread(path).shape[:2] == (320, 480)  # new_axes: 6 x 4 inches at 80 dpi


def test_arm_curves_draw_the_mean_and_a_std_band():
    history = _sweep_history()
    ax = plots.new_axes()
    fig = plots.arm_curves(history, ax)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {
        f"{arm} {m} (n=2)" for arm in ("sgd", "nesterov") for m in ("train/loss", "val/loss")
    }
    # nesterov (a = 1) val/loss at step s: mean over seeds of 2 (1 + seed) / (s + 1) + 0.1.
    y = lines["nesterov val/loss (n=2)"].get_ydata()
    np.testing.assert_allclose(y, [3 / (s + 1) + 0.1 for s in range(4)])
    assert lines["sgd train/loss (n=2)"].get_linestyle() == "--"
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 4
    assert fig is ax.figure


def test_lr_sensitivity_uses_log_lr_and_marks_diverged_runs():
    runs = pd.DataFrame(
        {
            "arm": ["sgd"] * 4 + ["nesterov"] * 4,
            "optimizer.lr": [0.1, 0.1, 1.0, 1.0] * 2,
            "val/loss": [0.5, 0.7, 0.2, 0.4, 0.3, 0.3, math.nan, 0.1],
            "outcome": ["completed"] * 6 + ["diverged", "completed"],
        }
    )
    ax = plots.new_axes()
    plots.lr_sensitivity(runs, ax)
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["sgd"].get_ydata(), [0.6, 0.3])
    nesterov = lines["nesterov"].get_ydata()
    assert nesterov[0] == pytest.approx(0.3) and math.isnan(nesterov[1])  # a seed diverged
    crosses = [c for c in ax.collections if c.get_label() == "diverged (any arm)"]
    assert len(crosses) == 1 and isinstance(crosses[0], PathCollection)
    assert crosses[0].get_offsets()[:, 0].tolist() == [1.0]


def test_arm_grad_norms_and_saturation(tmp_path):
    history = _sweep_history()
    ax = plots.new_axes()
    plots.arm_grad_norms(history, ax)
    assert ax.get_yscale() == "log"
    assert len(ax.get_lines()) == 2 * 2  # arms x layers
    ax = plots.new_axes()
    fig = plots.arm_saturation(history, ax)
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    data = image.get_array()
    assert data.shape == (2 * 2, 4)  # (arm, layer) rows x epochs
    # Rows sorted by arm then layer: nesterov·1, nesterov·2, sgd·1, sgd·2.
    np.testing.assert_allclose(data[0], [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(data[1], [0.2] * 4)
    np.testing.assert_allclose(data[3], [0.0] * 4)
    fig.savefig(tmp_path / "s.png")
    assert imread(tmp_path / "s.png").ndim == 3


def test_arm_colors_are_stable_across_plots():
    first = plots.arm_colors(["sgd", "nesterov", "sgd"])
    assert first == plots.arm_colors(["nesterov", "sgd"])
    assert first["nesterov"] != first["sgd"]


@pytest.mark.slow  # a subprocess
def test_importing_the_plots_leaves_the_backend_alone(tmp_path):
    """A notebook's backend (here "pdf", chosen before bpexp is imported) is still in force
    after the plotting modules are imported and have drawn a PNG; pyplot is never imported."""
    (tmp_path / "notebook_cell.py").write_text(
        "import sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "from bpexp import demos, plots\n"
        "ax = plots.new_axes()\n"
        "ax.plot([0, 1], [1, 0])\n"
        "ax.figure.savefig(sys.argv[1])\n"
        "demos.write_demos(sys.argv[2])\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    png, folder = tmp_path / "line.png", tmp_path / "demos"
    proc = run_cli([str(png), str(folder)], tmp_path, timeout=120, module="notebook_cell")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pdf", "False"]
    for path in (png, folder / "ema.png", folder / "ravine.png"):
        assert imread(path).ndim == 3, path  # PNGs, drawn by Agg under the pdf backend


def _sharpness_history() -> pd.DataFrame:
    """2 arms x 2 lrs x 2 seeds, sharpness every 10 epochs to 100; the run (momentum, 0.1,
    seed 1) stops at epoch 30 (diverged)."""
    rows = []
    for arm, factor in (("sgd", 2.0), ("momentum/classical", 3.8)):
        for lr in (0.05, 0.1):
            for seed in (0, 1):
                run_id = f"{arm}-{lr}-{seed}"
                end = 30 if (arm, lr, seed) == ("momentum/classical", 0.1, 1) else 100
                for step in range(0, end + 1, 10):
                    common = {"run_id": run_id, "step": step, "arm": arm, "optimizer.lr": lr}
                    common["seed"] = seed
                    rows.append(common | {"metric": "sharpness", "value": 10.0 + step / 10 + seed})
                    rows.append(common | {"metric": "sharpness_threshold", "value": factor / lr})
                    rows.append(common | {"metric": "train/loss", "value": 1.0 / (1 + step)})
    return pd.DataFrame(rows)


def test_sharpness_vs_threshold_small_multiples():
    history = _sharpness_history()
    arms, lrs = plots.sharpness_panels(history)
    assert arms == ["momentum/classical", "sgd"] and lrs == [0.05, 0.1]
    axes = plots.new_axes_grid(len(arms), len(lrs))
    fig = plots.sharpness_vs_threshold(history, axes)
    assert isinstance(fig, Figure) and axes.shape == (2, 2)
    for i, arm in enumerate(arms):
        for j, lr in enumerate(lrs):
            ax = axes[i, j]
            assert ax.get_title() == f"{arm}, lr={lr:g}"
            lines = ax.get_lines()
            assert len(lines) <= 6
            # The threshold is a horizontal line at factor / lr, inside the y-range.
            factor = 3.8 if arm.startswith("momentum") else 2.0
            levels = {
                round(line.get_ydata()[0], 9) for line in lines if line.get_linestyle() == "--"
            }
            assert levels == {round(factor / lr, 9)}
            assert ax.get_ylim()[1] > factor / lr
            seeds = [line for line in lines if line.get_label().startswith("seed")]
            assert [list(line.get_xdata())[-1] for line in seeds if line.get_marker() != "x"] == (
                [100, 30] if (arm, lr) == ("momentum/classical", 0.1) else [100, 100]
            )
    # The diverged run is marked, and the legend is one, off the panels.
    crosses = [ln for ln in axes[0, 1].get_lines() if ln.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [30]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes.flat)
