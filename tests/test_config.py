"""Every option of every config group and every sweep file composes, with the keys we rely on."""

from __future__ import annotations

import copy
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from bpexp import config
from bpexp.app import build
from bpexp.errors import ConfigError
from bpexp.optimizer import Optimizer
from hydra_plugins.bpexp_sweeper.bpexp_sweeper import SweepConfigLoader

GROUPS = ["network", "cost", "optimizer", "data", "trainer", "tracking"]
SWEEPS = sorted(p.stem for p in (config.SWEEPS_DIR / "sweep").glob("*.yaml"))
# Keys other parts of the project rely on: their names must not change.
RELIED_ON = [
    "optimizer.name",
    "optimizer.lr",
    "optimizer.beta",
    "optimizer.form",
    "optimizer.bias_correction",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.shuffle",
    "trainer.dtype",
    "seed",
    "data.path",
    "network.hidden",
    "network.activation",
    "network.output_activation",
    "network.init",
    "network.init_path",
    "data.val_fraction",
    "data.test_fraction",
    "tracking.enabled",
    "tracking.experiment",
    "tracking.log_every_n_steps",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config.CONF_DIR / group).glob("*.yaml"))


@pytest.fixture
def composer():
    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        yield lambda overrides, **kw: compose("config", overrides=overrides, **kw)
    GlobalHydra.instance().clear()


def test_groups_mirror_modules():
    for group in GROUPS:
        assert (config.ROOT / "bpexp" / f"{group}.py").is_file(), group
        assert options(group), group


def test_required_options_exist():
    assert {"nielsen", "deep_sigmoid", "deep_relu", "pixels"} <= set(options("network"))
    assert {"sgd", "momentum", "nesterov"} <= set(options("optimizer"))
    assert {"quadratic", "cross_entropy", "softmax_cross_entropy"} <= set(options("cost"))
    assert {"digits", "mnist", "fashion_mnist", "pixels3x4", "moons", "file"} <= set(
        options("data")
    )
    assert {
        "optimizers",
        "momentum_beta",
        "cost_saturation",
        "depth",
        "batch_size",
        "pixels3x4",
        "optimizers_mnist",
    } <= set(SWEEPS)


def test_softmax_cost_switches_the_output_layer(composer):
    assert composer(["cost=softmax_cross_entropy"]).network.output_activation == "softmax"


