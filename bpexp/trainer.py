"""The training loop: epochs of mini-batch gradient descent that emit records.

The loop knows nothing of MLflow, Hydra or files. It hands every record to ``listener`` (any
callable); the shell decides what to do with them (print, track, collect).

Records, with step 0 of the epoch series at initialisation, before any update:
- ``EpochRecord(epoch, metrics)``: ``train/loss``, ``train/accuracy``, ``val/loss``,
  ``val/accuracy`` and the per-layer instruments of :mod:`bpexp.instruments`; every
  ``sharpness_every`` epochs (0 included) ``sharpness``, ``sharpness_converged`` and
  ``sharpness_threshold`` (:mod:`bpexp.curvature`); with ``instruments``, every
  ``gradient_tests_every`` epochs Cockpit's gradient tests on the probe and on one mini-batch,
  and every ``alpha_every`` epochs (from 1) ``alpha`` and ``update_size`` of the epoch's first
  step (:mod:`bpexp.instruments`); every ``trace_every``, ``top_k_every`` and
  ``spectrum_every`` epochs (0 included; 0 = never, the default) the Hessian's trace, top-k
  eigenvalues and spectral density on the probe, each with its cost in Hessian-vector
  products; the density's arrays ride on the record as ``spectrum``
  (:class:`bpexp.curvature.SpectralDensity`), and are kept in ``TrainResult.spectra``;
- ``StepRecord(step, epoch, batch_loss)`` every ``log_every_n_steps`` updates (global step;
  automatic by default, see :func:`log_stride`);
- ``CheckpointRecord(epoch, state)`` every ``checkpoint_every`` epochs, after that epoch's
  ``EpochRecord``, while the run has not diverged and has epochs left: ``state``
  (:class:`bpexp.checkpoint.TrainState`) is everything needed to continue exactly;
  ``train(..., start=state)`` does, emitting only the records that follow it;
- ``EndRecord(epoch, metrics, outcome)`` once: ``test/loss``, ``test/accuracy`` and the outcome,
  ``completed`` or ``diverged`` (a non-finite loss, or one above ``max_loss``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bpexp import checkpoint, curvature, instruments
from bpexp.checkpoint import AlphaStart, TrainState
from bpexp.cost import Cost
from bpexp.data import Dataset
from bpexp.errors import bad_value
from bpexp.instruments import DEFAULT_EPSILON
from bpexp.network import Network, add_l2_gradient
from bpexp.optimizer import Optimizer, State, sharpness_threshold
from bpexp.rng import PURPOSES, stream

Array = np.ndarray

# At most this many train/batch_loss points per run when the stride is automatic: each point
# costs ~0.4 ms to log on SQLite, and 200 already show the noise of the mini-batch loss.
MAX_STEP_POINTS = 200


@dataclass
class TrainerConfig:
    """Settings of the loop; the Hydra group ``trainer`` has exactly these keys."""

    epochs: int = 30
    batch_size: int | None = 10  # None: the whole training set (full-batch gradient descent)
    shuffle: bool = True
    dtype: str = "float64"
    probe_size: int = 256
    # Rows of the training set the train/ metrics are measured on each epoch: a fixed, seeded
    # subset, or every row when the set has no more (None: always every row). 10,000 rows give
    # the accuracy to ±0.006 (two standard errors at 0.9) for 1/5 of a 50,000-row forward pass.
    eval_train_rows: int | None = 10_000
    instruments: bool = True
    saturation_epsilon: float = DEFAULT_EPSILON
    max_loss: float = 1e6
    sharpness_every: int = 15  # epochs between two sharpness measurements; 0: never
    sharpness_iterations: int = curvature.DEFAULT_ITERATIONS  # Lanczos budget (H v products)
    # Cockpit's instruments (docs/instruments-curvature.md); the first two need ``instruments``.
    gradient_tests_every: int = 1  # norm, inner-product, orthogonality tests; 0: never
    alpha_every: int = 0  # alpha and update_size of each epoch's first step; 0: never
    trace_every: int = 0  # Hutch++ trace of the probe's Hessian; 0: never
    trace_hvps: int = 30  # Hutch++ budget in H v products (3 per probe vector)
    top_k_every: int = 0  # the top_k largest Hessian eigenvalues by Lanczos; 0: never
    top_k: int = 5
    top_k_iterations: int = 40  # Lanczos budget (H v products)
    spectrum_every: int = 0  # eigenvalue spectral density by stochastic Lanczos quadrature
    spectrum_steps: int = 30  # Lanczos steps per probe vector (H v products)
    spectrum_probes: int = 4  # probe vectors
    spectrum_sigma: float = 0.02  # Gaussian broadening, as a fraction of the spectrum's scale
    # Epochs between two CheckpointRecords (bpexp.checkpoint); 0: never. At most this many
    # epochs are trained again after an interruption; a record costs a copy of the weights and
    # the optimizer's buffers.
    checkpoint_every: int = 10


@dataclass(frozen=True)
class StepRecord:
    step: int
    epoch: int
    batch_loss: float


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    metrics: dict[str, float]
    spectrum: curvature.SpectralDensity | None = None  # at the spectrum_every epochs


@dataclass(frozen=True)
class EndRecord:
    epoch: int
    metrics: dict[str, float]
    outcome: str


@dataclass(frozen=True)
class CheckpointRecord:
    """The loop's whole state after ``epoch`` (see :mod:`bpexp.checkpoint`): write it with
    ``checkpoint.save(path, record.state)``, resume with ``train(..., start=state)``."""

    epoch: int
    state: TrainState

    @property
    def metrics(self) -> dict[str, float]:
        """None: a listener that logs every record's metrics logs nothing for this one."""
        return {}


