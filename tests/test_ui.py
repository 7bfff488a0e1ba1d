"""What a person sees in the MLflow UI: a real `mlflow server`, a real sweep logged to it over
HTTP, and a real headless Chromium opening the UI's pages."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.image import imread
from mlflow import MlflowClient

from tests.browser import CHROMIUM, Browser
from tests.conftest import run_cli, start_mlflow_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def served_sweep(tmp_path_factory):
    """The `optimizers` sweep as a plain grid (no protocol) cut to 3 optimizers x lr 0.3 x
    seeds {0, 1}, 2 epochs, logged to a real server; yields the server's URL, the experiment
    id and the parent run id."""
    folder = tmp_path_factory.mktemp("ui")
    url, proc = start_mlflow_server(folder)
    try:
        args = ["sweep=optimizers", "hydra.sweeper.protocol=null", "optimizer.lr=0.3", "seed=0,1"]
        args.append("trainer.epochs=2")
        out = run_cli([*args, f"tracking.uri={url}"], folder)
        assert out.returncode == 0, out.stderr[-3000:]
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("bpexp").experiment_id
        (parent,) = client.search_runs([experiment], "tags.`bpexp.kind` = 'sweep'")
        yield url, experiment, parent.info.run_id
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# The report's figures inside the artifact view's iframe: caption, decoded width, position.
FIGURES_JS = """Array.from(document.images)
  .filter(i => i.src.startsWith('data:image/png;base64,') && i.complete && i.naturalWidth > 0)
  .map(i => [i.alt, i.naturalWidth, i.getBoundingClientRect().left,
             i.getBoundingClientRect().top])"""
FRAME_JS = "document.querySelector('iframe.mlflow-html-iframe')"


def test_the_report_shows_with_its_figures_in_the_artifact_view(served_sweep, tmp_path):
    url, experiment, parent = served_sweep
    page = f"{url}/#/experiments/{experiment}/runs/{parent}/artifactPath/report/index.html"
    with Browser(1400, 1800) as browser:
        browser.open(page)
        # MLflow fetches the artifact and shows it in a sandboxed iframe (a blob: URL).
        frame = browser.wait_for(f"(f => f && f.src)({FRAME_JS})")
        assert frame and frame.startswith("blob:"), frame
        # (until every image of the page is decoded, not only the first)
        figures = browser.wait_for(
            f"(x => x.length && x.length === document.images.length && x)({FIGURES_JS})",
            frames=True,
        )
        heading = browser.wait_for("document.querySelector('h1').textContent", frames=True)
        left, top = browser.evaluate(f"(r => [r.left, r.top])({FRAME_JS}.getBoundingClientRect())")
        shot = browser.screenshot(tmp_path / "report.png")
    assert heading == "Sweep optimizers"
    # Every figure of the page, in its order, decoded in full (as wide as its PNG).
    client = MlflowClient(tracking_uri=url)
    folder = client.download_artifacts(parent, "report", str(tmp_path))
    page = (tmp_path / "report" / "index.md").read_text()
    linked = re.findall(r"^!\[(.*)\]\((.*)\)$", page, re.M)
    assert [f[0] for f in figures] == [caption for caption, _ in linked]
    widths = [imread(f"{folder}/{file}").shape[1] for _, file in linked]
    assert [f[1] for f in figures] == widths and len(widths) >= 4
    # What a person sees: the first figure is drawn on screen, not blank page.
    x, y = int(left + figures[0][2]), int(top + figures[0][3])
    pixels = imread(shot)[y : y + 300, x : x + 500, :3]
    assert pixels.shape[:2] == (300, 500)
    assert np.mean(pixels.min(axis=2) < 0.9) > 0.02, "the first figure is not drawn"
    assert np.mean(pixels.min(axis=2) < 0.9) < 0.9
