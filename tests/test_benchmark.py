"""sweep=benchmark_quick end to end: workloads as arms, the same effective-step grid for every
optimizer, and a report whose times to target match a hand computation from the store."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import bpexp.analysis as ba
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_the_quick_benchmark_answers_across_workloads(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep=benchmark_quick", "trainer.sharpness_every=0", f"tracking.uri={uri}"]
    out = run_cli(args, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = tmp_path.glob("multirun/*/*")
    plan = json.loads((sweep_dir / "protocol" / "protocol.json").read_text())
    assert len(plan["arms"]) == 9
    assert {w["name"] for w in plan["workloads"].values()} == {
        "digits_book",
        "digits_relu",
        "moons",
    }

    runs = ba.runs(sweep="benchmark_quick", tracking_uri=uri)
    tune = runs[runs["stage"] == "tune"]
    # Every optimizer of a workload tried the same effective steps; momentum's lr is 1/10 of it.
    from bpexp.protocol import arm_effective_step

    grids = {
        arm: sorted(float(f"{arm_effective_step({}, r):.3g}") for r in g.to_dict("records"))
        for arm, g in tune.groupby("arm")
    }
    assert len({tuple(g) for g in grids.values()}) == 1, grids
    momentum = tune[tune["optimizer.name"] == "momentum"]
    assert np.allclose(
        sorted(momentum["optimizer.lr"].unique()), [s / 10 for s in grids[tune["arm"].iloc[0]]]
    )

    page = (sweep_dir / "report" / "index.md").read_text()
    for title in ("The answer across workloads", "Tunability", "sensitivity per workload"):
        assert title in page, title
    for file in ("benchmark_profile.png", "benchmark_tunability.png", "benchmark_sensitivity.png"):
        assert (sweep_dir / "report" / file).stat().st_size > 10_000, file
    assert "lr_sensitivity.png" not in page  # the benchmark's page is its own answer

    # The targets and each optimizer's median steps to them, recomputed from the store.
    source = r"(proposed \(not fixed yet\)|fixed in its config)"
    rows = re.findall(rf"^\| (\w+) \| ([\d.]+) \| {source} \| (.+) \|$", page, re.M)
    assert {r[0] for r in rows} == {"digits_book", "digits_relu", "moons"}
    confirm = runs[runs["stage"] == "confirm"]
    history = ba.history(confirm, metrics=["val/accuracy"], client=None, tracking_uri=uri)
    header = re.search(r"^\| workload \| target \| source \|(.+)\|$", page, re.M).group(1)
    optimizers = [c.strip().split(":")[0] for c in header.split("|") if c.strip()]
    for workload, target, origin, cells in rows:
        shown = [c.strip() for c in cells.split("|")]
        for optimizer, cell in zip(optimizers, shown, strict=True):
            mine = confirm[
                (confirm["workload.name"] == workload) & (confirm["optimizer.name"] == optimizer)
            ]
            times = []
            for run in mine.to_dict("records"):
                points = history[history["run_id"] == run["run_id"]]
                hit = points.loc[points["value"] >= float(target), "step"]
                per_epoch = math.ceil(run["data.n_train"] / run["trainer.batch_size"])
                times.append(hit.min() * per_epoch if len(hit) else math.inf)
            expected = float(np.median(times))
            assert cell == ("∞" if not math.isfinite(expected) else f"{expected:.0f}"), (
                workload,
                optimizer,
                times,
            )
        # A proposed target is one the best optimizer reaches (its median time is finite).
        assert origin != "proposed (not fixed yet)" or any(c != "∞" for c in shown), workload
