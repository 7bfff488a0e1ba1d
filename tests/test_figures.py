"""Each sweep's figures on made-up runs: they draw what the data says, stay readable (at most
six lines a panel, legends off the data) and save without layout warnings."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from bpexp import figures

EPOCHS = 4


def _history(run_id: str, series: dict[str, list[float]]) -> list[tuple]:
    return [(run_id, m, step, v) for m, values in series.items() for step, v in enumerate(values)]


def _frame(rows: list[dict], points: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.DataFrame(rows), pd.DataFrame(points, columns=["run_id", "metric", "step", "value"])


def _readable(section: figures.Section) -> None:
    fig = section.figure
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        assert len(ax.get_lines()) <= 6, section.title
        assert ax.get_legend() is None, section.title  # the legend sits outside the panels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.savefig(io.BytesIO(), format="png", dpi=50)
    # The title stays clear of the legend beside the panels (a long one ran under it).
    if fig._suptitle is not None:
        renderer = FigureCanvasAgg(fig).get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        assert 0 <= title.x0 and title.x1 <= fig.bbox.width, section.title
        for legend in fig.legends:
            assert not title.overlaps(legend.get_window_extent(renderer)), section.title


def test_depth_draws_the_norm_per_layer_at_initialisation():
    rows, points = [], []
    for activation, factor in (("sigmoid", 0.2), ("relu", 1.0)):
        for depth in (1, 2, 3, 4):
            for seed in (5, 6):
                run_id = f"{activation}{depth}{seed}"
                rows.append(
                    {
                        "run_id": run_id,
                        "stage": "confirm",
                        "network.activation": activation,
                        "network.hidden": json.dumps([30] * depth),
                        "seed": seed,
                    }
                )
                # Layer l at init: factor^(depth - l) (vanishing towards the input for sigmoid).
                series = {
                    f"grad_norm/b{l}": [factor ** (depth - l) * (1 + seed / 100)] * (EPOCHS + 1)
                    for l in range(1, depth + 2)
                }
                points += _history(run_id, series)
    runs, history = _frame(rows, points)
    at_init, over_epochs = figures.depth(runs, history)
    for section in (at_init, over_epochs):
        _readable(section)
    sigmoid_ax = at_init.figure.axes[1]  # panels sorted by activation: relu, sigmoid
    assert sigmoid_ax.get_title() == "sigmoid"
    four = [line for line in sigmoid_ax.get_lines() if line.get_label() == "4 hidden"][0]
    expected = [0.2**3, 0.2**2, 0.2, 1.0]
    np.testing.assert_allclose(four.get_ydata(), np.array(expected) * 1.055, rtol=1e-12)
    assert len(over_epochs.figure.axes) == 8  # one panel per activation and depth
    table = "\n".join(at_init.text)
    assert "| sigmoid | 0.00844 | 0.0422 | 0.211 | 1.06 | 125 |" in table


def test_cost_saturation_compares_losses_relative_to_their_start():
    rows, points = [], []
    for cost, losses in (("quadratic", [0.5, 0.45, 0.4]), ("cross_entropy", [3.0, 1.5, 0.6])):
        run_id = cost
        rows.append({"run_id": run_id, "stage": "confirm", "cost.name": cost})
        points += _history(
            run_id,
            {
                "train/loss": losses,
                "val/accuracy": [0.1, 0.5, 0.8],
                "wrong_saturation/2": [0.3, 0.2, 0.1],
            },
        )
    runs, history = _frame(rows, points)
    (section,) = figures.cost_saturation(runs, history)
    _readable(section)
    relative = section.figure.axes[1]
    by_cost = {line.get_color(): line.get_ydata() for line in relative.get_lines()}
    got = sorted(tuple(np.round(v, 12)) for v in by_cost.values())
    assert got == sorted([(1.0, 0.9, 0.8), (1.0, 0.5, 0.2)])
    assert "wrong_saturation/2" in section.figure.axes[2].get_title()


def test_batch_size_puts_loss_against_updates_and_samples():
    rows, points = [], []
    start = pd.Timestamp("2026-01-01")
    for i, batch in enumerate([1.0, 10.0, np.nan]):
        run_id = f"b{i}"
        rows.append(
            {
                "run_id": run_id,
                "stage": "confirm",
                "trainer.batch_size": batch,
                "data.n_train": 100,
                "optimizer.lr": 0.1 * (i + 1),
                "trainer.epochs": 2,
                "start_time": start,
                "end_time": start + pd.Timedelta(seconds=2 * (3 - i)),
            }
        )
        series = {"val/loss": [1.0, 0.5, 0.25], "grad_noise_scale": [5.0, 6.0, 7.0 + i]}
        points += _history(run_id, series)
    runs, history = _frame(rows, points)
    (section,) = figures.batch_size(runs, history)
    _readable(section)
    by_update = section.figure.axes[1]
    xs = sorted(tuple(line.get_xdata()) for line in by_update.get_lines())
    # updates = epochs x ceil(100 / batch): 100, 10 and 1 an epoch (epoch 0 drawn at 1, log x)
    assert xs == sorted([(1, 100, 200), (1, 10, 20), (1, 1, 2)])
    # B_simple (grad_noise_scale) at epoch 0 and at the last epoch, next to each batch size.
    assert "| batch 1 | 0.1 | 100 | 3 | 5 | 7 |" in section.text
    assert "| full batch | 0.3 | 1 | 1 | 5 | 9 |" in section.text


def test_momentum_beta_heat_map_and_matched_lr_overlay():
    rows = []
    for form, bc in (("classical", False), ("ema", False), ("ema", True)):
        for beta in (0.5, 0.9):
            for lr in (0.01, 0.1, 1.0, 10.0):
                # Accuracy as a function of the classical-equivalent lr: identical runs where
                # classical lr == EMA lr (1 - beta), as the identity says.
                classical_lr = lr if form == "classical" else lr * (1 - beta)
                score = 1.0 / (1.0 + abs(np.log10(classical_lr) + 1))
                for seed in (0, 1):
                    rows.append(
                        {
                            "run_id": f"{form}{bc}{beta}{lr}{seed}",
                            "stage": "tune",
                            "optimizer.form": form,
                            "optimizer.bias_correction": bc,
                            "optimizer.beta": beta,
                            "optimizer.lr": lr,
                            "outcome": "completed",
                            "val/accuracy": score,
                        }
                    )
    runs = pd.DataFrame(rows)
    heat, overlay = figures.momentum_beta(
        runs, pd.DataFrame(columns=["run_id", "metric", "step", "value"])
    )
    _readable(heat)
    _readable(overlay)
    panel = overlay.figure.axes[1]  # beta = 0.9
    lines = {line.get_label(): line for line in panel.get_lines()}
    classical, ema = lines["classical"], lines["ema"]
    shared = set(np.round(classical.get_xdata(), 12)) & set(np.round(ema.get_xdata(), 12))
    assert shared == {0.01, 0.1, 1.0}  # EMA lr 0.1, 1, 10 x (1 - 0.9)
    for x in shared:
        yc = classical.get_ydata()[np.isclose(classical.get_xdata(), x)]
        ye = ema.get_ydata()[np.isclose(ema.get_xdata(), x)]
        assert yc == pytest.approx(ye)


def test_pixels3x4_prints_the_cost_after_0_1_10_50_updates():
    rows, points = [], []
    for seed in (0, 1):
        run_id = f"p{seed}"
        rows.append({"run_id": run_id, "seed": seed, "train/accuracy": 1.0})
        points += _history(run_id, {"train/loss": [0.5 / (1 + step + seed) for step in range(61)]})
    runs, history = _frame(rows, points)
    (section,) = figures.pixels3x4(runs, history)
    assert section.figure is None
    assert "| 0 | 0.5000 | 0.2500 | 0.0455 | 0.0098 | 1.000 |" in section.text
    assert "| 1 | 0.2500 | 0.1667 | 0.0417 | 0.0096 | 1.000 |" in section.text


def test_edge_of_stability_draws_sharpness_against_each_threshold():
    rows, points = [], []
    for arm, factor in (("sgd", 2.0), ("momentum/classical", 3.8)):
        for lr in (0.05, 0.1):
            for seed in (0, 1):
                run_id = f"{arm}{lr}{seed}"
                diverged = (arm, lr, seed) == ("momentum/classical", 0.1, 1)
                rows.append(
                    {"run_id": run_id, "arm": arm, "optimizer.lr": lr, "seed": seed}
                    | {"outcome": "diverged" if diverged else "completed"}
                )
                # Sharpness rises to the bound and stays there (the run that diverged stops).
                bound = factor / lr
                sharp = [bound / 2, bound, bound, bound * 1.02, bound][: 2 if diverged else 5]
                points += _history(
                    run_id, {"sharpness": sharp, "sharpness_threshold": [bound] * len(sharp)}
                )
    runs, history = _frame(rows, points)
    (section,) = figures.edge_of_stability(runs, history)
    _readable(section)
    assert section.file == "sharpness.png" and len(section.figure.axes) == 4
    assert "| sgd | 0.1 | 0 | completed | 20 | 10 | 20 | 1 | 20.4 |" in section.text
    assert "| momentum/classical | 0.1 | 1 | diverged | 38 | 19 |  |  |  |" in section.text