def test_defaults(composer):
    cfg = composer([])
    flat = config.flatten(cfg)
    for key in RELIED_ON:
        assert key in flat, key
    assert cfg.data.name == "digits" and cfg.cost.name == "quadratic"
    assert cfg.optimizer.name == "sgd" and list(cfg.network.hidden) == [30]
    assert cfg.network.activation == "sigmoid" and cfg.trainer.dtype == "float64"


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(composer, group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "file":
        overrides.append(f"data.path={tmp_path / 'mine.npz'}")
    cfg = composer(overrides)
    typed = config.typed(cfg)
    assert OmegaConf.select(cfg, group) is not None
    # The typed objects hold the composed values: the logged params are the same from either.
    assert list(config.flatten(typed).items()) == list(config.flatten(cfg).items())
    if group == "optimizer":
        assert isinstance(typed.optimizer, Optimizer) and typed.optimizer.name == cfg.optimizer.name
        with pytest.raises(FrozenInstanceError):  # the rule was derived from these fields
            typed.optimizer.lr = 1.0


@pytest.mark.parametrize("name", SWEEPS)
def test_every_sweep_composes(composer, name):
    cfg = composer([f"sweep={name}"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert params, name
    config.typed(composer([f"sweep={name}"]))


def test_optimizers_sweep_is_big_enough(composer):
    from omegaconf import OmegaConf

    from bpexp import protocol

    cfg = composer(["sweep=optimizers"], return_hydra_config=True)
    assert str(cfg.hydra.sweeper.params["optimizer"]).split(",") == ["sgd", "momentum", "nesterov"]
    p = protocol.parse(OmegaConf.to_container(cfg.hydra.sweeper.protocol))
    # The sweep file's promise: 15 learning rates log-spaced from 10^-2.5 to 10^1.5 (neighbours
    # x1.93 apart) on tuning seeds 0 and 1, then 10 fresh confirm seeds: 3 x (15 x 2 + 10) runs.
    lrs = np.array([setting["optimizer.lr"] for setting in protocol.grid(p)])
    assert len(lrs) == 15 and (lrs[0], lrs[-1]) == (0.00316, 31.6)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10 ** (4 / 14), rtol=5e-3)  # 3 digits
    assert p.tune_seeds == (0, 1) and p.confirm_seeds == tuple(range(100, 110))
    assert 3 * (len(lrs) * len(p.tune_seeds) + len(p.confirm_seeds)) == 120


def test_optimizers_mnist_sweep_is_the_books_network_on_an_equal_budget(composer):
    from bpexp import protocol

    cfg = composer(["sweep=optimizers_mnist"], return_hydra_config=True)
    assert str(cfg.hydra.sweeper.params["optimizer"]).split(",") == ["sgd", "momentum", "nesterov"]
    # The book's network and data: 784-30-10 sigmoid, N(0, 1), quadratic cost, batch 10, MNIST
    # split 50,000/10,000 (+ its 10,000 test images).
    assert cfg.data.name == "mnist" and cfg.data.val_fraction == pytest.approx(1 / 6)
    assert list(cfg.network.hidden) == [30] and cfg.network.init == "normal"
    assert cfg.network.activation == cfg.network.output_activation == "sigmoid"
    assert cfg.cost.name == "quadratic" and cfg.trainer.batch_size == 10
    assert cfg.trainer.epochs == 10 and cfg.trainer.sharpness_every == 1
    p = protocol.parse(OmegaConf.to_container(cfg.hydra.sweeper.protocol))
    # The header's promise: 9 learning rates log-spaced from 10^-2.5 to 10^1.5 (x3.16) on
    # tuning seed 0 for every arm, then 10 fresh confirm seeds: 3 x (9 + 10) = 57 runs.
    lrs = np.array([setting["optimizer.lr"] for setting in protocol.grid(p)])
    assert len(lrs) == 9 and (lrs[0], lrs[-1]) == (0.00316, 31.6)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], 10**0.5, rtol=5e-3)  # 3 digits
    # Momentum's effective step lr / (1 - 0.9) at lr eta / 10 is SGD's at eta: 7 matched pairs.
    assert sum(np.isclose(10 * lrs, lr).any() for lr in lrs) == 7
    assert p.tune_seeds == (0,) and p.confirm_seeds == tuple(range(100, 110))
    assert not set(p.tune_seeds) & set(p.confirm_seeds)
    assert 3 * (len(lrs) * len(p.tune_seeds) + len(p.confirm_seeds)) == 57


def test_sweep_files_are_global_packages():
    for name in SWEEPS:
        text = (config.SWEEPS_DIR / "sweep" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name


def test_pixels_sweep_builds_the_12_pixel_network(composer):
    exp = build(composer(["sweep=pixels3x4"]))
    assert exp.net.sizes == (12, 3, 2)
    assert exp.data.X_train.shape == (64, 12) and exp.cfg.trainer.batch_size is None  # full batch


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["optimizer=momentum", "optimizer.beta=1.5"], "optimizer.beta"),
        (["trainer.batch_size=0"], "trainer.batch_size"),
        (["trainer.batch_size=100000"], "trainer.batch_size"),
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.sharpness_every=-1"], "trainer.sharpness_every"),
        (["trainer.sharpness_iterations=0"], "trainer.sharpness_iterations"),
        (["network.init=file"], "network.init_path"),
        (["network.init=file", "network.init_path=/nonexistent.npz"], "network.init_path"),
        (["network.hidden=[30,0]"], "network.hidden[1]"),
        (["network.activation=softmax"], "network.activation"),
        (["cost=cross_entropy", "network.output_activation=softmax"], "cost.name"),
        (["cost=softmax_cross_entropy", "network.output_activation=sigmoid"], "cost.name"),
        (["cost=quadratic", "network.output_activation=softmax"], "cost.name"),
        (["data.val_fraction=1.0"], "data.val_fraction"),
        (["trainer.dtype=float16"], "trainer.dtype"),
        (["optimizer.form=ema"], "optimizer.form"),  # sgd has one form: not silently ignored
        (["optimizer=nesterov", "optimizer.bias_correction=true"], "optimizer.bias_correction"),
        (["optimizer=momentum_ema_bc"], None),
    ],
)
def test_semantic_validation_names_the_key(composer, overrides, key):
    cfg = composer(overrides)
    if key is None:
        build(cfg)
        return
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        build(cfg)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.epochs=two"], "trainer.epochs"),
        (["network.hidden=[abc]"], "network.hidden"),
        (["optimizer.momentum=0.9"], "optimizer.momentum"),
        (["optimizer.lr=fast"], "optimizer.lr"),
    ],
)
def test_schema_rejects_wrong_types_and_unknown_keys(composer, overrides, key):
    with pytest.raises(Exception, match=key):
        composer(overrides)