Record = StepRecord | EpochRecord | CheckpointRecord | EndRecord
Listener = Callable[[Record], None]


@dataclass
class TrainResult:
    outcome: str
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch 0..E
    final_metrics: dict[str, float] = field(default_factory=dict)
    spectra: dict[int, curvature.SpectralDensity] = field(default_factory=dict)  # by epoch


def validate(cfg: TrainerConfig, n_train: int) -> None:
    """Semantic checks that need the data set's size; raises ConfigError naming the key."""
    if cfg.epochs < 1:
        raise bad_value("trainer.epochs", cfg.epochs, "an integer >= 1")
    if cfg.batch_size is not None and not 1 <= cfg.batch_size <= n_train:
        raise bad_value(
            "trainer.batch_size",
            cfg.batch_size,
            f"1 <= batch_size <= {n_train} (training set size), or null for the full batch",
        )
    if cfg.eval_train_rows is not None and cfg.eval_train_rows < 1:
        raise bad_value(
            "trainer.eval_train_rows", cfg.eval_train_rows, "an integer >= 1, or null for all"
        )
    if cfg.probe_size < 1:
        raise bad_value("trainer.probe_size", cfg.probe_size, "an integer >= 1")
    if not 0 < cfg.saturation_epsilon < 0.5:
        raise bad_value("trainer.saturation_epsilon", cfg.saturation_epsilon, "0 < epsilon < 0.5")
    if not cfg.max_loss > 0:
        raise bad_value("trainer.max_loss", cfg.max_loss, "a number > 0")
    if cfg.sharpness_every < 0:
        raise bad_value("trainer.sharpness_every", cfg.sharpness_every, "0 (never) or >= 1")
    if cfg.sharpness_iterations < 1:
        raise bad_value("trainer.sharpness_iterations", cfg.sharpness_iterations, ">= 1")
    for key in EVERY_KEYS:
        if getattr(cfg, key) < 0:
            raise bad_value(f"trainer.{key}", getattr(cfg, key), "0 (never) or >= 1")
    if cfg.trace_hvps < 3:
        raise bad_value("trainer.trace_hvps", cfg.trace_hvps, ">= 3 (3 products per probe)")
    if cfg.top_k < 1:
        raise bad_value("trainer.top_k", cfg.top_k, ">= 1")
    if cfg.top_k_iterations < cfg.top_k:
        raise bad_value("trainer.top_k_iterations", cfg.top_k_iterations, ">= trainer.top_k")
    for key in ("spectrum_steps", "spectrum_probes"):
        if getattr(cfg, key) < 1:
            raise bad_value(f"trainer.{key}", getattr(cfg, key), ">= 1")
    if not cfg.spectrum_sigma > 0:
        raise bad_value("trainer.spectrum_sigma", cfg.spectrum_sigma, "a number > 0")


