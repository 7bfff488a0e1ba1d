"""Exact resume: everything the training loop needs to continue a run as if never stopped.

The loop (:func:`bpexp.trainer.train`) emits a ``CheckpointRecord(epoch, state)`` at the end
of every ``trainer.checkpoint_every``-th epoch (never after the last one, never once the run
has diverged); the shell writes ``state`` with :func:`save` and, after an interruption, reads
it with :func:`load` and passes it to ``train(..., start=state)``. The resumed run emits
exactly the records the interrupted one had not: epochs ``state.epoch + 1 ..`` and the steps
after ``state.steps``, and its final weights are bit-identical to an uninterrupted run's.

A :class:`TrainState` holds, after epoch ``epoch``:

- the weights, and the initial weights (the instruments' distances from initialisation);
- the optimizer's step count ``t`` and buffers (``v``, ``m``, ``s``: :mod:`bpexp.optimizer`;
  its ``scratch`` is free by contract and is not kept);
- the state of every random stream the loop draws from after its start (``STREAMS``): the
  batch order (``shuffle``), the sharpness start vectors (``sharpness``) and the children of
  ``trainer.substream`` (the gradient tests' fresh mini-batch, Hutch++, top-k, spectrum); the
  ``probe`` and ``eval_train`` streams are drawn once at the start and drawn again from the
  seed;
- the loop's bookkeeping: the global step, the history of epochs 0..epoch, the spectra
  measured so far, and the probe backprop α takes as the next epoch's start (kept when the
  next epoch's first step is watched);
- ``fingerprint``: what the run must share with the one resuming it (seed, network, optimizer,
  trainer settings but ``checkpoint_every``, the data's shape, the step stride); resuming
  under another one is refused with the differences named.

File format: one ``.npz`` (NumPy's zip of ``.npy`` arrays, no pickle) whose ``meta.json``
member holds the scalars, the streams' states and the fingerprint as JSON; :func:`save` writes
it atomically (a temporary file, fsync, rename), so an interruption while saving leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from bpexp.curvature import SpectralDensity
from bpexp.errors import ConfigError

Array = np.ndarray

FORMAT = "bpexp-checkpoint"
VERSION = 1
META = "meta.json"
# The streams the loop draws from after its start, by the names a TrainState keeps them under.
STREAMS = ("shuffle", "sharpness", "gradient_batch", "trace", "top_k", "spectrum")
_SPECTRUM_ARRAYS = ("grid", "density", "nodes", "weights")
_SPECTRUM_SCALARS = ("sigma", "steps", "probes", "hvps")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read (missing, damaged, another format) or that belongs to
    another run than the one resuming from it; the message names the file."""


@dataclass
class AlphaStart:
    """α's start carried into the next epoch: the probe backprop's layer inputs a^1..a^{L-1}
    (a^0 is the probe itself), errors and per-sample losses
    (:class:`bpexp.instruments.ProbeSnapshot` without its a^0)."""

    a: list[Array]
    delta: list[Array]
    losses: Array


@dataclass
class TrainState:
    """The loop after epoch ``epoch`` (see the module's docstring); ``source`` is the file it
    was loaded from, for messages."""

    epoch: int
    steps: int
    params: Array
    params_init: Array
    optimizer_t: int
    optimizer_buffers: dict[str, Array]
    streams: dict[str, dict]  # name -> numpy.random.Generator.bit_generator.state
    history: list[dict[str, float]]
    spectra: dict[int, SpectralDensity] = field(default_factory=dict)
    alpha_start: AlphaStart | None = None
    fingerprint: dict = field(default_factory=dict)
    source: str | None = None

    def where(self) -> str:
        return f"checkpoint {self.source}" if self.source else "the checkpoint"


# ------------------------------------------------------------------------------- writing


def _history_arrays(history: list[dict[str, float]]) -> tuple[list[list[str]], dict[str, Array]]:
    """The history as arrays: each epoch's keys (``epoch`` first, then the metrics) are one of
    a few layouts, kept in order in the JSON; its values go, epoch after epoch, into one float
    array (an epoch number is exact in a float64)."""
    layouts: list[list[str]] = []
    index: dict[tuple[str, ...], int] = {}
    which = []
    for row in history:
        keys = tuple(row)
        if keys not in index:
            index[keys] = len(layouts)
            layouts.append(list(keys))
        which.append(index[keys])
    values = np.fromiter(chain.from_iterable(map(dict.values, history)), np.float64)
    return layouts, {
        "history/layout": np.asarray(which, np.int64),
        "history/values": values,
    }


def to_arrays(state: TrainState) -> tuple[dict, dict[str, Array]]:
    """The JSON part and the arrays of ``state``, as :func:`save` writes them."""
    layouts, arrays = _history_arrays(state.history)
    arrays |= {"params": state.params, "params_init": state.params_init}
    arrays |= {f"optimizer/{k}": v for k, v in state.optimizer_buffers.items()}
    for epoch, spectrum in state.spectra.items():
        arrays |= {f"spectrum/{epoch}/{k}": getattr(spectrum, k) for k in _SPECTRUM_ARRAYS}
    alpha = state.alpha_start
    if alpha is not None:
        arrays |= {f"alpha/a/{i}": a for i, a in enumerate(alpha.a)}
        arrays |= {f"alpha/delta/{i}": d for i, d in enumerate(alpha.delta)}
        arrays["alpha/losses"] = alpha.losses
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(state.epoch),
        "steps": int(state.steps),
        "optimizer_t": int(state.optimizer_t),
        "optimizer_buffers": list(state.optimizer_buffers),
        "streams": state.streams,
        "history_layouts": layouts,
        "spectra": {
            str(epoch): {"sigma": float(s.sigma), "steps": int(s.steps), "probes": int(s.probes)}
            | {"hvps": int(s.hvps)}
            for epoch, s in state.spectra.items()
        },
        "alpha_start": None if alpha is None else {"a": len(alpha.a), "delta": len(alpha.delta)},
        "fingerprint": state.fingerprint,
    }
    return meta, arrays