def test_slurm_launcher_config_composes(composer):
    cfg = composer(["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task == 1


@pytest.mark.slow
def test_wheel_ships_conf_and_sweeps(tmp_path):
    """`pip install .` (not only -e) must find the configs: they travel inside the package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # Build from a copy: an in-tree build would leave build/ in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "bpexp", "conf", "sweeps", "hydra_plugins"):
        copy = shutil.copytree if (config.ROOT / name).is_dir() else shutil.copy
        copy(config.ROOT / name, source / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("bpexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bpexp/conf/config.yaml" in names
    for group in GROUPS:
        for option in options(group):
            assert f"bpexp/conf/{group}/{option}.yaml" in names
    for name in SWEEPS:
        assert f"bpexp/sweeps/sweep/{name}.yaml" in names


@pytest.mark.parametrize(
    ("overrides", "group", "value"),
    [
        (["sweep=optimisers"], "sweep", "optimisers"),
        (["+sweep=optimisers"], "sweep", "optimisers"),
        (["sweep=optimizers,depht"], "sweep", "depht"),
        (["optimizer=choice(sgd,nesterv)"], "optimizer", "nesterv"),
        (["network.hidden=[5]", "data=digit"], "data", "digit"),
        (["optimizer=glob(zz*)"], "optimizer", "glob(zz*)"),
    ],
)
def test_an_unknown_group_option_names_the_options(overrides, group, value):
    with pytest.raises(ConfigError) as caught:
        config.check_options(overrides)
    message = str(caught.value)
    assert message.startswith(f"{group}={value!r} is not allowed"), message
    folder = config.SWEEPS_DIR / "sweep" if group == "sweep" else config.CONF_DIR / group
    for option in sorted(p.stem for p in folder.glob("*.yaml")):
        assert option in message


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["sweep=null", "~sweep"],
        ["-m", "sweep=optimizers", "optimizer=sgd,nesterov", "optimizer.lr=0.1,1.0"],
        ["optimizer=choice(sgd,adam)", "cost=glob(*cross*)", "optimizer@other=sgd"],
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "network.hidden=[30,30]"],
        ["--cfg", "job", "seed=range(3)", "force=true"],
        ["optimizer=(", "sweep="],  # a syntax error is left to Hydra's own message
    ],
)
def test_known_options_and_other_overrides_pass(overrides):
    config.check_options(overrides)


def test_run_from_python_refuses_an_unknown_sweep_too():
    import bpexp

    with pytest.raises(ConfigError, match="sweep='optimisers'"):
        bpexp.run(["sweep=optimisers", "tracking.enabled=false"])


def test_a_layer_too_wide_for_memory_is_refused_naming_the_key(composer):
    """Issue 28, defect 6: network.hidden=[1000000000] crashed with a raw MemoryError; the
    network's parameters are checked against the machine's memory before they are allocated."""
    from bpexp.app import build
    from bpexp.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"network\.hidden: a network of sizes \[64, 1000000000, 10\]"
    ):
        build(composer(["network.hidden=[1000000000]"]))
    assert build(composer(["network.hidden=[300]"])).net.sizes == (64, 300, 10)


# ---------------------------------------------------------------------- SweepConfigLoader

# Jobs as a sweep hands them to the launcher, in order: the main job's shape, then values the
# loader derives (numbers, null, a quoted string, an interpolation) and cases it must leave to
# Hydra (lists, config groups, hydra.*, + overrides).
LRS = ["0.00316", "0.0848", "4.39", "31.6"]
JOBS = [
    ["sweep=optimizers", f"optimizer={arm}", f"optimizer.lr={lr}", f"seed={seed}"]
    for arm in ("sgd", "momentum", "nesterov")
    for lr in LRS
    for seed in (0, 1, 100)
] + [
    ["optimizer=momentum", "optimizer.beta=0.5", "data.n_samples=null", "trainer.epochs=3"],
    ["optimizer=momentum", "optimizer.beta=0.9", "data.n_samples=100", "trainer.epochs=${seed}"],
    ["optimizer=momentum", "optimizer.beta=0.99", "data.n_samples=7", "trainer.epochs=4"],
    ["tracking.experiment=a", "network.hidden=[10]", "hydra.job.chdir=false"],
    ["tracking.experiment='a b'", "network.hidden=[20,5]", "hydra.job.chdir=false"],
    ["tracking.experiment=c", "network.hidden=[20,5]", "hydra.job.chdir=false"],
    ["tracking.experiment=c", "network.hidden=[20,5]", "hydra.job.chdir=true"],
    ["+trainer.extra=1", "seed=3"],
    ["+trainer.extra=2", "seed=4"],
]


@pytest.fixture
def loaders():
    """Hydra's own config loader and a SweepConfigLoader around another one, with the master
    config of ``python -m bpexp -m`` (its resolved-once values cached, as in a sweep)."""
    from hydra.types import RunMode

    config.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.CONF_DIR), version_base="1.3"):
        hydra_loader = GlobalHydra.instance().config_loader()
        master = hydra_loader.load_configuration("config", [], run_mode=RunMode.MULTIRUN)
        yield master, hydra_loader, SweepConfigLoader(hydra_loader)
    GlobalHydra.instance().clear()


def _described(cfg) -> tuple:
    """Everything a job sees of its config: every value (unresolved), the node types and flags."""

    def types(node, prefix=""):
        out = {}
        for key in node:
            child = node._get_node(key)
            out[prefix + str(key)] = (type(child).__name__, OmegaConf.get_type(node, key))
            if OmegaConf.is_dict(child) and not child._is_missing() and not child._is_none():
                out.update(types(child, f"{prefix}{key}."))
        return out

    flags = [(OmegaConf.is_struct(n), OmegaConf.is_readonly(n)) for n in (cfg, cfg.hydra)]
    return OmegaConf.to_container(cfg, resolve=False), types(cfg), flags, OmegaConf.to_yaml(cfg)


def _task(cfg):
    """The config a job's task function gets: the hydra node removed, as Hydra's run_job does."""
    from omegaconf import open_dict, read_write

    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def test_sweep_config_loader_derives_the_same_configs_as_hydra(loaders):
    master, hydra_loader, loader = loaders
    for overrides in JOBS:
        expected = hydra_loader.load_sweep_config(master, overrides)
        derived = loader.load_sweep_config(master, overrides)
        assert _described(derived) == _described(expected), overrides
        assert config.typed(_task(derived)) == config.typed(_task(expected))
    # One template per shape: the main job's 36 jobs came from its 3 arms, the 3 value jobs
    # from one; a list, a hydra.* or a + override is part of the shape, composed by Hydra.
    shapes = list(loader.templates)
    assert len([s for s in shapes if "sweep=optimizers" in s]) == 3
    assert len(shapes) == 3 + 1 + 3 + 2
    assert loader.derived == len(JOBS) - len(shapes) == 36


def test_sweep_config_loader_hands_out_copies(loaders):
    master, _, loader = loaders
    first = loader.load_sweep_config(master, ["optimizer.lr=0.5", "seed=1"])
    second = loader.load_sweep_config(master, ["optimizer.lr=0.25", "seed=2"])
    first.optimizer.lr = 99.0  # a launcher writes into its job's config (hydra.job.num, ...)
    third = loader.load_sweep_config(master, ["optimizer.lr=0.5", "seed=1"])
    assert (second.optimizer.lr, second.seed, third.optimizer.lr, third.seed) == (0.25, 2, 0.5, 1)
    assert list(third.hydra.overrides.task) == ["optimizer.lr=0.5", "seed=1"]
    assert third.hydra.job.override_dirname == "optimizer.lr=0.5,seed=1"


@pytest.mark.parametrize(
    "bad",
    [
        ["optimizer.lr=abc", "seed=1"],
        ["optimizer.lr=0.1", "seed=1.5"],
        ["optimizer.lr=0.1", "seed=x"],
    ],
)
def test_sweep_config_loader_leaves_bad_values_to_hydras_own_error(loaders, bad):
    from hydra.errors import ConfigCompositionException

    master, hydra_loader, loader = loaders
    loader.load_sweep_config(master, ["optimizer.lr=0.5", "seed=1"])  # the template
    with pytest.raises(ConfigCompositionException) as hydra_error:
        hydra_loader.load_sweep_config(master, bad)
    with pytest.raises(ConfigCompositionException) as derived_error:
        loader.load_sweep_config(master, bad)
    assert str(derived_error.value) == str(hydra_error.value)
