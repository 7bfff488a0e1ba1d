"""bpexp.analysis on a real store filled by a tiny real sweep, and compare() on edge cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from omegaconf import OmegaConf

from bpexp import analysis
from bpexp.app import run_name
from tests.conftest import tiny_optimizers_sweep

# Two-sided 95% Student t quantiles from a printed table (df 1, 2, 29).
T95 = {1: 12.7062, 2: 4.3027, 29: 2.0452}
ARMS = {"sgd", "momentum", "nesterov"}  # the sweeper's arms (tag bpexp.arm)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """3 optimizers x lr {0.3, 1.0} x seeds {0, 1}, 2 epochs: 12 runs under one parent."""
    swept = tiny_optimizers_sweep(tmp_path_factory.mktemp("sweep"))
    return {
        "uri": swept["uri"],
        "summary": pd.read_csv(swept["summary"]),
        "parent": swept["parent"].info.run_id,
    }


@pytest.fixture(scope="module")
def frame(sweep) -> pd.DataFrame:
    return analysis.runs(sweep="optimizers", tracking_uri=sweep["uri"])


@pytest.fixture(scope="module")
def hist(sweep, frame) -> pd.DataFrame:
    return analysis.history(frame, tracking_uri=sweep["uri"])


@pytest.mark.slow
def test_runs_has_one_typed_row_per_child_run(sweep, frame):
    assert len(frame) == 12
    assert list(frame.columns[: len(analysis.RUN_COLUMNS)]) == analysis.RUN_COLUMNS
    assert (frame["parent_run_id"] == sweep["parent"]).all()
    assert (frame["outcome"] == "completed").all()
    assert frame["optimizer.lr"].dtype == np.float64
    assert frame["seed"].dtype == np.int64
    assert frame["optimizer.bias_correction"].dtype == bool
    assert set(frame["network.hidden"]) == {"[30]"}  # JSON list text stays text
    assert set(frame["optimizer.lr"]) == {0.3, 1.0}
    assert frame["data.path"].isna().all()  # "null" is NA
    # Final metrics agree with the summary the jobs wrote themselves (another path entirely).
    summary = sweep["summary"].set_index("run_id")
    for column in ("val/loss", "val/accuracy", "test/accuracy", "train/loss"):
        expected = summary.loc[frame["run_id"], column].to_numpy()
        np.testing.assert_allclose(frame[column].to_numpy(), expected, rtol=1e-12)
    for column in ("grad_norm/b1", "saturation/2", "train/batch_loss"):
        assert frame[column].notna().all()


@pytest.mark.slow
def test_runs_filters(sweep, frame):
    uri = sweep["uri"]
    by_id = analysis.runs(sweep=sweep["parent"], tracking_uri=uri)
    assert set(by_id["run_id"]) == set(frame["run_id"])
    everything = analysis.runs(tracking_uri=uri, include_parents=True)
    assert len(everything) == 13 and sweep["parent"] in set(everything["run_id"])
    assert len(analysis.runs(tracking_uri=uri)) == 12
    sgd = analysis.runs(tags={"optimizer": "sgd"}, tracking_uri=uri)
    assert len(sgd) == 4 and set(sgd["optimizer.name"]) == {"sgd"}
    picked = analysis.runs(params={"optimizer.lr": 0.3, "seed": [0]}, tracking_uri=uri)
    assert len(picked) == 3 and set(picked["seed"]) == {0}
    with pytest.raises(ValueError, match="optimizers"):
        analysis.runs(sweep="no-such-sweep", tracking_uri=uri)
    with pytest.raises(ValueError, match="no-such-experiment"):
        analysis.runs("no-such-experiment", tracking_uri=uri)


@pytest.mark.slow
def test_history_is_every_point_in_long_format(sweep, frame, hist):
    assert list(hist.columns) == [*analysis.HISTORY_COLUMNS, *analysis.HISTORY_PARAMS]
    assert hist.attrs["from_store"] == []
    assert set(hist["run_id"]) == set(frame["run_id"])
    epochs = hist[hist["metric"] == "val/loss"]
    assert len(epochs) == 12 * 3 and set(epochs["step"]) == {0, 1, 2}
    # Same points as the store's own metric history, per-epoch and per-step alike.
    client = MlflowClient(tracking_uri=sweep["uri"])
    run_id = frame["run_id"].iloc[0]
    for metric in ("val/loss", "train/batch_loss", "grad_norm/W1"):
        stored = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
        mine = hist[(hist["run_id"] == run_id) & (hist["metric"] == metric)]
        assert list(zip(mine["step"], mine["value"], strict=True)) == stored
    row = frame.iloc[0]
    mine = hist[hist["run_id"] == run_id].iloc[0]
    assert mine["optimizer.lr"] == row["optimizer.lr"] and mine["seed"] == row["seed"]


@pytest.mark.slow
def test_history_selects_metrics_and_accepts_run_ids(sweep, frame, hist):
    ids = list(frame["run_id"][:3])
    picked = analysis.history(ids, metrics=["val/*"], params=["seed"], tracking_uri=sweep["uri"])
    assert list(picked.columns) == [*analysis.HISTORY_COLUMNS, "seed"]
    assert set(picked["metric"]) == {"val/loss", "val/accuracy"}
    assert len(picked) == 3 * 2 * 3
    # The store's own metric histories and params, read here with the plain client.
    client = MlflowClient(tracking_uri=sweep["uri"])
    for run_id in ids:
        seed = int(client.get_run(run_id).data.params["seed"])
        for metric in ("val/loss", "val/accuracy"):
            stored = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
            mine = picked[(picked["run_id"] == run_id) & (picked["metric"] == metric)]
            assert sorted(zip(mine["step"], mine["value"], strict=True)) == stored
            assert (mine["seed"] == seed).all()
    with pytest.raises(ValueError, match="nope"):
        analysis.history(frame, params=["nope"], tracking_uri=sweep["uri"])


@pytest.mark.slow
def test_history_falls_back_to_the_store_without_the_artifact(sweep):
    client = MlflowClient(tracking_uri=sweep["uri"])
    run = client.create_run(client.get_experiment_by_name("bpexp").experiment_id)
    run_id = run.info.run_id
    points = [Metric("val/loss", 1.0 / (s + 1), 0, s) for s in range(4)]
    client.log_batch(run_id, metrics=points, params=[], tags=[])
    client.log_param(run_id, "seed", "7")
    client.set_terminated(run_id)
    out = analysis.history([run_id], tracking_uri=sweep["uri"])
    assert out.attrs["from_store"] == [run_id]
    assert list(out["step"]) == [0, 1, 2, 3]
    assert list(out["value"]) == [1.0, 0.5, 1 / 3, 0.25]
    assert set(out["seed"]) == {7}
    client.delete_run(run_id)


def _by_hand(frame: pd.DataFrame, name: str) -> dict:
    """The best lr of one optimizer and its statistics, with plain numpy."""
    arm = frame[frame["optimizer.name"] == name]
    lrs = sorted(set(arm["optimizer.lr"]))
    means = [arm.loc[arm["optimizer.lr"] == lr, "val/loss"].to_numpy().mean() for lr in lrs]
    lr = lrs[int(np.argmin(means))]
    best = arm[arm["optimizer.lr"] == lr].sort_values("seed")
    loss, accuracy = best["val/loss"].to_numpy(), best["val/accuracy"].to_numpy()
    n = len(loss)
    return {
        "lr": lr,
        "seeds": best["seed"].to_numpy(),
        "loss": loss,
        "mean": loss.mean(),
        "std": loss.std(ddof=1),
        "ci": T95[n - 1] * loss.std(ddof=1) / np.sqrt(n),
        "acc_mean": accuracy.mean(),
        "acc_ci": T95[n - 1] * accuracy.std(ddof=1) / np.sqrt(n),
    }


@pytest.mark.slow
def test_compare_matches_a_hand_computation(frame, hist):
    table = analysis.compare(frame, hist, metric="val/loss")
    assert len(table) == 3 and set(table["arm"]) == ARMS
    hand = {name: _by_hand(frame, name) for name in ("sgd", "momentum", "nesterov")}
    assert list(table["val/loss_mean"]) == sorted(table["val/loss_mean"])  # best arm first
    best = table["arm"].iloc[0]  # the arms are the optimizers here
    for _, row in table.iterrows():
        h = hand[row["arm"]]
        assert row["optimizer.lr"] == h["lr"]
        assert row["seeds"] == 2 and row["runs"] == 4
        assert row["diverged"] == 0 and row["failed"] == 0
        assert row["val/loss_mean"] == pytest.approx(h["mean"], rel=1e-12)
        assert row["val/loss_std"] == pytest.approx(h["std"], rel=1e-12)
        assert row["val/loss_ci95"] == pytest.approx(h["ci"], rel=1e-4)  # table t to 4 places
        assert row["val/accuracy_mean"] == pytest.approx(h["acc_mean"], rel=1e-12)
        assert row["val/accuracy_ci95"] == pytest.approx(h["acc_ci"], rel=1e-4)
        assert len(row["run_ids"]) == 2
        # Paired by seed against the best arm.
        assert list(h["seeds"]) == list(hand[best]["seeds"])
        d = h["loss"] - hand[best]["loss"]
        assert row["paired_seeds"] == 2
        assert row["diff_vs_best_mean"] == pytest.approx(d.mean(), abs=1e-12)
        if row["arm"] != best:
            ci = T95[1] * d.std(ddof=1) / np.sqrt(2)
            assert row["diff_vs_best_ci95"] == pytest.approx(ci, rel=1e-4)


@pytest.mark.slow
def test_compare_epochs_to_target(frame, hist):
    # Targets at the median of the trained epochs, so some arms reach them and some do not;
    # the expectation read off the points with plain pandas, per run.
    targets = {}
    for kind, below in (("loss", True), ("accuracy", False)):
        val = hist[hist["metric"] == f"val/{kind}"]
        targets[kind] = (val, float(np.median(val.loc[val["step"] > 0, "value"])), below)
    table = analysis.compare(
        frame,
        hist,
        metric="val/loss",
        target_loss=targets["loss"][1],
        target_accuracy=targets["accuracy"][1],
    )
    later = 0
    for kind, (val, target, below) in targets.items():
        for _, row in table.iterrows():
            firsts = []
            for run_id in row["run_ids"]:
                points = val[val["run_id"] == run_id].sort_values("step")
                hit = points["value"] <= target if below else points["value"] >= target
                firsts.append(points.loc[hit, "step"].iloc[0] if hit.any() else math.nan)
            reached = sum(not math.isnan(f) for f in firsts)
            assert row[f"target_{kind}_reached"] == reached
            if reached == 2:
                assert row[f"epochs_to_target_{kind}"] == np.mean(firsts)
                later += np.mean(firsts) > 0
            else:
                assert math.isnan(row[f"epochs_to_target_{kind}"])
    assert later > 0  # some arm needed training to get there (not reached at step 0)
    never = analysis.compare(frame, hist, metric="val/loss", target_loss=0.0, target_accuracy=1.01)
    for kind in ("loss", "accuracy"):
        assert never[f"epochs_to_target_{kind}"].isna().all()
        assert (never[f"target_{kind}_reached"] == 0).all()
    with pytest.raises(ValueError, match="history_frame"):
        analysis.compare(frame, target_loss=0.1)


def _synthetic() -> pd.DataFrame:
    rows = []

    def add(name, form, bc, lr, seed, loss, outcome="completed"):
        rows.append(
            {
                "run_id": f"{len(rows):032x}",
                "outcome": outcome,
                "optimizer.name": name,
                "optimizer.form": form,
                "optimizer.bias_correction": bc,
                "optimizer.lr": lr,
                "optimizer.beta": 0.9,
                "seed": seed,
                "val/loss": loss,
                "val/accuracy": 1 - loss,
            }
        )

    for seed, loss in enumerate([0.30, 0.32, 0.34]):
        add("momentum", "ema", False, 0.1, seed, loss)
    add("momentum", "ema", False, 1.0, 0, 0.05)
    add("momentum", "ema", False, 1.0, 1, 0.05)
    add("momentum", "ema", False, 1.0, 2, math.nan, "diverged")  # would be best without it
    add("momentum", "ema", False, 3.0, 0, math.nan, "failed")
    for seed, loss in enumerate([0.20, 0.25]):
        add("momentum", "ema", True, 1.0, seed, loss)
    add("sgd", "classical", False, 1.0, 5, 0.5)  # no seed in common with the others
    return pd.DataFrame(rows)


def test_compare_refuses_a_protocol_sweeps_tune_and_confirm_runs_together():
    frame = _synthetic()
    frame["stage"] = ["tune"] * (len(frame) - 1) + ["confirm"]
    with pytest.raises(ValueError, match=r"mixes a protocol's tune and confirm runs"):
        analysis.compare(frame, metric="val/loss")
    confirm = analysis.compare(frame[frame["stage"] == "confirm"], metric="val/loss")
    assert list(confirm["arm"]) == ["sgd"] and confirm["val/loss_mean"].item() == 0.5


def test_compare_counts_divergence_and_pairs_only_shared_seeds():
    table = analysis.compare(_synthetic(), metric="val/loss").set_index("arm")
    assert list(table.index) == ["momentum/ema+bc", "momentum/ema", "sgd"]
    assert "optimizer.bias_correction" in table.columns  # it varies, so it makes arms
    ema = table.loc["momentum/ema"]
    assert ema["optimizer.lr"] == 0.1  # the diverged seed rules lr = 1.0 out
    assert (ema["runs"], ema["diverged"], ema["failed"], ema["seeds"]) == (7, 1, 1, 3)
    assert ema["val/loss_mean"] == pytest.approx(0.32)
    assert ema["val/loss_ci95"] == pytest.approx(T95[2] * 0.02 / np.sqrt(3), rel=1e-4)
    # Paired against momentum/ema+bc on seeds 0 and 1: differences 0.10 and 0.07.
    assert ema["paired_seeds"] == 2
    assert ema["diff_vs_best_mean"] == pytest.approx(0.085)
    assert ema["diff_vs_best_ci95"] == pytest.approx(
        T95[1] * np.std([0.1, 0.07], ddof=1) / 2**0.5, rel=1e-4
    )
    sgd = table.loc["sgd"]
    assert sgd["paired_seeds"] == 0 and math.isnan(sgd["diff_vs_best_mean"])
    assert sgd["seeds"] == 1 and math.isnan(sgd["val/loss_ci95"])


def test_compare_of_no_runs_is_an_empty_table_with_the_usual_columns():
    runs = _synthetic()
    usual = analysis.compare(runs, pd.DataFrame(columns=analysis.HISTORY_COLUMNS), target_loss=0.1)
    empty = analysis.compare(
        runs.iloc[:0], pd.DataFrame(columns=analysis.HISTORY_COLUMNS), target_loss=0.1
    )
    # optimizer.bias_correction is an arm column only where it varies.
    assert empty.empty and list(empty.columns) == [
        c for c in usual.columns if c != "optimizer.bias_correction"
    ]
    # A store with no run at all gives a frame without params or metrics.
    assert analysis.compare(pd.DataFrame(columns=analysis.RUN_COLUMNS)).empty


def test_student_t_quantiles():
    for df, t in T95.items():
        assert analysis.t_quantile(df) == pytest.approx(t, abs=1e-4)


def test_arm_labels_follow_run_names():
    by = ["optimizer.name", "optimizer.form", "optimizer.bias_correction", "trainer.batch_size"]
    values = {
        "optimizer.name": "momentum",
        "optimizer.form": "ema",
        "optimizer.bias_correction": True,
        "trainer.batch_size": 10,
    }
    assert analysis.arm_label(values, by) == "momentum/ema+bc trainer.batch_size=10"
    assert analysis.arm_label({**values, "optimizer.name": "sgd"}, by[:2]) == "sgd"
    # The rule's part is the run names' own (optimizer.label), for every form.
    for name, form, corrected in [
        ("sgd", "classical", False),
        ("momentum", "classical", False),
        ("momentum", "ema", False),
        ("momentum", "ema", True),
        ("nesterov", "classical", False),
    ]:
        config = OmegaConf.create(
            {
                "seed": 0,
                "optimizer": {
                    "name": name,
                    "form": form,
                    "bias_correction": corrected,
                    "lr": 0.1,
                    "beta": 0.9,
                },
            }
        )
        row = {**values, "optimizer.name": name, "optimizer.form": form}
        row["optimizer.bias_correction"] = corrected
        assert run_name(config).startswith(analysis.arm_label(row, by[:3]) + " lr=")


@pytest.mark.slow
def test_settings_varied_finds_the_swept_params(frame):
    by, over = analysis.settings_varied(frame)
    assert by == ["optimizer.name", "optimizer.form"]
    assert over == ["optimizer.lr", "optimizer.beta"]
    batch = frame.assign(**{"trainer.batch_size": np.where(frame["seed"] == 0, 10, 100)})
    assert analysis.settings_varied(batch)[0][-1] == "trainer.batch_size"


def test_compare_ranks_by_accuracy_by_default_and_refuses_losses_of_different_costs():
    frame = _synthetic()
    frame["val/accuracy"] = 1.0 - frame["val/loss"]  # best loss = best accuracy here
    by_accuracy = analysis.compare(frame)
    by_loss = analysis.compare(frame, metric="val/loss")
    assert list(by_accuracy["arm"]) == list(by_loss["arm"])
    assert set(by_accuracy["ranked_by"]) == {"val/accuracy (maximize)"}
    assert set(by_loss["ranked_by"]) == {"val/loss (minimize)"}
    # Means in the metric's own units: 1 - the loss mean, by hand.
    np.testing.assert_allclose(
        by_accuracy["val/accuracy_mean"], 1.0 - by_loss["val/loss_mean"], rtol=1e-12
    )
    np.testing.assert_allclose(
        by_accuracy["diff_vs_best_mean"], -by_loss["diff_vs_best_mean"], rtol=1e-12
    )
    frame["cost.name"] = ["quadratic"] * (len(frame) - 1) + ["cross_entropy"]
    with pytest.raises(ValueError, match="different costs"):
        analysis.compare(frame, metric="val/loss")
    assert len(analysis.compare(frame)) == 3  # accuracy is one quantity under every cost


def test_one_word_metrics_are_not_params():
    frame = pd.DataFrame(
        {"run_id": ["a"], "optimizer.lr": [0.1], "seed": [0], "sharpness": [3.0]}
        | {"grad_noise_scale": [5.0], "val/loss": [0.2]}
    )
    assert analysis.param_columns(frame) == ["optimizer.lr", "seed"]


def test_factor_effects_match_a_hand_computation():
    # 2 x 2 with seeds 1, 2, 3; seed 3 of (b=1, c=20) diverged, so that cell has 2 seeds.
    rows = []
    value = {(0, 10): [0.50, 0.60, 0.70], (1, 10): [0.55, 0.70, 0.70]}
    value |= {(0, 20): [0.40, 0.50, 0.60], (1, 20): [0.60, 0.55, np.nan]}
    for (b, c), values in value.items():
        for seed, v in zip((1, 2, 3), values, strict=True):
            outcome = "diverged" if np.isnan(v) else "completed"
            rows.append({"b": b, "c": c, "seed": seed, "val/accuracy": v, "outcome": outcome})
    frame = pd.DataFrame(rows)
    effects = analysis.factor_effects(frame, "b", "c").set_index("within")
    at10 = np.array([0.05, 0.10, 0.0])
    at20 = np.array([0.20, 0.05])
    assert effects.loc["c=10", "mean"] == pytest.approx(at10.mean())
    assert effects.loc["c=10", "ci95"] == pytest.approx(
        analysis.t_quantile(2) * at10.std(ddof=1) / np.sqrt(3)
    )
    assert effects.loc["c=20", "mean"] == pytest.approx(at20.mean())
    assert effects.loc["c=20", "seeds"] == 2
    inter = at20 - at10[:2]  # the seeds both effects have
    assert effects.loc["interaction", "mean"] == pytest.approx(inter.mean())
    assert effects.loc["interaction", "seeds"] == 2
    overall = analysis.factor_effects(frame, "b")
    assert list(overall["within"]) == ["all"] and overall.loc[0, "seeds"] == 3
    with pytest.raises(ValueError, match="need exactly 2"):
        analysis.factor_effects(frame, "seed")


def _times() -> pd.DataFrame:
    inf = np.inf
    cells = {
        ("A", "x"): [10, 10, 10],
        ("A", "y"): [20, 20, inf],  # 2 of 3 seeds reach: median 20
        ("B", "x"): [inf, inf, 5],  # 1 of 3: missed
        ("B", "y"): [8, 8, 8],
        ("C", "x"): [inf, inf, inf],  # no arm reaches C
        ("C", "y"): [inf, inf, 1],
        ("D", "x"): [4, 4, 4],  # a tie
        ("D", "y"): [4, 4, 4],
    }
    rows = [
        {"workload": w, "arm": a, "seed": s, "steps": t}
        for (w, a), times in cells.items()
        for s, t in enumerate(times)
    ]
    return pd.DataFrame(rows)


def test_performance_ratios_and_profile_match_a_hand_computation():
    ratios = analysis.performance_ratios(_times()).set_index(["workload", "arm"])["ratio"]
    assert ratios[("A", "x")] == 1 and ratios[("A", "y")] == 2
    assert ratios[("B", "x")] == np.inf and ratios[("B", "y")] == 1
    assert ratios[("C", "x")] == np.inf and ratios[("C", "y")] == np.inf
    assert ratios[("D", "x")] == 1 and ratios[("D", "y")] == 1
    curve, scores = analysis.performance_profile(_times(), taus=[1, 1.5, 2, 4], bootstrap=200)
    assert curve["x"].tolist() == [0.5, 0.5, 0.5, 0.5]
    assert curve["y"].tolist() == [0.5, 0.5, 0.75, 0.75]
    by_arm = scores.set_index("arm")
    # x: (4-1)/3 on A and D, 0 on B and C; y: (4-2)/3 on A, 1 on B and D, 0 on C.
    assert by_arm.loc["x", "score"] == pytest.approx(0.5)
    assert by_arm.loc["y", "score"] == pytest.approx((2 / 3 + 1 + 0 + 1) / 4)
    assert list(scores["arm"]) == ["y", "x"] and list(by_arm["reached"]) == [3, 2]
    assert (scores["low"] <= scores["score"] + 1e-12).all()
    assert (scores["high"] >= scores["score"] - 1e-12).all()
    # Seeds that all agree leave nothing to resample: the interval is the score itself.
    same = _times()
    same = same[same["workload"].isin(["B", "D"]) & same["arm"].eq("y")]
    _, one = analysis.performance_profile(same, bootstrap=50)
    assert one.loc[0, "low"] == one.loc[0, "high"] == one.loc[0, "score"] == 1.0


def test_expected_best_of_k_draws_matches_enumeration():
    from itertools import product

    for values in ([0.1, 0.5, 0.9], [0.5, 0.5, 1.0], [0.3]):
        for k in (1, 2, 3):
            draws = list(product(values, repeat=k))
            brute = sum(max(d) for d in draws) / len(draws)
            assert analysis.expected_best(values, k) == pytest.approx(brute)
    assert analysis.expected_best([0.5, 0.5, 1.0], 2) == pytest.approx(7 / 9)


def test_tunability_summaries_from_the_tuning_outcomes():
    rows = []
    for arm, values in (("x", [0.1, 0.5, 0.9]), ("y", [0.5, np.nan, 1.0])):
        for setting, v in enumerate(values):
            outcome = "diverged" if np.isnan(v) else "completed"
            for seed in (0, 1):  # two tuning seeds: a setting's outcome is their mean
                rows.append(
                    {"workload": "W", "arm": arm, "setting": setting, "seed": seed}
                    | {"outcome": outcome, "val/accuracy": v}
                )
    curves, summary, relative = analysis.tunability(pd.DataFrame(rows))
    s = summary.set_index("arm")
    y = [0.5, 0.0, 1.0]  # the diverged setting counts as 0
    assert s.loc["x", "one_shot"] == pytest.approx(0.5)
    assert s.loc["y", "one_shot"] == pytest.approx(np.mean(y))
    assert s.loc["y", "peak"] == pytest.approx(analysis.expected_best(y, 3))
    weights = np.array([3, 2, 1]) / 6
    expected = [analysis.expected_best(y, k) for k in (1, 2, 3)]
    assert s.loc["y", "early_weighted"] == pytest.approx(float(weights @ expected))
    assert len(curves) == 6 and set(curves["k"]) == {1, 2, 3}
    best_peak = max(s["peak"])
    rel = relative.set_index(["arm", "k"])["relative"]
    assert rel[("x", 1)] == pytest.approx(0.5 / best_peak)


def test_wins_ties_and_losses_per_pair_of_arms():
    rows = []
    data = {"W1": {"x": [0.9, 0.91, 0.92], "y": [0.8, 0.81, 0.8]}}
    data["W2"] = {"x": [0.9, 0.7, 0.8], "y": [0.8, 0.85, 0.75]}
    for workload, arms in data.items():
        for arm, values in arms.items():
            for seed, v in enumerate(values):
                rows.append(
                    {"workload": workload, "arm": arm, "seed": seed, "outcome": "completed"}
                    | {"val/accuracy": v}
                )
    pairs, counts = analysis.wins_ties_losses(pd.DataFrame(rows))
    verdict = pairs.set_index(["workload", "a", "b"])["verdict"]
    assert verdict[("W1", "x", "y")] == "win" and verdict[("W1", "y", "x")] == "loss"
    assert verdict[("W2", "x", "y")] == "tie"
    c = counts.set_index(["a", "b"])
    assert c.loc[("x", "y")].tolist() == [1, 1, 0] and c.loc[("y", "x")].tolist() == [0, 1, 1]