EVERY_KEYS = ("gradient_tests_every", "alpha_every", "trace_every", "top_k_every", "spectrum_every")
EVERY_KEYS += ("checkpoint_every",)


def _due(every: int, epoch: int) -> bool:
    return every > 0 and epoch % every == 0


def substream(seed: int, child: int) -> np.random.Generator:
    """The streams of the instruments of issue 26, children of the ``sharpness`` purpose's
    seed sequence (0: gradient-test batches, 1: trace, 2: top-k, 3: spectrum), so that
    :data:`bpexp.rng.PURPOSES` and every existing stream are as they were."""
    seq = np.random.SeedSequence([int(seed), PURPOSES["sharpness"]], spawn_key=(child,))
    return np.random.default_rng(seq)


def mini_batch_size(cfg: TrainerConfig, n_train: int) -> int:
    """The mini-batch size m: ``trainer.batch_size``, or the whole training set when null."""
    return n_train if cfg.batch_size is None else cfg.batch_size


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def log_stride(cfg: TrainerConfig, n_train: int, log_every_n_steps: int | None = None) -> int:
    """Steps between two ``StepRecord``s: as asked, or automatic (at most MAX_STEP_POINTS)."""
    if log_every_n_steps is not None:
        return log_every_n_steps
    total = cfg.epochs * steps_per_epoch(n_train, mini_batch_size(cfg, n_train))
    return max(1, math.ceil(total / MAX_STEP_POINTS))


def train_epoch(
    net: Network,
    optimizer: Optimizer,
    state: State,
    cost: Cost,
    X: Array,
    Y: Array,
    batch_size: int,
    on_step: Callable[[int, float], bool] | None = None,
    stride: int = 0,
    step: int = 0,
    order: Array | None = None,
    n_train: int | None = None,
    first_step: Array | None = None,
) -> tuple[int, bool]:
    """One pass over (X, Y) in mini-batches, counting global steps from ``step``.

    The batches are consecutive rows of (X, Y), or with ``order`` (a permutation of the rows)
    consecutive slices of ``order``: batch k is ``X[order[k m : (k + 1) m]]``. Each batch is
    gathered into a buffer of m rows just before its step, so a shuffled epoch needs no
    second copy of the training set, and the step finds its batch hot in cache.

    Every ``stride`` global steps (0: never) the batch loss is computed and passed to
    ``on_step(step, loss)``, which returns True to stop (a loss above the bound). A NaN or inf
    anywhere in a batch's output error, scaled as the update will use it, stops the pass at
    once, before that step's update: its sum over the batch, ∂C/∂b^L (BP3), is already at hand,
    so the check costs one dot product of n_L numbers a step. Returns the global step reached
    and whether the pass was stopped. With ``optimizer.weight_decay`` = λ the step follows the
    regularised cost C + λ/(2n) Σ‖W‖², n = ``n_train`` (default: the rows of X).

    ``first_step``, an array shaped like ``net.params``, receives the weights just after the
    pass's first step (the step ``alpha`` judges; its batch always has ``batch_size`` rows).
    """
    gb_out = net.gb[-1]
    # backprop leaves gradient_scale · ∇C in net.grad, ready for Optimizer.update.
    scale = optimizer.gradient_scale
    decay = scale * optimizer.weight_decay / (n_train or X.shape[0])
    decay_scratch = [np.empty_like(W) for W in net.W] if decay else []
    if order is not None:
        X_batch = np.empty((batch_size, X.shape[1]), X.dtype)
        Y_batch = np.empty((batch_size, Y.shape[1]), Y.dtype)
    for start in range(0, X.shape[0], batch_size):
        step += 1
        if order is None:
            Xb, Yb = X[start : start + batch_size], Y[start : start + batch_size]
        else:
            rows = order[start : start + batch_size]
            # mode="clip": the rows are valid by construction, and take() with the default
            # mode="raise" buffers ``out`` (a second copy and a pass more).
            Xb = np.take(X, rows, axis=0, out=X_batch[: len(rows)], mode="clip")
            Yb = np.take(Y, rows, axis=0, out=Y_batch[: len(rows)], mode="clip")
        want_loss = stride > 0 and step % stride == 0
        loss = net.backprop(Xb, Yb, cost, loss=want_loss, scale=scale)
        finite = math.isfinite(gb_out @ gb_out)
        if not finite:
            if on_step is not None:
                on_step(step, cost.fn(net.trace(Xb).a[-1], Yb))
            return step, True
        if decay:
            add_l2_gradient(net, decay, decay_scratch)
        optimizer.update(net.params, net.grad, state)
        if start == 0 and first_step is not None:
            np.copyto(first_step, net.params)
        if want_loss and on_step is not None and on_step(step, loss):
            return step, True
    return step, False


