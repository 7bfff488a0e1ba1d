"""Exact resume (bpexp/checkpoint.py): a run interrupted at checkpoints, saved to disk, loaded
into fresh objects and continued, ends on the uninterrupted run's weights bit for bit, and its
records are exactly the missing ones."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bpexp import checkpoint
from bpexp.checkpoint import CheckpointError
from bpexp.cost import get_cost
from bpexp.data import load_dataset
from bpexp.network import Network, initialize
from bpexp.optimizer import Optimizer
from bpexp.rng import stream
from bpexp.trainer import (
    CheckpointRecord,
    EndRecord,
    EpochRecord,
    StepRecord,
    TrainerConfig,
    train,
)

ROOT = Path(__file__).resolve().parent.parent

# Every instrument on, and each of the trainer's streams drawn from: the shuffled batches,
# sharpness (every 2 epochs), the gradient tests' fresh mini-batch (every epoch), alpha (every
# epoch, so its start crosses each checkpoint), Hutch++, top-k and the spectrum (every 2).
CFG = dict(
    epochs=6,
    batch_size=50,
    shuffle=True,
    probe_size=64,
    instruments=True,
    sharpness_every=2,
    sharpness_iterations=6,
    gradient_tests_every=1,
    alpha_every=1,
    trace_every=2,
    trace_hvps=6,
    top_k_every=2,
    top_k=2,
    top_k_iterations=6,
    spectrum_every=2,
    spectrum_steps=6,
    spectrum_probes=2,
    checkpoint_every=1,
)
OPTIMIZERS = {
    "sgd": dict(lr=1.0),
    "momentum": dict(lr=0.3, beta=0.9),
    "nesterov": dict(lr=0.3, beta=0.9),
    "adam": dict(lr=0.01),
}
SIZES = [64, 12, 10]
STRIDE = 7  # a StepRecord every 7 steps, so step records straddle the epochs' ends


def fresh(name: str, init_seed: int = 0, **cfg):
    """New objects for a run: data, network, optimizer, cost, settings. ``init_seed`` other
    than 0 gives other initial weights (a resumed run must not depend on them)."""
    data = load_dataset("digits", seed=0)
    net = Network(SIZES, "sigmoid", "sigmoid")
    initialize(net, "scaled_normal", stream(init_seed, "init"))
    return (
        net,
        Optimizer(name, **OPTIMIZERS[name]),
        get_cost("quadratic", "sigmoid"),
        data,
        (TrainerConfig(**(CFG | cfg))),
    )


class Interrupted(Exception):
    pass


def comparable(record) -> tuple:
    """A record as a value: spectra by their arrays' bytes."""
    if isinstance(record, StepRecord):
        return ("step", record.step, record.epoch, record.batch_loss)
    if isinstance(record, EpochRecord):
        spectrum = record.spectrum
        arrays = () if spectrum is None else (spectrum.grid.tobytes(), spectrum.density.tobytes())
        return ("epoch", record.epoch, tuple(record.metrics.items()), arrays)
    assert isinstance(record, EndRecord)
    return ("end", record.epoch, tuple(record.metrics.items()), record.outcome)


def run(name: str, records: list, start=None, stop_at=None, folder=None, init_seed=0, **cfg):
    """Train; with ``stop_at``, save the checkpoint of that epoch to ``folder`` and interrupt
    there (as a kill right after the save would). Returns the result, or the saved path."""
    net, opt, cost, data, config = fresh(name, init_seed, **cfg)

    def listener(record):
        if isinstance(record, CheckpointRecord):
            if record.epoch == stop_at:
                path = checkpoint.save(folder / f"epoch{record.epoch}.npz", record.state)
                raise Interrupted(path)
            return
        records.append(comparable(record))

    try:
        result = train(net, opt, cost, data, config, 0, listener, STRIDE, start=start)
    except Interrupted as stop:
        return stop.args[0]
    return result, net.params.copy()


