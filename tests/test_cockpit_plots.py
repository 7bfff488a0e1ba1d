"""The cockpit and spectrum figures drawn from a real short run (issue 26)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bpexp
from bpexp import cockpit_plots
from bpexp.trainer import EpochRecord

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def short_run():
    """Digits, 4 epochs, every instrument on; the spectra caught from the EpochRecords."""
    spectra = {}

    def catch(record):
        if isinstance(record, EpochRecord) and record.spectrum is not None:
            spectra[record.epoch] = record.spectrum

    overrides = [
        "tracking.enabled=false",
        "trainer.epochs=4",
        "trainer.alpha_every=1",
        "trainer.sharpness_every=2",
        "trainer.trace_every=2",
        "trainer.top_k_every=2",
        "trainer.top_k=3",
        "trainer.spectrum_every=2",
        "trainer.spectrum_steps=10",
        "trainer.spectrum_probes=2",
    ]
    result = bpexp.run(overrides, listeners=[catch])
    return result.history, spectra


def test_cockpit_figure_of_a_real_run_holds_the_expected_lines(short_run, tmp_path):
    history, _ = short_run
    fig = cockpit_plots.cockpit_figure(history, title="digits, 4 epochs")
    path = cockpit_plots.save(fig, tmp_path / "plots" / "cockpit.png", dpi=60)
    assert path.read_bytes()[:8] == PNG
    lines = cockpit_plots.panel_lines(fig)
    assert list(lines) == list(cockpit_plots.PANELS)
    tests = ["norm", "inner product", "orthogonality", "1 = noise ≈ gradient"]
    assert lines == {
        "loss": ["train/loss", "val/loss"],
        "α: where the step lands": ["0 = the minimum", "1 = the far side", "α"],
        "gradient tests on the probe": tests,
        "gradient tests on a batch": tests,
        "sharpness and its threshold": ["λ₁ (sharpness)", "threshold", "λ₂", "λ₃"],
        "Hessian trace": ["tr H (30 H v products each)"],
        "distance from init": ["‖W₁ − W₁(0)‖", "‖W₂ − W₂(0)‖"],
        "update size": ["‖Δθ‖ of one step"],
    }
    assert max(map(len, lines.values())) <= cockpit_plots.MAX_LINES
    # Each line holds the run's values: α from epoch 1, the trace at epochs 0, 2, 4.
    by_title = {ax.get_title(): ax for ax in fig.axes}
    alpha = next(
        line for line in by_title["α: where the step lands"].get_lines() if line.get_label() == "α"
    )
    np.testing.assert_array_equal(alpha.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(alpha.get_ydata(), history["alpha"].dropna().to_numpy())
    (trace,) = [
        line for line in by_title["Hessian trace"].get_lines() if line.get_label()[0] != "_"
    ]
    np.testing.assert_array_equal(trace.get_xdata(), [0, 2, 4])


def test_spectrum_figure_has_one_line_per_measured_epoch(short_run, tmp_path):
    _, spectra = short_run
    assert sorted(spectra) == [0, 2, 4]
    fig = cockpit_plots.spectrum_figure(spectra)
    path = cockpit_plots.save(fig, tmp_path / "spectrum.png", dpi=60)
    assert path.read_bytes()[:8] == PNG
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()[:1]]
    assert labels == ["epoch 0", "epoch 2", "epoch 4"]
    for ax, epoch in zip(fig.axes, (0, 2, 4), strict=True):
        np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), spectra[epoch].density)
    # The same from the arrays a tracked run would store (grid, density per epoch).
    from bpexp.curvature import load_spectra, save_spectra

    save_spectra(str(tmp_path / "spectrum.npz"), spectra)
    again = cockpit_plots.spectrum_figure(load_spectra(str(tmp_path / "spectrum.npz")))
    assert cockpit_plots.panel_lines(again) == cockpit_plots.panel_lines(fig)


def test_tidy_history_and_instruments_off(short_run, tmp_path):
    history, _ = short_run
    tidy = history.reset_index().melt(id_vars="epoch", var_name="metric", value_name="value")
    tidy = tidy.dropna().rename(columns={"epoch": "step"})
    tidy = pd.concat(
        [tidy, pd.DataFrame({"metric": ["train/batch_loss"], "step": [130], "value": [0.1]})]
    )
    wide = cockpit_plots.wide_history(tidy)
    assert cockpit_plots.panel_lines(cockpit_plots.cockpit_figure(wide)) == (
        cockpit_plots.panel_lines(cockpit_plots.cockpit_figure(history))
    )
    # A run without instruments: each empty panel says which key turns it on.
    bare = history[["train/loss", "val/loss"]]
    fig = cockpit_plots.cockpit_figure(bare)
    texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    for key in ("alpha_every", "gradient_tests_every", "sharpness_every", "trace_every"):
        assert key in texts
    assert cockpit_plots.save(fig, tmp_path / "bare.png", dpi=50).is_file()
    empty = cockpit_plots.spectrum_figure({})
    assert "spectrum_every" in empty.axes[0].texts[0].get_text()