def evaluate(
    net: Network, cost: Cost, X: Array, Y: Array, prefix: str, task: str
) -> dict[str, float]:
    """``{prefix}/loss`` and, for classifiers, ``{prefix}/accuracy`` on (X, Y); {} if empty."""
    if X.shape[0] == 0:
        return {}
    a = net.forward(X)
    out = {f"{prefix}/loss": cost.fn(a, Y)}
    if task == "classification":
        out[f"{prefix}/accuracy"] = float(np.mean(a.argmax(axis=1) == Y.argmax(axis=1)))
    return out


def eval_train_index(n: int, rows: int | None, seed: int) -> Array | None:
    """Sorted indices of the training rows the train/ metrics use; None for all ``n`` rows.

    Drawn once from the stream ``"eval_train"``, so the subset is fixed for the run and the
    same in every run with this seed, whatever the optimizer.
    """
    if rows is None or rows >= n:
        return None
    return np.sort(stream(seed, "eval_train").permutation(n)[:rows])


def _diverged(loss: float, bound: float) -> bool:
    return not math.isfinite(loss) or loss > bound


def fingerprint(
    net: Network, optimizer: Optimizer, cost: Cost, data: Dataset, cfg: TrainerConfig, seed: int
) -> dict:
    """What a run must share with a checkpoint to resume from it exactly: every setting that
    changes what the loop computes (``checkpoint_every`` does not), and the data's shape."""
    return {
        "seed": int(seed),
        "network": {
            "sizes": list(net.sizes),
            "activations": [act.name for act in net.activations],
            "dtype": str(net.dtype),
        },
        "cost": cost.name,
        "optimizer": {f.name: getattr(optimizer, f.name) for f in dataclasses.fields(optimizer)},
        "trainer": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_every"},
        "data": {
            "name": data.name,
            "task": data.task,
            "shapes": [list(x.shape) for x in (data.X_train, data.Y_train, data.X_val)]
            + [list(x.shape) for x in (data.X_test,)],
            "dtype": str(data.X_train.dtype),
        },
    }


def run_identity(
    net: Network,
    optimizer: Optimizer,
    cost: Cost,
    data: Dataset,
    cfg: TrainerConfig,
    seed: int,
    log_every_n_steps: int | None = None,
) -> dict:
    """The fingerprint a checkpoint of this run carries (:func:`fingerprint` and the step
    stride of its StepRecords), to check one before resuming from it
    (:func:`bpexp.checkpoint.check_fingerprint`)."""
    stride = log_stride(cfg, data.X_train.shape[0], log_every_n_steps)
    return fingerprint(net, optimizer, cost, data, cfg, seed) | {"step_stride": stride}


