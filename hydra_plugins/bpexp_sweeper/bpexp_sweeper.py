"""bpexp's sweeper: Hydra's grid, or the tune-then-confirm protocol when one is configured.

``conf/config.yaml`` selects it (``hydra/sweeper: bpexp``). Without ``hydra.sweeper.protocol`` it
is Hydra's basic sweeper: the product of ``hydra.sweeper.params`` and the command line's sweeps.
With a protocol (:mod:`bpexp.protocol`, ``docs/protocol.md``) every key swept on the command
line or in ``params`` is an arm key, the protocol's ``search`` keys are tuned per arm on the
tuning seeds, and each arm's best setting is rerun on the confirm seeds. Both stages go through
whichever launcher is configured (basic, joblib, submitit, slurm), so jobs run as usual.

The sweeper is the one source of a job's arm and stage: it writes each job's
:class:`bpexp.jobs.JobPlan` before launching it, the job tags its run with them, and the report
reads them back. Kept in the sweep folder, and logged to the parent run by
:func:`bpexp.sweep.finish`: ``protocol/protocol.json`` (the protocol, :meth:`Protocol.to_dict`,
the arms and their overrides), ``protocol/tune.csv`` (every tuning run's score),
``protocol/chosen.csv`` (each arm's setting), ``protocol/confirm.csv`` (every confirm run) and
``protocol/final_table.csv`` (the answer, computed here once).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from bpexp import jobs, stop
from bpexp import protocol as proto
from bpexp.errors import ConfigError


@dataclass
class ProtocolConf:
    """``hydra.sweeper.protocol``: see :func:`bpexp.protocol.parse` and docs/protocol.md."""

    search: dict[str, Any] = field(default_factory=dict)
    sampler: str = "grid"  # grid (deterministic) or tpe (Optuna, pip install bpexp[optuna])
    budget: int | None = None  # settings per arm; null: the size of the grid
    tune_seeds: list[int] = field(default_factory=lambda: [0, 1])
    confirm_seeds: list[int] = field(default_factory=lambda: list(range(100, 110)))
    yardstick: str = "val/accuracy"
    direction: str | None = None  # null: maximize an accuracy, minimize a loss
    target: float | None = None  # time to target: first epoch the yardstick reaches it
    sampler_seed: int = 0


@dataclass
class BpexpSweeperConf:
    _target_: str = "hydra_plugins.bpexp_sweeper.bpexp_sweeper.BpexpSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    protocol: ProtocolConf | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="bpexp", node=BpexpSweeperConf, provider="bpexp"
)


@dataclass
class Job:
    arm: str
    setting: int
    seed: int
    overrides: list[str]
    stage: str = ""


def _number_kind(value: str) -> str | None:
    """ "int" or "float" for a plain number as Hydra's override grammar reads it, else None."""
    if re.fullmatch(r"[+-]?\d+", value):
        return "int"
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value):
        return "float"
    return None