@pytest.fixture(scope="module")
def uninterrupted():
    out = {}
    for name in OPTIMIZERS:
        records = []
        result, params = run(name, records)
        out[name] = (result, params, records)
    return out


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("stops", [[1], [2], [1, 3]], ids=["at1", "at2", "at1-then-at3"])
def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(
    name, stops, uninterrupted, tmp_path
):
    reference, final, expected = uninterrupted[name]
    records, start = [], None
    for stop_at in stops:
        # A resumed leg starts from other initial weights: all comes from the checkpoint.
        init_seed = 0 if start is None else start.epoch + 10
        path = run(name, records, start, stop_at, tmp_path, init_seed=init_seed)
        assert isinstance(path, Path) and path.is_file()
        start = checkpoint.load(path)  # fresh arrays, read from the disk
        assert start.epoch == stop_at and start.source == str(path)
    result, params = run(name, records, start, init_seed=99)
    assert np.array_equal(params, final)
    assert params.tobytes() == final.tobytes()
    # No gap, no duplicate: the legs' records concatenated are the uninterrupted run's.
    assert records == expected
    assert [h["epoch"] for h in result.history] == list(range(CFG["epochs"] + 1))
    assert result.history == reference.history
    assert result.steps == reference.steps and result.epochs_run == reference.epochs_run
    assert result.final_metrics == reference.final_metrics
    assert result.spectra.keys() == reference.spectra.keys() == {0, 2, 4, 6}
    for epoch, spectrum in reference.spectra.items():
        assert np.array_equal(result.spectra[epoch].density, spectrum.density)
    # Every instrument was measured, so every stream crossed the checkpoints.
    last = result.history[-1]
    assert {"alpha", "hessian_trace", "hessian_top/2", "sharpness"} <= set(last)
    assert {"norm_test/probe", "norm_test/batch"} <= set(result.history[1])


def test_alphas_start_crosses_the_checkpoint_and_is_used(uninterrupted, tmp_path):
    """The probe backprop α takes as epoch 2's start was made at the end of epoch 1: it is in
    the checkpoint (no backprop more after a resume), and the resumed run uses it."""
    reference = uninterrupted["sgd"][0]
    state = checkpoint.load(run("sgd", [], stop_at=1, folder=tmp_path))
    alpha = state.alpha_start
    assert alpha is not None and len(alpha.a) == len(SIZES) - 2 and len(alpha.delta) == 2
    assert alpha.a[0].shape == (CFG["probe_size"], SIZES[1])
    assert alpha.losses.shape == (CFG["probe_size"],)
    result, _ = run("sgd", [], state)
    assert result.history[2]["alpha"] == reference.history[2]["alpha"]
    alpha.losses += 1.0  # another start: another alpha (its slope and curvature fit differ)
    alpha.delta[-1] *= 2.0
    result, _ = run("sgd", [], state)
    assert result.history[2]["alpha"] != reference.history[2]["alpha"]
    assert result.history[2]["train/loss"] == reference.history[2]["train/loss"]


def test_the_records_after_a_checkpoint_are_the_resumed_runs_own(uninterrupted, tmp_path):
    """Killed in the middle of epoch 3, after the checkpoint of epoch 2: the records it had
    emitted past the checkpoint are the first ones the resumed run emits again, identical, so
    a shell drops those at or below what it already logged (by step and epoch)."""
    name = "momentum"
    _, final, expected = uninterrupted[name]
    net, opt, cost, data, config = fresh(name)
    records, saved = [], {}

    def listener(record):
        if isinstance(record, CheckpointRecord):
            saved["path"] = checkpoint.save(tmp_path / "last.npz", record.state)
            return
        records.append(comparable(record))
        if isinstance(record, StepRecord) and record.epoch == 3 and len(saved) == 1:
            saved["killed"] = True
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(net, opt, cost, data, config, 0, listener, STRIDE)
    state = checkpoint.load(saved["path"])
    assert state.epoch == 2
    kept = records.index(next(r for r in records if r[0] == "epoch" and r[1] == 2)) + 1
    past = records[kept:]
    assert past and all(r[0] == "step" and r[2] == 3 for r in past)
    resumed = []
    _, params = run(name, resumed, state, init_seed=5)
    assert resumed[: len(past)] == past
    assert records[:kept] + resumed == expected
    assert np.array_equal(params, final)


