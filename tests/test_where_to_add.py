"""docs/where-to-add.md, followed: each recipe is performed in a copy of the repository and its
result must appear.

Every test copies ``bpexp/``, ``conf/``, ``sweeps/``, ``hydra_plugins/`` and ``pyproject.toml``
into a temporary folder (as tests/test_mutants.py does), makes there the edits a recipe names,
and nothing else, then runs ``python -m bpexp`` (or ``python -c`` against ``bpexp``) in a fresh
folder with ``PYTHONPATH`` pointing at the copy. A recipe step that is missing or wrong in the
doc shows up here as a run that fails or a result that does not appear. When the code around an
edit moves, the edit fails with "recipe site not found": update the site, and the recipe if the
place it names has changed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

COPIED = ("bpexp", "conf", "sweeps", "hydra_plugins", "pyproject.toml")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """This checkout's package, configuration, sweeps and sweeper, copied into tmp_path/repo;
    the copy is what ``python`` imports in :func:`run_python` and :func:`run_bpexp`."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, repo / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, repo / name)
    (tmp_path / "run").mkdir()
    check = (
        "import bpexp, hydra_plugins.bpexp_sweeper.bpexp_sweeper as s; "
        "print(bpexp.__file__); print(s.__file__)"
    )
    where = run_python(repo, check)
    assert where.returncode == 0, where.stderr[-3000:]
    for line in where.stdout.split():
        assert Path(line).is_relative_to(repo), where.stdout  # the copy is what runs
    return repo


def _env(repo: Path) -> dict[str, str]:
    return cli_env(PYTHONPATH=str(repo), PYTHONDONTWRITEBYTECODE="1")