def train(
    net: Network,
    optimizer: Optimizer,
    cost: Cost,
    data: Dataset,
    cfg: TrainerConfig,
    seed: int,
    listener: Listener | None = None,
    log_every_n_steps: int | None = None,
    start: TrainState | None = None,
) -> TrainResult:
    """Train ``net`` in place on ``data`` and return the outcome and the per-epoch history.

    The batch order, the probe set and the rows of the train/ metrics come from ``seed`` alone
    (see :mod:`bpexp.rng`). Validation and test metrics always use every row of their part.

    ``start``, a :class:`~bpexp.checkpoint.TrainState` of a ``CheckpointRecord`` of this run
    (same settings, data and seed, else :class:`~bpexp.checkpoint.CheckpointError`), continues
    the run after its epoch: ``net``'s weights are replaced by the checkpoint's, only the
    records after it are emitted, and the result (history, steps, final weights) is the
    uninterrupted run's, bit for bit.
    """
    emit = listener or (lambda record: None)
    validate(cfg, data.X_train.shape[0])
    X, Y = data.X_train, data.Y_train
    n = X.shape[0]
    shuffle_rng = stream(seed, "shuffle")
    probe_index = np.sort(stream(seed, "probe").permutation(n)[: min(cfg.probe_size, n)])
    X_probe, Y_probe = X[probe_index], Y[probe_index]
    eval_index = eval_train_index(n, cfg.eval_train_rows, seed)
    X_eval, Y_eval = (X, Y) if eval_index is None else (X[eval_index], Y[eval_index])
    stride = log_stride(cfg, n, log_every_n_steps)
    m = mini_batch_size(cfg, n)
    state = optimizer.init(net.params)
    result = TrainResult(outcome="completed", epochs_run=0, steps=0)
    params_init = net.params.copy()
    sharpness_rng = stream(seed, "sharpness")
    threshold = sharpness_threshold(optimizer)
    batch_rng, trace_rng, top_rng, spectrum_rng = (substream(seed, k) for k in range(4))
    # Every stream drawn from after this point, by its name in a checkpoint.
    rngs = dict(
        zip(
            checkpoint.STREAMS,
            (shuffle_rng, sharpness_rng, batch_rng, trace_rng, top_rng, spectrum_rng),
            strict=True,
        )
    )
    after_first = np.empty_like(net.params)
    # α judges each epoch's first step. Its start is where the last epoch's instruments were
    # measured: their probe backprop, kept, is its observation there. Its end is the epoch's
    # end when the epoch is one step (full batch), else one more probe backprop.
    at_start: list[instruments.ProbeSnapshot | None] = [None]
    identity = (
        run_identity(net, optimizer, cost, data, cfg, seed, log_every_n_steps)
        if cfg.checkpoint_every or start is not None
        else {}
    )
    buffers = [key for key in state if key not in ("t", "scratch")]

    def save_state(epoch: int) -> TrainState:
        snap = at_start[0]
        return TrainState(
            epoch=epoch,
            steps=result.steps,
            params=net.params.copy(),
            params_init=params_init.copy(),
            optimizer_t=int(state["t"]),
            optimizer_buffers={key: state[key].copy() for key in buffers},
            streams={name: rng.bit_generator.state for name, rng in rngs.items()},
            history=list(result.history),
            spectra=dict(result.spectra),
            alpha_start=None
            if snap is None
            else AlphaStart(list(snap.a[1:]), list(snap.delta), snap.losses),
            fingerprint=identity,
        )

    def resume_from(saved: TrainState) -> None:
        checkpoint.check_fingerprint(saved, identity)
        checkpoint.check_arrays(saved, net.params, {key: state[key] for key in buffers})
        np.copyto(net.params, saved.params)
        np.copyto(params_init, saved.params_init)
        state["t"] = saved.optimizer_t
        for key in buffers:
            np.copyto(state[key], saved.optimizer_buffers[key])
        for name, rng in rngs.items():
            rng.bit_generator.state = saved.streams[name]
        alpha = saved.alpha_start
        if alpha is not None:
            a = [X_probe, *(x.copy() for x in alpha.a)]
            delta = [d.copy() for d in alpha.delta]
            at_start[0] = instruments.ProbeSnapshot(a, delta, alpha.losses.copy())
        result.steps, result.epochs_run = saved.steps, saved.epoch
        result.history = list(saved.history)
        result.spectra = dict(saved.spectra)

    def epoch_metrics(
        epoch: int, params_before: Array | None, watched: bool = False
    ) -> dict[str, float]:
        extra: dict[str, float] = {}
        at_end = None
        metrics = evaluate(net, cost, X_eval, Y_eval, "train", data.task)
        metrics |= evaluate(net, cost, data.X_val, data.Y_val, "val", data.task)
        if cfg.instruments:
            metrics |= instruments.measure(net, X_probe, Y_probe, cost, cfg.saturation_epsilon)
            metrics |= instruments.gradient_noise(net, X_probe)
            # Read the probe's backprop now, before anything overwrites it; logged below.
            if _due(cfg.gradient_tests_every, epoch):
                extra |= instruments.gradient_tests(net, X_probe, "probe")
            one_step = watched and m >= n
            next_due = epoch < cfg.epochs and _due(cfg.alpha_every, epoch + 1)
            here = None
            if one_step or next_due:
                here = instruments.snapshot(net, X_probe, Y_probe, cost, copy=True)
            at_end = here if one_step else None
            next_start = here if next_due else None
            metrics |= instruments.distances_from_init(net, params_init)
            if params_before is not None:
                metrics |= instruments.update_ratios(net, params_before)
        if cfg.sharpness_every and epoch % cfg.sharpness_every == 0:
            start = sharpness_rng.standard_normal(net.params.size)
            metrics |= curvature.sharpness_metrics(
                net, X_probe, Y_probe, cost, start, cfg.sharpness_iterations, threshold
            )[0]
        if watched:
            extra |= instruments.step_alpha(
                net, X_probe, Y_probe, cost, params_before, after_first, at_start[0], at_end
            )
        if cfg.instruments:
            at_start[0] = next_start
        if cfg.instruments and _due(cfg.gradient_tests_every, epoch) and 2 <= m < n:
            rows = batch_rng.choice(n, m, replace=False)
            net.backprop(X[rows], Y[rows], cost)
            extra |= instruments.gradient_tests(net, X[rows], "batch")
        spectrum = hessian_metrics(epoch, extra)
        metrics |= extra  # after the metrics above, whose order stays as it was
        result.history.append({"epoch": epoch, **metrics})
        if spectrum is not None:
            result.spectra[epoch] = spectrum
        emit(EpochRecord(epoch, metrics, spectrum))
        return metrics

    def hessian_metrics(epoch: int, out: dict[str, float]) -> curvature.SpectralDensity | None:
        """The trace, top-k and spectrum measurements due at ``epoch``, on one operator."""
        due = [_due(every, epoch) for every in (cfg.trace_every, cfg.top_k_every)]
        if not (any(due) or _due(cfg.spectrum_every, epoch)):
            return None
        H = curvature.HessianOperator(net, X_probe, Y_probe, cost)
        if due[0]:
            trace = curvature.hutch_plus_plus(H, H.size, cfg.trace_hvps, trace_rng)
            out |= {"hessian_trace": trace.value, "hessian_trace_hvps": float(trace.hvps)}
        if due[1]:
            top = curvature.top_eigenvalues(
                H, top_rng.standard_normal(H.size), cfg.top_k, cfg.top_k_iterations
            )
            out |= {f"hessian_top/{i}": float(v) for i, v in enumerate(top.values, start=1)}
            out |= {
                "hessian_top_converged": float(top.converged),
                "hessian_top_hvps": float(top.hvps),
            }
        if not _due(cfg.spectrum_every, epoch):
            return None
        spectrum = curvature.spectral_density(
            H, H.size, cfg.spectrum_steps, cfg.spectrum_probes, spectrum_rng, cfg.spectrum_sigma
        )
        out["hessian_spectrum_hvps"] = float(spectrum.hvps)
        return spectrum

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if start is None:
            epoch_metrics(0, None)
        else:
            resume_from(start)
        for epoch in range(result.epochs_run + 1, cfg.epochs + 1):
            # The permutation is drawn every epoch, also for the full batch (whose one batch
            # is every row in any order), so the stream and the batches stay what seed says.
            order = shuffle_rng.permutation(n) if cfg.shuffle else None
            if m >= n:
                order = None

            def on_step(step: int, loss: float, epoch: int = epoch) -> bool:
                emit(StepRecord(step, epoch, loss))
                return _diverged(loss, cfg.max_loss)

            params_before = net.params.copy() if cfg.instruments else None
            watching = cfg.instruments and _due(cfg.alpha_every, epoch)
            result.steps, stopped = train_epoch(
                net,
                optimizer,
                state,
                cost,
                X,
                Y,
                m,
                on_step,
                stride,
                result.steps,
                order,
                first_step=after_first if watching else None,
            )
            result.epochs_run = epoch
            metrics = epoch_metrics(epoch, params_before, watching and not stopped)
            if stopped or _diverged(metrics["train/loss"], cfg.max_loss):
                result.outcome = "diverged"
                break
            if epoch < cfg.epochs and _due(cfg.checkpoint_every, epoch):
                emit(CheckpointRecord(epoch, save_state(epoch)))
        final = evaluate(net, cost, data.X_test, data.Y_test, "test", data.task)
    result.final_metrics = {**result.history[-1], **final}
    result.final_metrics.pop("epoch")
    emit(EndRecord(result.epochs_run, final, result.outcome))
    return result