def save(path: str | os.PathLike, state: TrainState, sync: bool = True) -> Path:
    """Write ``state`` to ``path`` (one ``.npz``, no pickle), atomically; returns the path.
    ``sync=False`` skips the fsync, for a file that is only copied elsewhere (an artifact)."""
    path = Path(path)
    meta, arrays = to_arrays(state)
    text = json.dumps(meta).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(META, text)
        if sync:
            with open(tmp, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ------------------------------------------------------------------------------- reading


def load(path: str | os.PathLike) -> TrainState:
    """Read a checkpoint written by :func:`save`; a file that is missing, damaged or not a
    bpexp checkpoint raises :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({exc.strerror})") from exc
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if META not in archive.namelist():
                raise CheckpointError(f"checkpoint {path}: not a bpexp checkpoint (no {META})")
            meta = json.loads(archive.read(META))
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path}: not a bpexp checkpoint")
        if meta.get("version") != VERSION:
            raise CheckpointError(
                f"checkpoint {path}: format version {meta.get('version')!r}; this bpexp reads "
                f"version {VERSION} (start the run over with force=true)"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return _from_arrays(meta, arrays, str(path))
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged zip, member, array or JSON; a missing member
        raise CheckpointError(
            f"checkpoint {path}: damaged or incomplete ({type(exc).__name__}: {exc}); delete "
            "it to start the run over"
        ) from exc


def _from_arrays(meta: dict, arrays: dict[str, Array], source: str | None) -> TrainState:
    layouts = meta["history_layouts"]
    values = arrays["history/values"].tolist()
    history, at = [], 0
    for which in arrays["history/layout"].tolist():
        keys = layouts[which]
        row = dict(zip(keys, values[at : at + len(keys)], strict=True))
        row["epoch"] = int(row["epoch"])
        at += len(keys)
        history.append(row)
    if at != len(values):
        raise ValueError(f"history: {len(values)} values for {at} keys")
    spectra = {
        int(epoch): SpectralDensity(
            *(arrays[f"spectrum/{epoch}/{k}"] for k in _SPECTRUM_ARRAYS),
            **{k: scalars[k] for k in _SPECTRUM_SCALARS},
        )
        for epoch, scalars in meta["spectra"].items()
    }
    alpha = None
    if meta["alpha_start"] is not None:
        n_a, n_delta = meta["alpha_start"]["a"], meta["alpha_start"]["delta"]
        alpha = AlphaStart(
            [arrays[f"alpha/a/{i}"] for i in range(n_a)],
            [arrays[f"alpha/delta/{i}"] for i in range(n_delta)],
            arrays["alpha/losses"],
        )
    return TrainState(
        epoch=int(meta["epoch"]),
        steps=int(meta["steps"]),
        params=arrays["params"],
        params_init=arrays["params_init"],
        optimizer_t=int(meta["optimizer_t"]),
        optimizer_buffers={k: arrays[f"optimizer/{k}"] for k in meta["optimizer_buffers"]},
        streams=meta["streams"],
        history=history,
        spectra=spectra,
        alpha_start=alpha,
        fingerprint=meta["fingerprint"],
        source=source,
    )


# ------------------------------------------------------------------------ checking a match


def check_fingerprint(state: TrainState, expected: dict) -> None:
    """Refuse to resume from ``state`` a run whose ``expected`` fingerprint differs: the
    message names the file and each setting that differs."""
    saved, expected = _flat(_plain(state.fingerprint)), _flat(_plain(expected))
    differ = [
        f"{key}: {saved.get(key)!r} in the checkpoint, {expected.get(key)!r} now"
        for key in sorted(set(saved) | set(expected))
        if saved.get(key) != expected.get(key)
    ]
    if differ:
        raise CheckpointError(
            f"{state.where()} belongs to another run ("
            + "; ".join(differ)
            + "); resume with the settings it was saved with, or start over"
        )


def _plain(value: dict) -> dict:
    """``value`` as JSON gives it back (tuples as lists), so that a state held in memory and
    one read from a file compare alike."""
    return json.loads(json.dumps(value))


def _flat(value: dict, prefix: str = "") -> dict:
    out = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out |= _flat(item, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = item
    return out


def check_arrays(state: TrainState, params: Array, buffers: dict[str, Array]) -> None:
    """The weights and the optimizer's buffers must have the run's sizes and dtypes."""
    wrong = []
    expect = {"params": params, "params_init": params}
    expect |= {f"optimizer/{k}": v for k, v in buffers.items()}
    have = {"params": state.params, "params_init": state.params_init}
    have |= {f"optimizer/{k}": v for k, v in state.optimizer_buffers.items()}
    for name in sorted(set(expect) | set(have)):
        a, b = have.get(name), expect.get(name)
        if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
            shown = "absent" if a is None else f"{a.dtype}{list(a.shape)}"
            wanted = "none" if b is None else f"{b.dtype}{list(b.shape)}"
            wrong.append(f"{name} is {shown}, the run needs {wanted}")
    if sorted(state.streams) != sorted(STREAMS):
        wrong.append(f"random streams {sorted(state.streams)}, the run needs {sorted(STREAMS)}")
    if wrong:
        raise CheckpointError(f"{state.where()} does not fit this run: " + "; ".join(wrong))
