"""The imperative shell: compose the config, check it, build the experiment, train, track.

``python -m bpexp`` (:mod:`bpexp.__main__`) runs it through Hydra; notebooks call :func:`run`,
which composes the same configuration with Hydra's compose API. Everything that can be wrong
with the input is checked in :func:`build` before a tracking run is created.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bpexp import config as config_module
from bpexp import stop
from bpexp.checkpoint import CheckpointError, TrainState, check_fingerprint
from bpexp.config import CONF_DIR, Config, flatten, typed
from bpexp.cost import Cost, get_cost
from bpexp.data import Dataset, load_dataset
from bpexp.errors import ConfigError
from bpexp.network import Network, initialize, save_weights, weights
from bpexp.optimizer import label
from bpexp.rng import stream
from bpexp.trainer import (
    EndRecord,
    EpochRecord,
    Listener,
    Record,
    TrainerConfig,
    TrainResult,
    run_identity,
    train,
)
from bpexp.trainer import validate as validate_trainer


@dataclass
class Experiment:
    """Everything one run needs, built and checked, before any run is created: ``cfg`` is the
    typed config, whose ``optimizer`` is the core's Optimizer and ``trainer`` the loop's
    TrainerConfig."""

    cfg: Config
    data: Dataset
    net: Network
    cost: Cost
    initial_weights: dict[str, np.ndarray]  # W1, b1, ..., WL, bL before any update

    @property
    def n_train(self) -> int:
        return self.data.X_train.shape[0]

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps (updates) an epoch."""
        return -(-self.n_train // (self.cfg.trainer.batch_size or self.n_train))


@dataclass
class Result:
    """What :func:`bpexp.run` returns."""

    outcome: str
    metrics: dict[str, float]  # final values: train/, val/, test/ and instruments
    history: pd.DataFrame  # one row per epoch (0 = at initialisation), one column per metric
    weights: dict[str, np.ndarray]  # W1, b1, ..., WL, bL
    run_id: str | None = None
    skipped: bool = False  # not trained: a run with this exact config had ended already
    steps_per_epoch: int | None = None  # optimizer steps (updates) an epoch
    train_result: TrainResult | None = field(default=None, repr=False)


def build(cfg: DictConfig) -> Experiment:
    """Check the config and load what it names; raises ConfigError before anything runs.

    The config is turned into typed objects here, once (:func:`bpexp.config.typed`); everything
    after reads them. Each check has one owner: the config (:func:`bpexp.config.validate`), the
    optimizer and the cost (their constructors), the data loader, the trainer (sizes that need
    the data) and the network (activations, initialisation, the init file).
    """
    cfg = typed(cfg)
    cost = get_cost(cfg.cost.name, cfg.network.output_activation)
    d = cfg.data
    data = load_dataset(
        d.name,
        path=d.path,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
        dtype=cfg.trainer.dtype,
        url=d.url,
        cache_dir=d.cache_dir,
        n_samples=d.n_samples,
    )
    if data.task == "regression" and cost.name != "quadratic":
        raise ConfigError(
            f"cost.name={cost.name!r} needs class labels, but data.name={d.name!r} has "
            "real-valued targets; use cost=quadratic (with network.output_activation=linear)"
        )
    validate_trainer(cfg.trainer, data.X_train.shape[0])
    sizes = [data.n_inputs, *cfg.network.hidden, data.n_outputs]
    net = Network(sizes, cfg.network.activation, cfg.network.output_activation, cfg.trainer.dtype)
    initialize(net, cfg.network.init, stream(cfg.seed, "init"), cfg.network.init_path)
    return Experiment(cfg, data, net, cost, weights(net))


def run_name(cfg: Config) -> str:
    """A name readable in the UI's run list: ``nesterov lr=0.5 beta=0.9 seed=1``."""
    opt = cfg.optimizer
    parts = [label(opt.name, opt.form, opt.bias_correction), f"lr={opt.lr:g}"]
    if opt.name in ("momentum", "nesterov", "adam"):
        parts.append(f"beta={opt.beta:g}")
    parts.append(f"seed={cfg.seed}")
    return " ".join(parts)


def history_frame(result: TrainResult) -> pd.DataFrame:
    return pd.DataFrame(result.history).set_index("epoch")


class Printer:
    """Listener printing one line per epoch, and the final metrics."""

    SHOWN = ("train/loss", "train/accuracy", "val/loss", "val/accuracy")

    MAX_LINES = 30

    def __init__(self, epochs: int, stream_=sys.stdout, every_epoch: bool = True) -> None:
        self.epochs = epochs
        self.every_epoch = every_epoch  # False: the final line only (verbose=1)
        self.every = -(-epochs // self.MAX_LINES)  # ceil: at most ~30 epoch lines
        self.out = stream_
        self.start = time.perf_counter()

    def __call__(self, record: Record) -> None:
        if isinstance(record, EpochRecord):
            if not self.every_epoch:
                return
            if record.epoch % self.every and record.epoch != self.epochs:
                return
            shown = "  ".join(
                f"{k} {record.metrics[k]:.4f}" for k in self.SHOWN if k in record.metrics
            )
            width = len(str(self.epochs))
            print(
                f"epoch {record.epoch:>{width}}/{self.epochs}  {shown}", file=self.out, flush=True
            )
        elif isinstance(record, EndRecord):
            elapsed = time.perf_counter() - self.start
            shown = "  ".join(f"{k} {v:.4f}" for k, v in record.metrics.items())
            print(
                f"{record.outcome} after {record.epoch} epochs in {elapsed:.1f} s  {shown}",
                file=self.out,
                flush=True,
            )


def _fan_out(listeners: list[Listener]) -> Listener:
    def emit(record: Record) -> None:
        stop.exit_if_preempted()  # a preemption whose exit was lost (bpexp.stop)
        for listener in listeners:
            listener(record)

    return emit


def execute(
    cfg: DictConfig,
    *,
    echo: bool = True,
    sweep_name: str | None = None,
    parent: Callable[[object, str], str] | None = None,
    listeners: list[Listener] | None = None,
    tags: dict[str, str] | None = None,
    started: Callable[[str], None] | None = None,
) -> Result:
    """Build, train and (if ``tracking.enabled``) log one experiment; ``listeners`` receive
    every training record too (see :mod:`bpexp.trainer`). ``parent(client, experiment_id)``
    gives the parent run of a sweep's job (:func:`bpexp.sweep.ensure_parent`); ``tags`` are
    added to the run's (``bpexp.arm``, ``bpexp.stage`` for a sweep's jobs); ``started(run_id)``
    is called once the run exists.

    Bad input raises ConfigError (TrackingError for the store) before any run exists. A job
    whose exact config already has a final run is skipped: its Result is read from that run.
    Once the run exists, divergence is an outcome; an exception marks the run FAILED (traceback
    as an artifact) and is re-raised; KeyboardInterrupt (Ctrl-C, or SIGTERM under ``python -m
    bpexp``) marks it KILLED, with the metrics logged so far kept.
    """
    exp = build(cfg)
    cfg = exp.cfg  # the typed config from here on
    echo = echo and cfg.verbose != 0  # verbose=0: errors only; 1: no epoch lines
    printer = Printer(cfg.trainer.epochs, every_epoch=cfg.verbose in (None, 2))
    listeners = [*(listeners or []), *([printer] if echo else [])]
    if not cfg.tracking.enabled:
        return _train(exp, listeners, echo)

    from bpexp import tracking as tr  # MLflow is imported only when tracking is on

    uri = tr.tracking_uri(cfg.tracking.uri)
    client = tr.connect(uri, cfg.tracking.timeout_seconds)
    experiment_id = tr.ensure_experiment(client, cfg.tracking.experiment)
    parent_run_id = parent(client, experiment_id) if parent else None
    flat = flatten(cfg)
    digest = tr.config_hash(flat)
    done = None if cfg.force else tr.finished_run(client, experiment_id, digest)
    if done is not None:
        if echo:
            print(
                f"skipped: run {done.info.run_id} already has this exact config "
                f"({done.data.tags['outcome']}); add force=true to run it again",
                flush=True,
            )
        return _stored_result(client, done, exp)

    # How the command prints and writes (issue 27) is no param: a run's params stay its config.
    logged = {k: v for k, v in flat.items() if k not in ("verbose", "tracking.writer")}
    params = {**logged, "network.sizes": list(exp.net.sizes), "data.n_train": exp.n_train}
    run_tags = {
        "optimizer": cfg.optimizer.name,
        "sweep": sweep_name or "",
        "bpexp.config_hash": digest,
        "outcome": "running",
        **(tags or {}),
    }
    resume, state = (
        (None, None) if cfg.force else _resumable(tr, client, experiment_id, digest, exp)
    )
    if state is not None:
        run_tags["bpexp.resumed_from_epoch"] = str(state.epoch)
    with tr.tracked_run(
        client, experiment_id, run_name(cfg), params, run_tags, parent_run_id, resume, started
    ) as log:
        if cfg.tracking.writer:  # points written by a process of its own (bpexp.writer)
            from bpexp import writer

            log.writer = writer.for_uri(uri)
        if echo:
            print(
                f"tracking: run {log.run_id} in experiment {cfg.tracking.experiment!r} at {uri}"
                + (f", resumed from its checkpoint at epoch {state.epoch}" if state else ""),
                flush=True,
            )
        out = _train(exp, [*listeners, log], echo, start=state)
        out.run_id = log.run_id
        _log_run_artifacts(log, exp, out)
        log.outcome, log.end_tags = out.outcome, run_warnings(out.train_result, cfg.trainer)
    if echo:
        print(
            f"logged: run {log.run_id} ({run_name(cfg)}), {log.points_logged} metric points, "
            f"at {uri}; browse with: mlflow ui --backend-store-uri {shlex.quote(uri)}",
            flush=True,
        )
    return out


def _loop_inputs(exp: Experiment) -> tuple:
    """What the training loop and a run's fingerprint take: net, optimizer, cost, data,
    trainer settings and seed (:func:`bpexp.trainer.train`, :func:`~bpexp.trainer.run_identity`)."""
    cfg = exp.cfg
    return exp.net, cfg.optimizer, exp.cost, exp.data, cfg.trainer, cfg.seed


def _resumable(tr, client, experiment_id: str, digest: str, exp: Experiment):
    """(the interrupted run of this exact config to continue, its last checkpoint), or
    (None, None) to start a new run: none was interrupted after a checkpoint, or its
    checkpoint cannot be read or belongs to other code (a warning says so)."""
    run = tr.resumable_run(client, experiment_id, digest)
    if run is None:
        return None, None
    cfg = exp.cfg
    try:
        state = tr.load_checkpoint(client, run)
        expected = run_identity(*_loop_inputs(exp), cfg.tracking.log_every_n_steps)
        check_fingerprint(state, expected)
    except CheckpointError as exc:
        print(f"warning: not resumed, a new run starts: {exc}", file=sys.stderr, flush=True)
        return None, None
    return run, state


def _train(
    exp: Experiment, listeners: list[Listener], echo: bool, start: TrainState | None = None
) -> Result:
    """Train ``exp`` with every record going to ``listeners`` (from checkpoint ``start``, if
    given); print the warnings if ``echo``."""
    cfg = exp.cfg
    result = train(
        *_loop_inputs(exp), _fan_out(listeners), cfg.tracking.log_every_n_steps, start=start
    )
    if echo:
        for key, text in run_warnings(result, cfg.trainer).items():
            print(f"{key}: {text}", file=sys.stderr, flush=True)
    out = Result(
        result.outcome,
        result.final_metrics,
        history_frame(result),
        weights(exp.net),
        steps_per_epoch=exp.steps_per_epoch,
    )
    out.train_result = result
    return out


def _stored_result(client, run, exp: Experiment) -> Result:
    """The Result of a run that ended earlier: its final metrics, its per-epoch history and
    final weights from its artifacts (``history.parquet``, ``weights/final.npz``)."""
    from bpexp.network import load_weights

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            long = pd.read_parquet(client.download_artifacts(run_id, "history.parquet", tmp))
            load_weights(exp.net, client.download_artifacts(run_id, "weights/final.npz", tmp))
            final = weights(exp.net)
        except Exception:  # an older run without them: its final metrics only
            long, final = None, {}
    history = pd.DataFrame()
    if long is not None:
        epochs = long[~long["metric"].str.startswith(("train/batch_loss", "test/"))]
        history = epochs.pivot_table(index="step", columns="metric", values="value")
        history.index.name, history.columns.name = "epoch", None
    return Result(
        run.data.tags["outcome"],
        dict(run.data.metrics),
        history,
        final,
        run_id=run.info.run_id,
        skipped=True,
        steps_per_epoch=exp.steps_per_epoch,
    )


def run_warnings(result: TrainResult, trainer: TrainerConfig) -> dict[str, str]:
    """Tags for measurements a reader must not take at face value, e.g. ``warning.sharpness``
    naming the epochs whose ``sharpness`` did not converge within its Lanczos budget (it is
    then a lower bound of the top eigenvalue, see :mod:`bpexp.curvature`)."""
    epochs = [int(h["epoch"]) for h in result.history if h.get("sharpness_converged") == 0.0]
    if not epochs:
        return {}
    return {
        "warning.sharpness": f"not converged within trainer.sharpness_iterations="
        f"{trainer.sharpness_iterations} at epochs {', '.join(map(str, epochs))}: the logged "
        "sharpness there is a lower bound; raise trainer.sharpness_iterations"
    }


def _log_run_artifacts(logger, exp: Experiment, out: Result) -> None:
    """config.yaml, weights/initial.npz, weights/final.npz, history.parquet, the Hessian's
    spectra (``hessian_spectrum.npz``, when ``trainer.spectrum_every`` measured any) and, with
    ``tracking.plots``, the run's PNGs (curves, gradient norms, saturation, its cockpit and
    spectrum figures)."""
    from bpexp import curvature

    history = pd.DataFrame(logger.rows, columns=["metric", "step", "value"])
    history.insert(0, "run_id", logger.run_id)
    spectra = out.train_result.spectra if out.train_result is not None else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "weights").mkdir()
        (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(exp.cfg))
        save_weights(weights(exp.net), tmp_path / "weights" / "final.npz")
        save_weights(exp.initial_weights, tmp_path / "weights" / "initial.npz")
        history.to_parquet(tmp_path / "history.parquet", index=False)
        if spectra:
            curvature.save_spectra(str(tmp_path / "hessian_spectrum.npz"), spectra)
        if exp.cfg.tracking.plots:
            from bpexp import cockpit_plots
            from bpexp.plots import save_run_plots

            folder = tmp_path / "plots"
            save_run_plots(history, folder, dpi=80)
            title = run_name(exp.cfg)
            figure = cockpit_plots.cockpit_figure(out.history.reset_index(), title=title)
            cockpit_plots.save(figure, folder / "cockpit.png", dpi=80)
            if spectra:
                figure = cockpit_plots.spectrum_figure(spectra)
                cockpit_plots.save(figure, folder / "spectrum.png", dpi=80)
        logger.client.log_artifacts(logger.run_id, tmp)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The configuration ``python -m bpexp <overrides>`` would run, via Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_module.register()
    config_module.check_options(overrides or [])
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def run(
    overrides: list[str] | None = None,
    *,
    echo: bool = False,
    listeners: list[Listener] | None = None,
) -> Result:
    """Run one experiment from Python, e.g. ``bpexp.run(["optimizer=nesterov"])``.

    Returns the final metrics, the per-epoch history as a DataFrame and the final weights.
    """
    return execute(compose(overrides), echo=echo, listeners=listeners)