RESUME_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_checkpoint import comparable, fresh
from bpexp import checkpoint
from bpexp.trainer import train, CheckpointRecord
net, opt, cost, data, cfg = fresh({name!r}, init_seed=7)
records = []
def listener(record):
    if not isinstance(record, CheckpointRecord):
        records.append(comparable(record))
result = train(net, opt, cost, data, cfg, 0, listener, {stride}, start=checkpoint.load({path!r}))
np.save({out!r}, net.params)
print(json.dumps([r for r in records if r[0] != "epoch"] + [len(records)]))
"""


def test_resume_in_a_fresh_process(uninterrupted, tmp_path):
    name = "adam"
    _, final, expected = uninterrupted[name]
    records = []
    path = run(name, records, stop_at=3, folder=tmp_path)
    out = tmp_path / "final.npy"
    script = RESUME_SCRIPT.format(
        tests=str(ROOT / "tests"), name=name, stride=STRIDE, path=str(path), out=str(out)
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(np.load(out), final)
    *steps_and_end, count = json.loads(done.stdout)
    assert len(records) + count == len(expected)
    tail = [r for r in expected[len(records) :] if r[0] != "epoch"]
    assert [tuple(x) for x in steps_and_end[:-1]] == [r for r in tail if r[0] == "step"]
    assert steps_and_end[-1][0] == "end" and steps_and_end[-1][3] == tail[-1][3]


def test_checkpoint_records_every_checkpoint_every_epochs_but_the_last():
    records = []
    net, opt, cost, data, cfg = fresh("sgd", checkpoint_every=2, epochs=5, instruments=False)
    train(net, opt, cost, data, cfg, 0, records.append, STRIDE)
    cps = [r for r in records if isinstance(r, CheckpointRecord)]
    assert [r.epoch for r in cps] == [2, 4]
    for record in cps:  # each right after its epoch's EpochRecord
        before = records[records.index(record) - 1]
        assert isinstance(before, EpochRecord) and before.epoch == record.epoch
        assert record.state.epoch == record.epoch and record.metrics == {}
    # 0: never; and none once the run has diverged
    for cfg_kw, lr in ((dict(checkpoint_every=0), 1.0), (dict(max_loss=1e-9), 1.0)):
        records = []
        net, opt, cost, data, cfg = fresh("sgd", epochs=3, instruments=False, **cfg_kw)
        train(net, Optimizer("sgd", lr), cost, data, cfg, 0, records.append, STRIDE)
        assert not any(isinstance(r, CheckpointRecord) for r in records)


def test_the_default_trainer_checkpoints_every_10_epochs():
    assert TrainerConfig().checkpoint_every == 10
    text = (ROOT / "conf/trainer/default.yaml").read_text()
    assert "\ncheckpoint_every: 10 " in text


def test_a_checkpoint_is_one_npz_without_pickle(tmp_path):
    records = []
    net, opt, cost, data, cfg = fresh("adam", epochs=3, checkpoint_every=2)
    train(net, opt, cost, data, cfg, 0, records.append, STRIDE)
    (record,) = [r for r in records if isinstance(r, CheckpointRecord)]
    path = checkpoint.save(tmp_path / "cp.npz", record.state)
    assert [p.name for p in tmp_path.iterdir()] == ["cp.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as npz:
        assert {"params", "params_init", "optimizer/m", "optimizer/s"} <= set(npz.files)
        assert np.array_equal(npz["params"], record.state.params)
    meta = json.loads(zipfile.ZipFile(path).read(checkpoint.META))
    assert meta["epoch"] == 2 and meta["optimizer_t"] == record.state.optimizer_t > 0
    assert sorted(meta["streams"]) == sorted(checkpoint.STREAMS)
    back = checkpoint.load(path)
    assert back.history == record.state.history
    assert back.streams == record.state.streams
    assert back.fingerprint == json.loads(json.dumps(record.state.fingerprint))


# ------------------------------------------------------------------- bad checkpoint files


@pytest.fixture
def saved(tmp_path):
    records = []
    net, opt, cost, data, cfg = fresh("momentum", epochs=3, checkpoint_every=1)
    train(net, opt, cost, data, cfg, 0, records.append, STRIDE)
    state = next(r for r in records if isinstance(r, CheckpointRecord)).state
    return checkpoint.save(tmp_path / "run.npz", state)


def test_a_damaged_checkpoint_names_the_file(saved, tmp_path):
    data = saved.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "garbage.npz": b"not a zip file at all",
        "empty.npz": b"",
        "flipped.npz": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
    }
    for file, content in cases.items():
        path = tmp_path / file
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=str(path).replace(".", r"\.")):
            checkpoint.load(path)
    with pytest.raises(CheckpointError, match=r"missing\.npz: cannot be read"):
        checkpoint.load(tmp_path / "missing.npz")
    plain = tmp_path / "weights.npz"
    np.savez(plain, W1=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"weights\.npz: not a bpexp checkpoint"):
        checkpoint.load(plain)


def test_a_checkpoint_of_another_run_is_refused_naming_file_and_settings(saved):
    state = checkpoint.load(saved)
    other_lr = dict(lr=0.5, beta=0.9)
    net, _, cost, data, cfg = fresh("momentum", epochs=3)
    lr = r"optimizer\.lr: 0\.3 in the checkpoint, 0\.5 now\)"
    with pytest.raises(CheckpointError, match=rf"run\.npz belongs to another run \({lr}"):
        train(net, Optimizer("momentum", **other_lr), cost, data, cfg, 0, None, STRIDE, state)
    net, opt, cost, data, cfg = fresh("momentum", epochs=4)
    epochs = r"trainer\.epochs: 3 in the checkpoint, 4 now"
    with pytest.raises(CheckpointError, match=rf"run\.npz .*\({epochs}\)"):
        train(net, opt, cost, data, cfg, 0, None, STRIDE, start=state)
    net, opt, cost, data, cfg = fresh("momentum", epochs=3)
    with pytest.raises(CheckpointError, match=r"run\.npz .*\(seed: 0 in the checkpoint, 1 now"):
        train(net, opt, cost, data, cfg, 1, None, STRIDE, start=state)
    with pytest.raises(CheckpointError, match=r"step_stride: 7 in the checkpoint, 1 now"):
        train(net, opt, cost, data, cfg, 0, None, 1, start=state)
    # checkpoint_every may change: it changes nothing the loop computes
    net, opt, cost, data, cfg = fresh("momentum", epochs=3, checkpoint_every=0)
    assert train(net, opt, cost, data, cfg, 0, None, STRIDE, start=state).epochs_run == 3
    # arrays that do not fit the run (a file edited by hand)
    state.params = state.params[:-1]
    net, opt, cost, data, cfg = fresh("momentum", epochs=3)
    with pytest.raises(CheckpointError, match=r"run\.npz does not fit this run: params is"):
        train(net, opt, cost, data, cfg, 0, None, STRIDE, start=state)


def test_a_damaged_checkpoint_cannot_resume_silently(saved, tmp_path):
    """A member rewritten with other values but a valid zip: the arrays' shapes are checked."""
    state = checkpoint.load(saved)
    state.optimizer_buffers = {"m": state.optimizer_buffers["v"]}
    path = checkpoint.save(tmp_path / "edited.npz", state)
    net, opt, cost, data, cfg = fresh("momentum", epochs=3)
    with pytest.raises(CheckpointError, match=r"edited\.npz does not fit this run: optimizer/m"):
        train(net, opt, cost, data, cfg, 0, None, STRIDE, start=checkpoint.load(path))


def test_checkpoint_every_must_not_be_negative():
    from bpexp.errors import ConfigError

    net, opt, cost, data, cfg = fresh("sgd", checkpoint_every=-1)
    with pytest.raises(ConfigError, match="trainer.checkpoint_every=-1"):
        train(net, opt, cost, data, cfg, 0)
