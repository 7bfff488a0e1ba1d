"""The configuration schema: one dataclass per Hydra group, registered in Hydra's ConfigStore.

The groups mirror the modules: ``network`` → :mod:`bpexp.network`, ``cost`` → :mod:`bpexp.cost`,
``optimizer`` → :mod:`bpexp.optimizer`, ``data`` → :mod:`bpexp.data`, ``trainer`` →
:mod:`bpexp.trainer`, ``tracking`` → :mod:`bpexp.tracking`, ``workload`` →
:mod:`bpexp.workload`; the ``optimizer`` and ``trainer``
schemas are the core's own ``Optimizer`` and ``TrainerConfig``. Being structured configs, a
wrong type or an unknown key fails at composition with a message naming the key; :func:`typed`
then turns the composed config into these objects once, checking the values (ranges, allowed
names, incompatible pairs) before anything runs.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from bpexp.errors import ConfigError, bad_value
from bpexp.optimizer import Optimizer
from bpexp.trainer import TrainerConfig
from bpexp.workload import WorkloadConfig

_PACKAGE = Path(__file__).resolve().parent
# A wheel ships conf/ and sweeps/ inside the package; a checkout (and an editable install)
# keeps them at the top level of the repository, beside the package.
ROOT = _PACKAGE if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent
CONF_DIR = ROOT / "conf"
SWEEPS_DIR = ROOT / "sweeps"


@dataclass
class NetworkConfig:
    hidden: list[int] = field(default_factory=lambda: [30])
    activation: str = "sigmoid"
    output_activation: str = "sigmoid"
    init: str = "normal"
    init_path: str | None = None


@dataclass
class CostConfig:
    name: str = "quadratic"


@dataclass
class DataConfig:
    name: str = "digits"
    path: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    url: str | None = None
    cache_dir: str | None = None
    n_samples: int | None = None


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "bpexp"
    log_every_n_steps: int | None = None  # None: automatic, at most ~200 points per run
    plots: bool = False  # per-run PNGs, opt-in: MLflow's charts show the same curves
    writer: bool = False  # True: a process of its own writes the points (bpexp.writer)
    timeout_seconds: float = 10.0


@dataclass
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    optimizer: Optimizer = field(default_factory=lambda: Optimizer("sgd", 3.0))
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    seed: int = 0
    force: bool = False  # true: rerun a job whose exact config already has a final run
    # What a command prints (docs/usage.md#the-console): null is 2 for a single run, 0 for a
    # multirun; 0: a multirun's progress only, 1: and one line per job, 2: and every epoch.
    verbose: int | None = None


def register() -> None:
    """Register the schema, bpexp's sweeper and the ``${bpexp_sweeps:}`` and
    ``${bpexp_new_folder:}`` resolvers used in ``conf/config.yaml``.

    The sweeper lives in the ``hydra_plugins`` namespace as Hydra requires, but Hydra's plugin
    scan does not see it under an editable install (``pip install -e .``), so it is registered
    here by hand (Hydra's ``Plugins.register``).
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.bpexp_sweeper.bpexp_sweeper import BpexpSweeper

    schema = OmegaConf.structured(Config)
    # Optimizer is frozen (its rule is derived once from its fields), which OmegaConf turns
    # into a read-only node that the yaml files and overrides could not fill; the schema's
    # node is made writable, and :func:`typed` builds the frozen object from it.
    OmegaConf.set_readonly(schema.optimizer, False)
    ConfigStore.instance().store(name="bpexp_schema", node=schema)
    Plugins.instance().register(BpexpSweeper)
    OmegaConf.register_new_resolver("bpexp_sweeps", lambda: SWEEPS_DIR.as_posix(), replace=True)
    # Cached like Hydra's ${now:}: resolved once in the launching process, and the value is
    # carried with the config to the jobs of every launcher.
    OmegaConf.register_new_resolver("bpexp_new_folder", new_folder, replace=True, use_cache=True)


def new_folder(base: str) -> str:
    """A folder made now, for this process alone: ``base`` itself, or ``base-2``, ``base-3``...
    if another process made that one first (``mkdir`` is atomic). Two sweeps started in the
    same second get ``multirun/<date>/<time>`` and ``multirun/<date>/<time>-2``."""
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        folder = base if n == 1 else f"{base}-{n}"
        try:
            Path(folder).mkdir()
        except FileExistsError:
            continue
        return folder
    raise ConfigError(f"hydra.sweep.dir: {base}-2 .. {base}-9999 all exist already")


def group_options() -> dict[str, list[str]]:
    """The options of each config group and where they live: ``conf/<group>/*.yaml``, and the
    named sweeps ``sweeps/sweep/*.yaml`` (Hydra's own ``hydra/...`` groups left out)."""
    folders = {d.name: d for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra"}
    folders["sweep"] = SWEEPS_DIR / "sweep"
    return {name: sorted(p.stem for p in d.glob("*.yaml")) for name, d in folders.items()}


def check_options(overrides: Sequence[str]) -> None:
    """Raise ConfigError when an override gives a config group an option it does not have.

    Hydra drops an unknown option of the optional ``sweep`` group without a word (a misspelt
    sweep would run the default experiment), so this runs before Hydra does. Overrides Hydra
    cannot parse are left to Hydra's own message.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = [a for a in overrides if not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException:
        return
    options = group_options()
    for override in parsed:
        group = override.key_or_group
        if group not in options or override.is_delete():
            continue
        if override.value_type is not None and override.value_type.name == "GLOB_CHOICE_SWEEP":
            given = [] if override.value().filter(options[group]) else [override.get_value_string()]
        elif override.is_sweep_override():
            given = list(override.sweep_string_iterator())
        else:
            given = [override.value()]
        for value in given:
            if value is not None and value not in options[group]:
                where = "named sweeps in sweeps/sweep/" if group == "sweep" else f"conf/{group}/"
                raise bad_value(group, value, f"{', '.join(options[group])} ({where})")


_PASSWORD_IN_URI = re.compile(r"(://[^/@\s:]*:)([^/@\s]*)(@)")


def check_no_password(args: Sequence[str]) -> None:
    """Refuse a password written into an override (``tracking.uri=http://user:pw@host``):
    Hydra echoes a sweep's overrides, and the config is logged as params. The message shows
    the value with the password masked."""
    for arg in args:
        if _PASSWORD_IN_URI.search(arg):
            shown = _PASSWORD_IN_URI.sub(r"\1***\3", arg)
            raise ConfigError(
                f"{shown}: a password in a URI would be printed and logged; pass the user "
                "name and password in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "instead"
            )


def check_command_line(args: Sequence[str]) -> None:
    """:func:`check_options` and :func:`check_no_password` for ``python -m bpexp ARGS``: prints
    the error and exits with code 2, before anything runs."""
    try:
        check_no_password(args)
        check_options(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def typed(cfg: DictConfig) -> Config:
    """The composed config as typed objects (``OmegaConf.to_object``), checked; raises
    ConfigError naming the key.

    Building ``cfg.optimizer`` as the core's :class:`~bpexp.optimizer.Optimizer` validates it;
    :func:`validate` checks the rest that only the configuration knows.
    """
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError(f"data.name={cfg.data.name!r} needs data.path: the file to read")
    out = OmegaConf.to_object(cfg)
    validate(out)
    return out


def validate(cfg: Config) -> None:
    """Check what only the configuration knows; raises ConfigError naming the key.

    The other checks belong to the pieces they concern and run in :func:`bpexp.app.build`,
    also before training: the optimizer and the cost (their constructors), the data loader
    (``data.*``, ``trainer.dtype``), the trainer (``trainer.*``, with the data set's size) and
    the network (activations, ``network.init``, the init file).
    """
    for i, n in enumerate(cfg.network.hidden):
        if n < 1:
            raise bad_value(f"network.hidden[{i}]", n, "layer sizes >= 1")
    stride = cfg.tracking.log_every_n_steps
    if stride is not None and stride < 1:
        raise bad_value("tracking.log_every_n_steps", stride, "null (automatic) or >= 1")
    if not cfg.tracking.timeout_seconds > 0:
        raise bad_value("tracking.timeout_seconds", cfg.tracking.timeout_seconds, "a number > 0")
    if cfg.verbose not in (None, 0, 1, 2):
        raise bad_value("verbose", cfg.verbose, "null (automatic), 0, 1 or 2")


def flatten(cfg: Config | DictConfig | dict, prefix: str = "") -> dict[str, object]:
    """The resolved config as dotted keys: ``{"optimizer.lr": 0.5, "network.hidden": [30]}``."""
    if isinstance(cfg, Config):
        cfg = OmegaConf.structured(cfg)
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, object] = {}
    for key, value in container.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
