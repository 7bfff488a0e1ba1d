"""Sweep reports: at the end of a real multirun, from the command line, and when they fail."""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from mlflow import MlflowClient
from mlflow.utils.validation import validate_param_and_metric_name

from bpexp import analysis, report, sweep
from tests.conftest import run_cli, tiny_optimizers_sweep

ARM_KEYS = {"sgd", "momentum", "nesterov"}
# A plain grid's report: every sweep's sections that apply (bpexp.figures).
FIGURES = {
    "lr_sensitivity.png",
    "yardstick_curves.png",
    "loss_curves.png",
    "grad_norm.png",
    "saturation.png",
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    """3 optimizers x lr {0.3, 1.0} x seeds {0, 1}, 2 epochs; its end writes the report."""
    return tiny_optimizers_sweep(tmp_path_factory.mktemp("sweep"))


class _Images(HTMLParser):
    """The ``alt`` and ``src`` of every ``<img>`` of a page, and its table cells' text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images[dict(attrs)["alt"]] = dict(attrs)["src"]
        self._in_cell = tag in ("td", "th")

    def handle_data(self, data):
        if self._in_cell:
            self.cells.append(data.strip())
            self._in_cell = False


def _check_report_folder(folder: Path) -> str:
    """Every figure exists, opens as an image, is linked from index.md and embedded whole in
    index.html; returns the Markdown page."""
    page = (folder / "index.md").read_text()
    linked = dict(
        (file, caption) for caption, file in re.findall(r"^!\[(.*)\]\((.*)\)$", page, re.M)
    )
    assert set(linked) == FIGURES, linked
    parsed = _Images()
    parsed.feed((folder / "index.html").read_text())
    for name, caption in linked.items():
        image = imread(folder / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        kind, data = parsed.images[caption].split(",", 1)
        assert kind == "data:image/png;base64"
        assert base64.b64decode(data) == (folder / name).read_bytes(), name
    assert ARM_KEYS <= set(parsed.cells)
    for arm in ARM_KEYS:
        assert re.search(rf"^\| {re.escape(arm)} \| ", page, re.MULTILINE), arm
    comparison = pd.read_csv(folder / "comparison.csv")
    assert len(comparison) == 3 and "val/loss_ci95" in comparison.columns
    assert len(pd.read_csv(folder / "runs.csv")) == 12
    return page


@pytest.mark.slow
def test_multirun_end_logs_report_and_sweep_metrics_to_the_parent(swept):
    assert f"report: {swept['sweep_dir'] / 'report' / 'index.md'}" in swept["out"].stdout
    _check_report_folder(swept["sweep_dir"] / "report")
    client = MlflowClient(tracking_uri=swept["uri"])
    parent = client.get_run(swept["parent"].info.run_id)
    assert parent.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    files = [*FIGURES, "index.md", "index.html", "comparison.csv"]
    expected = {f"report/{name}" for name in files}
    assert expected <= logged
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    keys = set(parent.data.metrics)
    for name in report.PARENT_METRICS:
        assert {f"{arm}/{name}/optimizers" for arm in ARM_KEYS} <= keys
    assert {"sgd/val/loss/optimizers", "momentum/val/accuracy/optimizers"} <= keys
    assert len(keys) == len(ARM_KEYS) * len(report.PARENT_METRICS)


@pytest.mark.slow
def test_sweep_metrics_are_each_arms_mean_over_seeds_at_its_best_lr(swept):
    # Recomputed without bpexp.analysis: the best lr of each optimizer from the summary.csv
    # the jobs wrote (highest mean final val/accuracy over seeds, ties to the earlier lr),
    # then the mean over those runs of the val/loss curves read from the store with the
    # plain client.
    table = pd.read_csv(swept["summary"])
    overrides = table["overrides"].str.split().apply(lambda kv: dict(s.split("=") for s in kv))
    table["optimizer"] = overrides.str["optimizer"]
    table["lr"] = overrides.str["optimizer.lr"].astype(float)
    client = MlflowClient(tracking_uri=swept["uri"])
    parent_id = swept["parent"].info.run_id
    keys = {"sgd": "sgd", "momentum": "momentum", "nesterov": "nesterov"}
    for optimizer, key in keys.items():
        arm = table[table["optimizer"] == optimizer]
        best_lr = arm.groupby("lr")["val/accuracy"].mean().idxmax()
        run_ids = arm.loc[arm["lr"] == best_lr, "run_id"]
        assert len(run_ids) == 2  # the two seeds
        curves = [
            [
                m.value
                for m in sorted(client.get_metric_history(r, "val/loss"), key=lambda m: m.step)
            ]
            for r in run_ids
        ]
        logged = client.get_metric_history(parent_id, f"{key}/val/loss/optimizers")
        logged = sorted((m.step, m.value) for m in logged)
        assert [s for s, _ in logged] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in logged], np.mean(curves, axis=0), rtol=1e-12)


@pytest.mark.slow
def test_report_command_writes_the_default_folder_and_logs_it(swept, tmp_path):
    parent_id = swept["parent"].info.run_id
    proc = run_cli(["--tracking-uri", swept["uri"]], tmp_path, timeout=120, module="bpexp.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "reports" / f"optimizers-{parent_id[:8]}"
    assert str(folder / "index.md") in proc.stdout
    page = _check_report_folder(folder)
    assert parent_id in page and "Student t" in page
    # The sweep metrics existed already: the command must not log them a second time.
    client = MlflowClient(tracking_uri=swept["uri"])
    history = client.get_metric_history(parent_id, "sgd/val/loss/optimizers")
    assert len(history) == 3


@pytest.mark.slow
def test_report_main_by_parent_id_into_a_chosen_folder(swept, tmp_path):
    parent_id = swept["parent"].info.run_id
    out = tmp_path / "mine"
    args = [parent_id, "--tracking-uri", swept["uri"], "--out", str(out)]
    args += ["--target-loss", "0.5", "--target-accuracy", "0.2"]
    client = MlflowClient(tracking_uri=swept["uri"])
    before = {a.path for a in client.list_artifacts(parent_id, "report")}
    stored = client.download_artifacts(parent_id, "report/index.md", str(tmp_path / "before"))
    assert report.main(args) == 0
    # --out writes only to DIR: the parent's report is the one the sweep logged, unchanged.
    assert {a.path for a in client.list_artifacts(parent_id, "report")} == before
    again = client.download_artifacts(parent_id, "report/index.md", str(tmp_path / "after"))
    assert Path(again).read_text() == Path(stored).read_text()
    assert "epochs to target" not in Path(again).read_text()
    page = _check_report_folder(out)
    assert "epochs to target loss" in page and "epochs to target accuracy" in page
    comparison = pd.read_csv(out / "comparison.csv")
    assert comparison["target_loss_reached"].between(0, 2).all()


@pytest.mark.slow
def test_report_main_names_the_known_sweeps_when_one_is_missing(swept, capsys):
    assert report.main(["nope", "--tracking-uri", swept["uri"], "--no-log"]) == 2
    assert "optimizers" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rerun_whose_jobs_are_all_skipped_still_reports_them(swept, tmp_path):
    # A copy of the store, so the rerun's parent does not become the others' "latest sweep".
    shutil.copy(swept["dir"] / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep=optimizers", "hydra.sweeper.protocol=null", "optimizer.lr=0.3,1.0", "seed=0,1"]
    out = run_cli([*args, "trainer.epochs=2", f"tracking.uri={uri}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "12 skipped" in out.stdout and "warning" not in out.stderr
    # The new parent has no children; its summary.csv names the runs that were reused.
    runs = analysis.runs(sweep="optimizers", tracking_uri=uri)
    old_parent = swept["parent"].info.run_id
    assert len(runs) == 12 and set(runs["parent_run_id"]) == {old_parent}
    client = MlflowClient(tracking_uri=uri)
    (rerun,) = [
        r
        for r in client.search_runs(["1"], "tags.`bpexp.kind` = 'sweep'")
        if r.info.run_id != old_parent
    ]
    assert "report/index.md" in {a.path for a in client.list_artifacts(rerun.info.run_id, "report")}
    for key, value in swept["parent"].data.metrics.items():
        assert rerun.data.metrics[key] == pytest.approx(value, rel=1e-12), key


@pytest.mark.slow
def test_a_failing_report_keeps_the_summary_and_closes_the_parent(
    swept, tmp_path, monkeypatch, capsys
):
    client = MlflowClient(tracking_uri=swept["uri"])
    parent = client.create_run("1", tags={"bpexp.kind": "sweep", "sweep": "broken"})
    table = pd.DataFrame({"job": [0], "outcome": ["completed"], "run_id": [None]})
    table.to_csv(tmp_path / "summary.csv", index=False)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(report, "log_sweep", broken)
    sweep._close_parent(swept["uri"], parent.info.run_id, tmp_path, "FINISHED")
    assert "warning: no sweep report: RuntimeError: plotting exploded" in capsys.readouterr().err
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["summary.csv"]
    client.delete_run(parent.info.run_id)


def test_metric_keys_are_valid_mlflow_names():
    assert report.parent_metric_key("val/loss", "momentum/ema+bc", "momentum_beta") == (
        "momentum-ema-bc/val/loss/momentum_beta"
    )
    for arm in ("beta=0.5 batch_size=10", "network=deep_relu hidden=[30,30]", "sgd"):
        key = report.parent_metric_key("val/accuracy", arm, "my sweep/2")
        assert validate_param_and_metric_name(key) and key.count("/") == 3, key
        assert key.endswith("/val/accuracy/my_sweep-2"), key


def test_log_sweep_without_a_tracked_run_writes_no_report(tmp_path):
    # Untracked or invalid jobs only: nothing to read, so the client must not even be used.
    table = pd.DataFrame(
        {
            "job": [0, 1, 2],
            "arm": ["all"] * 3,
            "outcome": ["completed", "invalid", "completed"],
            "run_id": [None, "", np.nan],
        }
    )
    table.to_csv(tmp_path / "summary.csv", index=False)
    assert report.log_sweep(object(), "0" * 32, tmp_path) is None
    assert not (tmp_path / "report").exists()


def _synthetic(cost_names=("quadratic", "cross_entropy")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs without a validation split: 2 costs x 2 lrs x 2 seeds, and their histories."""
    runs, points = [], []
    for c, cost in enumerate(cost_names):
        for lr in (0.1, 1.0):
            for seed in (0, 1):
                run_id = f"{len(runs):032x}"
                final = (c + 1) * (0.5 if lr == 1.0 else 0.8) + 0.01 * seed
                runs.append(
                    {
                        "run_id": run_id,
                        "outcome": "completed",
                        "cost.name": cost,
                        "optimizer.name": "sgd",
                        "optimizer.form": "classical",
                        "optimizer.lr": lr,
                        "optimizer.beta": 0.9,
                        "seed": seed,
                        "train/loss": final,
                        "train/accuracy": 1 - final / 2,
                    }
                )
                for step in range(3):
                    value = final * (3 - step)
                    points += [
                        (run_id, "train/loss", step, value),
                        (run_id, "train/accuracy", step, 1 - value / 6),
                        (run_id, "grad_norm/b1", step, 0.1 / (step + 1)),
                        (run_id, "saturation/1", step, 0.1 * step),
                    ]
    return pd.DataFrame(runs), pd.DataFrame(points, columns=analysis.HISTORY_COLUMNS)


def test_write_report_without_validation_split_and_with_different_costs(tmp_path):
    runs, history = _synthetic()
    runs["arm"] = runs["cost.name"]  # the sweeper's arms: cost=quadratic,cross_entropy
    sweep = report.Sweep("costs", "0" * 32, ["a note"], runs, history, None, None)
    result = report.write(sweep, tmp_path, title="synthetic")
    page = result.index.read_text()
    # No validation split: ranked by train/accuracy, one quantity under every cost.
    assert "by the mean final train/accuracy over seeds (higher is better" in page
    assert "vs best, paired" in page and "- a note" in page
    assert set(result.table["arm"]) == {"quadratic", "cross_entropy"}
    assert set(result.table["optimizer.lr"]) == {1.0}
    for name in result.files:
        assert imread(tmp_path / name).ndim == 3
    assert set(result.files) == FIGURES
    metrics = report.parent_metrics(result.curves, "costs", timestamp=1)
    keys = {m.key for m in metrics}
    assert keys == {"quadratic/train/loss/costs", "cross_entropy/train/loss/costs"}
    quadratic = sorted((m.step, m.value) for m in metrics if m.key.startswith("quadratic"))
    # Mean over seeds 0 and 1 at lr = 1.0: (0.5 + 0.51) / 2 (3 - step).
    np.testing.assert_allclose([v for _, v in quadratic], [0.505 * (3 - s) for s in range(3)])


def _sweep_report(folder: Path, args: list[str]) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    out = run_cli([*args, f"tracking.uri={uri}", "tracking.plots=false"], cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    (index,) = folder.glob("multirun/*/*/report/index.md")
    return index


@pytest.mark.slow
def test_edge_of_stability_report_draws_sharpness_against_each_threshold(tmp_path):
    args = ["sweep=edge_of_stability", "seed=0", "trainer.epochs=4", "trainer.sharpness_every=2"]
    index = _sweep_report(tmp_path, [*args, "optimizer.lr=0.02,0.1"])
    page = index.read_text()
    assert "### Sharpness against the stability bound" in page
    assert "](sharpness.png)" in page
    image = imread(index.parent / "sharpness.png")
    assert image.shape[0] > 300 and image.shape[1] > 300
    # One table row per run with its bound: 2/lr for SGD, 3.8/lr for momentum (beta 0.9).
    for arm, lr, bound in [
        ("sgd", "0.02", "100"),
        ("sgd", "0.1", "20"),
        ("momentum", "0.02", "190"),
        ("momentum", "0.1", "38"),
    ]:
        assert re.search(rf"^\| {re.escape(arm)} \| {lr} \| 0 \| \w+ \| {bound} \|", page, re.M), (
            arm,
            lr,
        )


@pytest.mark.slow
def test_batch_size_report_shows_the_gradient_noise_scale_per_batch_size(tmp_path):
    args = ["sweep=batch_size", "hydra.sweeper.protocol=null", "seed=0", "trainer.epochs=1"]
    page = _sweep_report(tmp_path, [*args, "trainer.sharpness_every=0"]).read_text()
    section = page[page.index("### Batch size") :]
    number = r"([\d.e+]+)"
    rows = re.findall(
        rf"^\| (batch \d+|full batch) \| [^|]+ \| \d+ \| [^|]+ \| {number} \| {number} \|$",
        section,
        re.M,
    )
    assert sorted(r[0] for r in rows) == sorted(["batch 1", "batch 10", "batch 100", "full batch"])
    # At epoch 0 every run has the same weights and probe (same seed): one B_simple.
    assert len({r[1] for r in rows}) == 1 and float(rows[0][1]) > 0
    assert "B_simple = tr(Σ)/|G|²" in section


@pytest.mark.parametrize(
    "uri, says",
    [
        ("sqlite:///{folder}/missing.db", "there is no store at"),
        ("http://127.0.0.1:9", "the MLflow server does not answer"),
    ],
    ids=["no-sqlite-file", "no-server"],
)
def test_report_command_on_a_store_that_is_not_there_exits_2_and_creates_nothing(
    tmp_path, uri, says
):
    """`python -m bpexp.report` names the store and what to do, without a traceback, and
    does not leave an empty new store behind (before: a fresh mlflow.db, then 'experiment
    not found'; a server that does not answer gave a traceback)."""
    uri = uri.format(folder=tmp_path)
    out = run_cli(["--tracking-uri", uri], tmp_path, module="bpexp.report")
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"error: tracking.uri={uri!r}: {says}" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