def _stop(message: str) -> None:
    """Bad input: say so and exit 2 before any job runs (Hydra would print a traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class SweepConfigLoader:
    """Hydra's config loader for a sweep's jobs, deriving a job's config from an earlier one's.

    Hydra composes every job of a sweep from scratch (~0.15 s: the defaults tree, every yaml
    file, the schema; the main job's 120 runs spent about as long composing as training). Two
    jobs whose overrides differ only in the values of plain ``key=value`` overrides of config
    keys (``optimizer.lr=0.1`` / ``optimizer.lr=0.2``, ``seed=0`` / ``seed=1``) compose to the
    same config but for those values and the two fields Hydra computes from the overrides
    (``hydra.overrides.task``, ``hydra.job.override_dirname``). So the first job of each *shape*
    is composed by Hydra and kept as a template; the next ones are a copy of it with those
    values set as Hydra sets them (``OmegaConf.update(..., merge=True)`` on the struct config).
    Config groups (``optimizer=nesterov``), ``hydra.*``, ``+``/``~``/``++`` overrides and list
    or dict values always go to Hydra; so does any job whose value does not fit (a type error
    then comes from Hydra, as before). tests/test_config.py checks that derived configs equal
    Hydra's for every job of the main job and of grids mixing those cases.

    It wraps the loader Hydra hands the sweeper (:class:`hydra.core.config_loader.ConfigLoader`,
    Hydra's public interface for it); the launchers get it through the sweeper's
    ``HydraContext`` and pickle it to their workers with the templates composed so far.
    (It lives here, not in bpexp.config, which imports this module to register the sweeper.)
    """

    MAX_TEMPLATES = 64

    def __init__(self, loader) -> None:
        self.loader = loader
        self.templates: dict[tuple, tuple[list, DictConfig]] = {}
        self.derived = 0  # jobs derived from a template (the others were composed by Hydra)

    def __getattr__(self, name: str):  # the rest of Hydra's ConfigLoader interface
        if name in ("loader", "templates", "derived"):
            raise AttributeError(name)
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]):
        overrides = list(sweep_overrides)
        try:
            shape, parsed = self._shape(master_config, overrides)
        except Exception:  # noqa: BLE001 - Hydra parses it again and says what is wrong
            shape, parsed = None, None
        if shape is not None and shape in self.templates:
            template_overrides, template = self.templates[shape]
            try:
                cfg = self._derive(master_config, template, template_overrides, parsed)
                self.derived += 1
                return cfg
            except Exception:  # noqa: BLE001 - Hydra composes it and names what is wrong
                pass
        cfg = self.loader.load_sweep_config(master_config, overrides)
        if shape is not None and len(self.templates) < self.MAX_TEMPLATES:
            self.templates[shape] = (parsed, copy.deepcopy(cfg))
        return cfg

    def _shape(self, master_config: DictConfig, overrides: list[str]):
        """``(shape, parsed overrides)``: the shape is the overrides with the values of the
        derivable ones left out; ``None`` when nothing can be derived (a sweep override)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        groups = set(master_config.hydra.runtime.choices)
        shape = []
        for o in parsed:
            if o.is_sweep_override():
                return None, None
            shape.append(("value", o.key_or_group) if self._derivable(o, groups) else o.input_line)
        return tuple(shape), parsed

    @staticmethod
    def _derivable(override, groups: set[str]) -> bool:
        key = override.key_or_group
        plain = not (override.is_add() or override.is_force_add() or override.is_delete())
        return (
            plain
            and override.package is None
            and key not in groups
            and not key.startswith("hydra")
            and not isinstance(override.value(), (dict, list))
        )

    @staticmethod
    def _derive(master_config, template, template_overrides, parsed) -> DictConfig:
        cfg = copy.deepcopy(template)
        for old, new in zip(template_overrides, parsed, strict=True):
            if old.input_line != new.input_line:
                OmegaConf.update(cfg, new.key_or_group, new.value(), merge=True)
        task = [o for o in parsed if not o.is_hydra_override()]
        cfg.hydra.overrides.task = [o.input_line for o in task]
        # As hydra._internal.config_loader_impl.get_overrides_dirname computes it.
        dirname = cfg.hydra.job.config.override_dirname
        lines = sorted(o.input_line for o in task if o.key_or_group not in dirname.exclude_keys)
        cfg.hydra.job.override_dirname = re.sub("=", dirname.kv_sep, dirname.item_sep.join(lines))
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg


class BpexpSweeper(Sweeper):
    # Not a subclass of Hydra's BasicSweeper: Hydra's plugin scan executes that module a second
    # time, and a subclass of the first class object then fails in its __init__.
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        protocol: DictConfig | None = None,
    ) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.protocol_settings = protocol
        self.job_idx = 0
        self._composed: set[str] = set()  # overrides already composed once (see below)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins
        from hydra.types import HydraContext

        # Jobs that differ only in values are derived from one composed job (SweepConfigLoader).
        hydra_context = HydraContext(
            config_loader=SweepConfigLoader(hydra_context.config_loader),
            callbacks=hydra_context.callbacks,
        )
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def validate_batch_is_legal(self, batch) -> None:
        """Compose, before the batch runs, each job that brings an override not composed yet.

        Hydra's own check composes every job of the batch, and the launcher then composes each
        job again: two compositions a job, most of a short job's time (the main job's 120 runs:
        ~0.15 s each). Jobs differ only by their overrides, applied to one base config in which
        every key exists under every option, so an override that composes in one job composes
        in all: composing each distinct override once finds the same errors. A number for a
        config key (not a config group) that composed with a number of the same kind (an
        integer, or a float) composes too: composition checks a value's type, not its range
        (bpexp.config.validate does, in the job). So the main job composes 3 jobs here, not 31
        (``optimizer.lr=4.39`` once one lr composed; ``seed=100`` once ``seed=0`` did). (A key
        that some option of a group lacks would fail only in the jobs combining the two, as
        that job.)
        """
        fresh = []
        for overrides in batch:
            new = {o for o in overrides if self._covered(o) is None}
            if new:
                fresh.append(overrides)
                for override in overrides:
                    self._composed |= {override, self._kind_marker(override) or override}
        super().validate_batch_is_legal(fresh)

    def _covered(self, override: str) -> str | None:
        """What stands for ``override`` in ``self._composed`` once it or its kind composed:
        itself, or ``key=<int>`` / ``key=<float>`` for a number given to a config key."""
        if override in self._composed:
            return override
        marker = self._kind_marker(override)
        return marker if marker in self._composed else None

    def _kind_marker(self, override: str) -> str | None:
        key, _, value = override.partition("=")
        kind = _number_kind(value)
        groups = self.config.hydra.runtime.choices  # a config group's options are files
        if kind is None or key.lstrip("+~") in groups:
            return None
        return f"{key}=<{kind}>"

    def _parse_config(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.params.items()]

    def sweep(self, arguments: list[str]) -> Any:
        self._check_store()
        if self.protocol_settings is None:
            try:
                return self._grid(arguments)
            except ConfigError as exc:
                _stop(str(exc))
        try:
            settings = OmegaConf.to_container(self.protocol_settings, resolve=True)
            protocol = proto.parse(settings)
            protocol, fixed, arms = self._arms(protocol, arguments)
            arm_configs, workloads = self._check_arms(protocol, fixed, arms)
            self._arm_configs = arm_configs
        except ConfigError as exc:
            _stop(str(exc))
        folder = Path(str(self.config.hydra.sweep.dir)) / "protocol"
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, folder.parent / "multirun.yaml")
        plan = {
            "protocol": protocol.to_dict(),
            "arms": arms,
            "fixed": fixed,
            "runs_per_arm": {"tune": protocol.budget * len(protocol.tune_seeds)},
        }
        if any(w["name"] for w in workloads.values()):
            plan["workloads"] = workloads  # each arm's workload and its target
        (folder / "protocol.json").write_text(json.dumps(plan, indent=2))
        n = len(arms)
        print(
            f"protocol: {n} arms x {protocol.budget} settings x {len(protocol.tune_seeds)} tuning "
            f"seeds, then {n} x {len(protocol.confirm_seeds)} confirm seeds; "
            f"yardstick {protocol.yardstick} ({protocol.direction})",
            flush=True,
        )
        tune_runs = len(arms) * protocol.budget * len(protocol.tune_seeds)
        total = tune_runs + len(arms) * len(protocol.confirm_seeds)
        self._progress = self._open_progress(total, protocol.yardstick, protocol.direction)
        try:
            return self._protocol(protocol, fixed, arms, arm_configs, folder)
        finally:
            self._progress.close()

    def _protocol(self, protocol, fixed, arms, arm_configs, folder: Path) -> list:
        """Tune each arm, choose its setting, confirm it: the protocol's stages."""
        returns = []
        self._progress.set_stage("tune")
        tuned, tune_returns = self._tune(protocol, fixed, arms)
        returns += tune_returns
        tuned.to_csv(folder / "tune.csv", index=False)
        if stop.stopping():  # Ctrl-C or SIGTERM during tuning: no confirm stage
            return returns
        chosen = proto.choose(protocol, tuned)
        settings_of = tuned.drop_duplicates(["arm", "setting"]).set_index(["arm", "setting"])
        for key in protocol.keys:
            chosen[key] = [
                settings_of.loc[(a, s), key]
                for a, s in zip(chosen["arm"], chosen["setting"], strict=True)
            ]
        chosen["effective_step"] = [
            proto.arm_effective_step({k: row[k] for k in protocol.keys}, arm_configs[row["arm"]])
            for _, row in chosen.iterrows()
        ]
        if proto.EFFECTIVE_STEP in protocol.keys:  # the lr each arm's step is
            chosen["optimizer.lr"] = [
                proto.lr_for_step(row[proto.EFFECTIVE_STEP], {**arm_configs[row["arm"]], **row})
                for row in chosen.to_dict("records")
            ]
        chosen.to_csv(folder / "chosen.csv", index=False)
        confirm_jobs = [
            Job(
                arm,
                -1,
                seed,
                [*fixed, *arms[arm], *self._setting(protocol, row, arm), f"seed={seed}"],
                "confirm",
            )
            for arm, row in zip(chosen["arm"], chosen.to_dict("records"), strict=True)
            for seed in protocol.confirm_seeds
        ]
        self._say(f"protocol: confirm stage, {len(confirm_jobs)} runs")
        self._progress.set_stage("confirm")
        results, confirm_returns = self._launch(confirm_jobs)
        returns += confirm_returns
        confirmed = pd.DataFrame(
            [
                self._confirmed(protocol, job, row)
                for job, row in zip(confirm_jobs, results, strict=True)
            ]
        )
        shown = [c for c in chosen.columns if c not in ("setting", "score", "seeds")]
        confirmed = confirmed.merge(chosen[shown], on="arm")
        table = proto.final_table(protocol, confirmed)
        table.insert(1, "yardstick", protocol.yardstick)
        table.to_csv(folder / "final_table.csv", index=False)
        confirmed.to_csv(folder / "confirm.csv", index=False)
        self._progress.close()
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(f"\nprotocol result, ranked by {protocol.yardstick} ({protocol.direction}):")
            print(table.to_string(index=False, float_format="{:.4g}".format))
        return returns

    def _check_store(self) -> None:
        """A store that cannot be used (a server down or asking for a password, a read-only
        folder) stops the sweep before any job, with exit code 2: Hydra only warns when a
        callback raises, and every job would then fail with the same message."""
        if not self.config.tracking.enabled:
            return
        from bpexp import tracking as tr
        from bpexp.errors import TrackingError

        try:
            tr.connect(
                tr.tracking_uri(self.config.tracking.uri), self.config.tracking.timeout_seconds
            )
        except TrackingError as exc:
            _stop(str(exc))

    def _grid(self, arguments: list[str]) -> list:
        """Hydra's basic sweep: every combination of the swept values, in batches; the keys
        swept other than the seed and the settings (:data:`bpexp.jobs.NOT_ARM_KEYS`) make the
        arms."""
        by_key = self._overrides_by_key(arguments)
        arm_keys = jobs.grid_arm_keys([k for k, values in by_key.items() if len(values) > 1])
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        combos = [list(c) for c in itertools.product(*by_key.values())]
        planned = [Job(jobs.arm_label(jobs.arm_overrides(c, arm_keys)), -1, -1, c) for c in combos]
        self._progress = self._open_progress(len(planned), "val/accuracy", None)
        try:
            return self._launch(planned)[1]
        finally:
            self._progress.close()

    def _open_progress(self, total: int, yardstick: str, direction: str | None):
        """The sweep's progress bar or lines, with job lines as ``verbose`` asks
        (:mod:`bpexp.console`)."""
        from bpexp.console import Progress

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        verbose = self.config.get("verbose")
        return Progress(
            sweep_dir,
            total,
            verbose=0 if verbose is None else int(verbose),
            yardstick=yardstick,
            direction=direction,
        )

    def _say(self, text: str) -> None:
        """A line of the sweeper's own, above the progress bar if one is up."""
        progress = getattr(self, "_progress", None)
        if progress is not None:
            progress.say(text)
        else:
            print(text, flush=True)

    def _overrides_by_key(self, arguments: list[str]) -> OrderedDict[str, list[str]]:
        """``params`` and the command line (which wins) as ``{key: ["key=v1", "key=v2"]}``."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        by_key: OrderedDict[str, list[str]] = OrderedDict()
        for override in overrides:
            key = override.get_key_element()
            if override.is_sweep_override():
                if not override.is_discrete_sweep():
                    raise ConfigError(f"{key}: only lists of values (a,b,c) can be swept")
                by_key[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            else:
                by_key[key] = [f"{key}={override.get_value_element_as_str()}"]
        return by_key

    # -------------------------------------------------------------------------- arms

    def _arms(self, protocol: proto.Protocol, arguments: list[str]):
        """``(protocol, fixed overrides, {arm label: its overrides})`` from ``params`` and the
        command line (which wins). A swept key is an arm key, unless it is a search key: then its
        values replace that key's search space."""
        by_key = self._overrides_by_key(arguments)
        if "seed" in by_key:
            raise ConfigError(
                f"seed={','.join(v.split('=', 1)[1] for v in by_key['seed'])}: under a protocol "
                f"the seeds are {proto.KEY}.tune_seeds and {proto.KEY}.confirm_seeds"
            )
        fixed: list[str] = []
        arm_keys: list[tuple[str, list[str]]] = []
        for key, values in by_key.items():
            if key.lstrip("+~") in protocol.keys:
                protocol = proto.with_values(protocol, key.lstrip("+~"), values)
            elif len(values) > 1:
                arm_keys.append((key, values))
            else:
                fixed += values
        combos = itertools.product(*(values for _, values in arm_keys))
        arms = {jobs.arm_label(list(combo)): list(combo) for combo in combos}
        return protocol, fixed, arms

    def _check_arms(self, protocol, fixed, arms) -> dict[str, dict]:
        """Compose one config per arm before anything runs: unknown keys and options fail
        here; search keys must exist; a yardstick must be logged; losses of different costs
        must not rank arms. Returns each arm's ``optimizer.*`` values and its workload (name
        and target)."""
        loader = self.hydra_context.config_loader
        costs, out, workloads = {}, {}, {}
        for arm, overrides in arms.items():
            first = [
                f"{s.key}={s.values[0]}" for s in protocol.search if s.key != proto.EFFECTIVE_STEP
            ]
            try:
                cfg = loader.load_sweep_config(
                    self.config, [*fixed, *overrides, *first, f"seed={protocol.tune_seeds[0]}"]
                )
            except Exception as exc:
                raise ConfigError(f"arm {arm!r} ({' '.join(overrides)}): {exc}") from None
            job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
            # Dotted keys (optimizer.lr) of the arm's config; lists stay values.
            flat = pd.json_normalize(OmegaConf.to_container(job, resolve=True), sep=".")
            flat = flat.iloc[0].to_dict()
            for space in protocol.search:
                if space.key not in flat and space.key != proto.EFFECTIVE_STEP:
                    raise ConfigError(
                        f"{proto.KEY}.search.{space.key}: {space.key!r} is not a config key; "
                        "search keys are keys such as optimizer.lr, optimizer.beta, or "
                        f"{proto.EFFECTIVE_STEP} (the lr follows per arm)"
                    )
            if protocol.yardstick.startswith("val/") and not flat.get("data.val_fraction", 0) > 0:
                raise ConfigError(
                    f"{proto.KEY}.yardstick={protocol.yardstick!r}, but arm {arm!r} has "
                    f"data.val_fraction={flat.get('data.val_fraction')}: its runs log no "
                    "val/ metrics; use train/accuracy or train/loss"
                )
            costs[arm] = flat["cost.name"]
            out[arm] = {k: v for k, v in flat.items() if k.startswith("optimizer.")}
            workloads[arm] = {
                "name": flat.get("workload.name"),
                "target": flat.get("workload.target"),
            }
        if protocol.yardstick.endswith("/loss") and len(set(costs.values())) > 1:
            raise ConfigError(
                f"{proto.KEY}.yardstick={protocol.yardstick!r} would rank arms with different "
                f"costs ({', '.join(sorted(set(costs.values())))}) by their losses, which are "
                "different quantities; use val/accuracy"
            )
        return out, workloads

    def _setting(self, protocol, values: dict, arm: str) -> list[str]:
        return proto.setting_overrides(protocol, values, self._arm_configs[arm])

    # -------------------------------------------------------------------------- stages

    def _launch(self, planned: list[Job]) -> tuple[list[jobs.JobResult], list]:
        """Run ``planned`` through the launcher (in batches of ``max_batch_size``), each with its
        plan written first; their results, in order (a job that raised gives ``failed``)."""
        results, returns = [], []
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        size = self.max_batch_size or len(planned) or 1
        for start in range(0, len(planned), size):
            part = planned[start : start + size]
            batch = [job.overrides for job in part]
            self.validate_batch_is_legal(batch)
            jobs.write_plans(sweep_dir, self.job_idx, [jobs.JobPlan(j.arm, j.stage) for j in part])
            launched = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            returns.append(launched)
            for i, r in enumerate(launched):
                ok = r.status == JobStatus.COMPLETED and isinstance(r.return_value, jobs.JobResult)
                results.append(r.return_value if ok else jobs.JobResult(self.job_idx + i))
            self.job_idx += len(batch)
        return results, returns

    def _tune(self, protocol, fixed, arms):
        if protocol.sampler == "tpe":
            return self._tune_tpe(protocol, fixed, arms)
        settings = proto.grid(protocol)
        planned = [
            Job(
                arm,
                i,
                seed,
                [*fixed, *overrides, *self._setting(protocol, s, arm), f"seed={seed}"],
                "tune",
            )
            for arm, overrides in arms.items()
            for i, s in enumerate(settings)
            for seed in protocol.tune_seeds
        ]
        self._say(f"protocol: tune stage, {len(planned)} runs")
        rows, returns = self._launch(planned)
        frame = pd.DataFrame(
            [
                self._tuned(protocol, job, settings[job.setting], row)
                for job, row in zip(planned, rows, strict=True)
            ]
        )
        return frame, [returns]

    def _tune_tpe(self, protocol, fixed, arms):
        try:
            import optuna
        except ImportError:
            raise ConfigError(
                f"{proto.KEY}.sampler='tpe' needs Optuna: pip install 'bpexp[optuna]'"
            ) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        studies = {
            arm: optuna.create_study(
                direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=protocol.sampler_seed + i),
            )
            for i, arm in enumerate(arms)
        }
        frames, returns = [], []
        self._say(f"protocol: tune stage (TPE), {protocol.budget} rounds")
        for round_ in range(protocol.budget):
            if stop.stopping():
                break
            trials, planned, settings = {}, [], {}
            for arm, overrides in arms.items():
                trial = studies[arm].ask()
                setting = {}
                for space in protocol.search:
                    if space.low is None:
                        value = trial.suggest_categorical(space.key, list(space.values))
                    else:
                        value = trial.suggest_float(space.key, space.low, space.high, log=space.log)
                    setting[space.key] = float(f"{value:.3g}")
                trials[arm], settings[arm] = trial, setting
                planned += [
                    Job(
                        arm,
                        round_,
                        s,
                        [*fixed, *overrides, *self._setting(protocol, setting, arm), f"seed={s}"],
                        "tune",
                    )
                    for s in protocol.tune_seeds
                ]
            rows, batch_returns = self._launch(planned)
            returns.append(batch_returns)
            frame = pd.DataFrame(
                [
                    self._tuned(protocol, j, settings[j.arm], row)
                    for j, row in zip(planned, rows, strict=True)
                ]
            )
            for arm, trial in trials.items():
                mean = frame.loc[frame["arm"] == arm, "score"].mean()
                # Optuna wants finite values: a diverged setting gets a value below any real one.
                studies[arm].tell(trial, mean if math.isfinite(mean) else -1e300)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True), returns

    @staticmethod
    def _tuned(protocol, job: Job, setting: dict, result: jobs.JobResult) -> dict:
        value = result.value(protocol.yardstick)
        return {
            "arm": job.arm,
            "setting": job.setting,
            **setting,
            "seed": job.seed,
            "outcome": result.outcome,
            protocol.yardstick: value,
            proto.TIE_BREAK: result.value(proto.TIE_BREAK),
            "score": proto.score(protocol, result.outcome, value),
            "run_id": result.run_id,
        }

    @staticmethod
    def _confirmed(protocol, job: Job, result: jobs.JobResult) -> dict:
        epochs = math.inf
        if protocol.target is not None and result.curve:
            epochs = proto.time_to_target(
                range(len(result.curve)), result.curve, protocol.target, protocol.direction
            )
        steps_per_epoch = result.steps_per_epoch or math.nan
        return {
            "arm": job.arm,
            "seed": job.seed,
            "outcome": result.outcome,
            "value": result.value(protocol.yardstick),
            "epochs_to_target": epochs,
            "steps_to_target": epochs * steps_per_epoch if math.isfinite(epochs) else math.inf,
            "run_id": result.run_id,
        }