def run_bpexp(repo: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m bpexp ARGS`` against the copy, in the fresh folder beside it."""
    return subprocess.run(
        [sys.executable, "-m", "bpexp", *args],
        cwd=repo.parent / "run",
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_python(repo: Path, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c CODE`` against the copy, in the fresh folder beside it."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=repo.parent / "run",
        env=_env(repo),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def printed_json(proc: subprocess.CompletedProcess) -> dict:
    """The last line of a ``python -c`` script's output, a JSON object."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def edit(repo: Path, file: str, site: str, text: str, where: str = "after") -> None:
    """Put ``text`` before, after or over ``site``, which must occur exactly once in ``file``."""
    path = repo / file
    source = path.read_text()
    assert source.count(site) == 1, f"recipe site not found once in {file}: {site!r}"
    new = {"after": site + text, "before": text + site, "over": text}[where]
    path.write_text(source.replace(site, new))


def append(repo: Path, file: str, text: str) -> None:
    path = repo / file
    path.write_text(path.read_text().rstrip("\n") + "\n\n\n" + textwrap.dedent(text).lstrip())


def finished(proc: subprocess.CompletedProcess, epochs: int = 1) -> str:
    """The output of a run that trained: exit 0 and its closing line printed."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"completed after {epochs} epochs" in proc.stdout, output[-4000:]
    return proc.stdout


# ------------------------------------------------------------------------ a new update rule

# Step 1: one class beside Sgd, with buffers, gradient_scale, update, effective_step and
# sharpness_threshold, hyperparameters read off opt in __init__.
DOUBLE_SGD = '''
class DoubleSgd:
    """w ← w − 2η g: SGD at twice the learning rate (a dummy rule of the recipe's test)."""

    buffers = ()

    def __init__(self, opt: Optimizer) -> None:
        self.gradient_scale = -2.0 * opt.lr
        self.effective_step = 2.0 * opt.lr
        self.sharpness_threshold = 1.0 / opt.lr  # w' = (1 − 2h) w: stable iff h < 1

    def update(self, w: Array, s: Array, state: State) -> None:
        w += s  # s = −2η g


'''


def add_double_sgd(repo: Path) -> None:
    """The recipe "A new update rule", steps 1 and 3 (step 2: no new hyperparameter)."""
    edit(repo, "bpexp/optimizer.py", "class Momentum:", DOUBLE_SGD.lstrip("\n"), where="before")
    edit(repo, "bpexp/optimizer.py", '"sgd": Sgd,\n', '    "double_sgd": DoubleSgd,\n')
    # Step 3: it reads no beta, so a report shows no best beta for it.
    edit(repo, "bpexp/report.py", '["sgd", "rmsprop"]', '["sgd", "rmsprop", "double_sgd"]', "over")
    (repo / "conf/optimizer/double_sgd.yaml").write_text(
        "# w ← w − 2 lr g: SGD at twice the learning rate (double_sgd(lr) == sgd(2 lr))\n"
        "name: double_sgd\n"
        "lr: 1.5\n"
    )


def test_a_new_update_rule_trains_and_equals_sgd_at_twice_the_lr(copy):
    add_double_sgd(copy)
    out = finished(
        run_bpexp(copy, "optimizer=double_sgd", "trainer.epochs=1", "tracking.enabled=false")
    )
    assert "epoch 1/1" in out

    numbers = printed_json(
        run_python(
            copy,
            """
            import json
            import numpy as np
            import pandas as pd
            import bpexp
            from bpexp.app import compose
            from bpexp.report import display_table
            from bpexp.optimizer import Optimizer, effective_step, sharpness_threshold

            def final(*overrides):
                run = bpexp.run([*overrides, "trainer.epochs=1", "tracking.enabled=false"])
                assert run.outcome == "completed", run.outcome
                return run.weights

            def distance(a, b):
                return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)

            double = final("optimizer=double_sgd", "optimizer.lr=0.75")
            comparison = pd.DataFrame({
                "arm": ["momentum", "double_sgd"], "optimizer.name": ["momentum", "double_sgd"],
                "optimizer.beta": [0.9, 0.9], "seeds": 2, "runs": 2, "diverged": 0, "failed": 0,
            })
            print(json.dumps({
                "vs_sgd_at_2lr": distance(double, final("optimizer=sgd", "optimizer.lr=1.5")),
                "vs_sgd_at_lr": distance(double, final("optimizer=sgd", "optimizer.lr=0.75")),
                "effective_step": effective_step("double_sgd", "classical", 0.75, 0.9),
                "threshold": sharpness_threshold(Optimizer("double_sgd", 0.75)),
                "default_lr": float(compose(["optimizer=double_sgd"]).optimizer.lr),
                "best_beta": display_table(comparison, ["optimizer.beta"], paired=False)[
                    "best optimizer.beta"
                ].tolist(),
            }))
            """,
        )
    )
    assert numbers["vs_sgd_at_2lr"] == 0.0, numbers  # w − 2ηg is SGD at 2η, bit for bit
    assert numbers["vs_sgd_at_lr"] > 1e-3, numbers  # and not SGD at η
    assert numbers["effective_step"] == 1.5
    assert numbers["threshold"] == pytest.approx(1 / 0.75)
    assert numbers["default_lr"] == 1.5  # conf/optimizer/double_sgd.yaml is the group's option
    assert numbers["best_beta"] == ["0.9", ""]  # no beta shown for a rule that reads none


# -------------------------------------------------------------------------- a new instrument


def add_my_metric(repo: Path) -> None:
    """The recipe "A new instrument", step 1: one line inside the per-layer loop of measure."""
    path = repo / "bpexp/instruments.py"
    source = path.read_text()
    start = source.index("\ndef measure(")
    loop = re.compile(r"^( *)for l in range\(1, net\.n_layers \+ 1\):\n", re.MULTILINE)
    found = loop.search(source, start)
    assert found, "recipe site not found: the per-layer loop of instruments.measure"
    indent = found.group(1) + "    "
    line = f'{indent}out[f"my_metric/{{l}}"] = 2.0 * _norm(net.gW[l - 1])\n'
    path.write_text(source[: found.end()] + line + source[found.end() :])


def test_a_new_instrument_is_in_the_history_and_the_store(copy):
    add_my_metric(copy)
    uri = f"sqlite:///{copy.parent / 'run' / 'mlflow.db'}"
    numbers = printed_json(
        run_python(
            copy,
            f"""
            import json
            import bpexp
            from bpexp import analysis

            run = bpexp.run(["trainer.epochs=2", "tracking.uri={uri}"])
            frame = run.history
            mine = sorted(c for c in frame.columns if c.startswith("my_metric/"))
            stored = analysis.history([run.run_id], ["my_metric/*"], tracking_uri="{uri}")
            print(json.dumps({{
                "columns": mine,
                "mine": {{c: frame[c].tolist() for c in mine}},
                "grad_norm": {{c: frame["grad_norm/W" + c[-1]].tolist() for c in mine}},
                "stored": sorted(
                    [r.metric, int(r.step), r.value] for r in stored.itertuples()
                ),
            }}))
            """,
        )
    )
    # Every layer of the default 64-30-10 network, at every epoch, computed where it says.
    assert numbers["columns"] == ["my_metric/1", "my_metric/2"]
    for column in numbers["columns"]:
        assert len(numbers["mine"][column]) == 3  # epochs 0, 1, 2
        twice = [2.0 * g for g in numbers["grad_norm"][column]]
        assert numbers["mine"][column] == pytest.approx(twice, rel=1e-12)
    # Step 3: nothing else is needed to track it; analysis.history reads it back per epoch.
    expected = sorted(
        [column, epoch, value]
        for column in numbers["columns"]
        for epoch, value in enumerate(numbers["mine"][column])
    )
    assert [row[:2] for row in numbers["stored"]] == [row[:2] for row in expected]
    stored = [row[2] for row in numbers["stored"]]
    assert stored == pytest.approx([row[2] for row in expected], rel=1e-12)


# ------------------------------------------------------------------------------ a new figure

MY_FIGURE = '''
@section(lambda ctx: len(ctx.answering) > 0)
def my_figure(ctx: Context) -> list[Section]:
    """A dummy figure of the recipe's test: the final yardstick of each answering run."""
    finals = ctx.curves[ctx.curves["metric"] == ctx.metric].groupby("run_id")["value"].last()
    ax = plots.new_axes(5, 3)
    ax.plot(range(len(finals)), finals.to_numpy(), "o")
    ax.set_xlabel("answering run")
    ax.set_ylabel(f"final {ctx.metric}")
    caption = f"My figure's caption: final {ctx.metric} of {len(finals)} answering runs."
    return [Section("My figure", "my_figure.png", ax.figure, [caption])]
'''


def test_a_new_figure_is_in_the_sweep_report(copy):
    append(copy, "bpexp/figures.py", MY_FIGURE)
    uri = f"sqlite:///{copy.parent / 'run' / 'mlflow.db'}"
    proc = run_bpexp(copy, "-m", "seed=0,1", "trainer.epochs=1", f"tracking.uri={uri}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (report,) = (copy.parent / "run").glob("multirun/*/*/report")
    caption = "My figure's caption: final val/accuracy of 2 answering runs."
    assert (report / "my_figure.png").is_file()
    markdown = (report / "index.md").read_text()
    assert "### My figure\n" in markdown
    assert "![My figure](my_figure.png)" in markdown
    assert caption in markdown
    html = (report / "index.html").read_text()
    assert "<h3>My figure</h3>" in html
    assert caption.replace("'", "&#39;") in html
    png = base64.b64encode((report / "my_figure.png").read_bytes()).decode("ascii")
    assert png in html  # the figure itself, embedded


# ------------------------------------------------------------------------------- a new sweep

MY_SWEEP = """\
# @package _global_
# Question: does a dummy grid of the recipe's test run? Compare val/accuracy across the lrs.
trainer:
  epochs: 1
hydra:
  mode: MULTIRUN
  sweeper:
    params:
      optimizer.lr: 1.0,3.0
      seed: 0
"""


def test_a_new_sweep_runs_its_jobs_and_is_a_known_name(copy):
    (copy / "sweeps/sweep/mysweep.yaml").write_text(MY_SWEEP)
    proc = run_bpexp(copy, "sweep=mysweep")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    (summary,) = (copy.parent / "run").glob("multirun/*/*/summary.csv")
    jobs = pd.read_csv(summary)
    assert sorted(jobs["outcome"]) == ["completed", "completed"]
    assert sorted(jobs["overrides"]) == [
        f"optimizer.lr={lr} seed=0 sweep=mysweep" for lr in ("1.0", "3.0")
    ]
    assert (jobs["epochs"] == 1).all()
    # Step 2: at its end the report is written into the sweep folder.
    index = summary.parent / "report" / "index.md"
    assert index.read_text().startswith("# Sweep mysweep\n")

    misspelt = run_bpexp(copy, "sweep=mysweeq")
    assert misspelt.returncode == 2, misspelt.stdout + misspelt.stderr
    allowed = re.search(r"allowed: (.*) \(named sweeps in sweeps/sweep/\)", misspelt.stderr)
    assert allowed, misspelt.stderr
    assert "mysweep" in allowed.group(1).split(", ")


# --------------------------------------------------------------------------- a new data set

MY_LOADER = '''
def _load_mydata(request: _Request) -> _Source:
    """A dummy data set of the recipe's test: X and integer labels y of an .npz file."""
    if request.path is None:
        raise bad_value("data.path", None, "the .npz file of mydata")

    def problem(message: str) -> ConfigError:
        return ConfigError(f"data.path={request.path!r}: {message}")

    arrays = read_npz(Path(request.path), problem)
    return _Source(arrays["X"], _one_hot(arrays["y"], 2), None, None, CLASSIFICATION)


'''


def add_mydata(repo: Path) -> None:
    """The recipe "A new data set", steps 1 to 4 (the file read through datafiles.read_npz)."""
    path = repo / "bpexp/data.py"
    source = path.read_text()
    datasets = re.compile(r"^DATASETS = \(([^)]*)\)", re.MULTILINE)
    assert len(datasets.findall(source)) == 1, "recipe site not found: DATASETS"
    source = datasets.sub(
        lambda m: f'DATASETS = ({m.group(1).rstrip().rstrip(",")}, "mydata")', source
    )
    path.write_text(source)
    edit(repo, "bpexp/data.py", "\n_LOADERS:", MY_LOADER, where="before")
    loaders = re.search(r"^_LOADERS\b.*\{\n", path.read_text(), re.MULTILINE)
    assert loaders, "recipe site not found: _LOADERS"
    edit(repo, "bpexp/data.py", loaders.group(0), '    "mydata": _load_mydata,\n')
    (repo / "conf/data/mydata.yaml").write_text(
        "# The recipe's dummy data set: 3 inputs, 2 classes by the sign of the first input,\n"
        "# read from the .npz file given as data.path.\n"
        "name: mydata\n"
        "val_fraction: 0.1\n"
        "test_fraction: 0.2\n"
    )


def test_a_new_data_set_loads_splits_and_trains(copy):
    add_mydata(copy)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(60, 3))
    file = copy.parent / "mydata.npz"
    np.savez(file, X=X, y=(X[:, 0] > 0).astype(np.int64))

    args = ("data=mydata", f"data.path={file}", "trainer.epochs=1", "tracking.enabled=false")
    out = finished(run_bpexp(copy, *args))
    assert "test/accuracy" in out

    shapes = printed_json(
        run_python(
            copy,
            f"""
            import json
            import numpy as np
            from bpexp.app import build, compose

            exp = build(compose({list(args)!r}))
            d = exp.data
            rows = np.concatenate([d.X_train, d.X_val, d.X_test])
            print(json.dumps({{
                "name": d.name, "task": d.task, "inputs": d.n_inputs, "outputs": d.n_outputs,
                "parts": [len(d.X_train), len(d.X_val), len(d.X_test)],
                "rows": sorted(map(list, rows)),
                "sizes": [exp.net.sizes[0], exp.net.sizes[-1]],
            }}))
            """,
        )
    )
    assert shapes["name"] == "mydata" and shapes["task"] == "classification"
    assert (shapes["inputs"], shapes["outputs"]) == (3, 2)
    assert shapes["parts"] == [43, 5, 12]  # test 20% of 60, then validation 10% of the rest
    assert shapes["rows"] == sorted(map(list, X))  # every sample once, in one of the parts
    assert shapes["sizes"] == [3, 2]  # the network takes its input and output sizes from it

    missing = run_bpexp(copy, "data=mydata", "trainer.epochs=1", "tracking.enabled=false")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "data.path" in missing.stderr
