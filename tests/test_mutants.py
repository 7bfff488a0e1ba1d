"""Mutation checks: small deliberate bugs in a copy of bpexp/ that the tests must notice.

Each mutant flips one operator or drops one check, at a site named by its exact source text,
in a copy of the repository in a temporary folder; the tests that guard that site then run
against the copy (``PYTHONPATH`` and the working folder point at it) and must fail. A control
runs the same tests on the unchanged copy and must pass, so a mutant is "caught" only by a
failing assertion, never by a broken environment. When a mutated line is rewritten, its
mutant fails with "mutation site not found": update the mutant with the code.

Run just these: ``python -m pytest tests/test_mutants.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

pytestmark = pytest.mark.slow

# name: (file, exact text, replacement, tests that must notice)
MUTANTS = {
    "saturation-boundary": (
        "bpexp/instruments.py",
        "np.count_nonzero(prime < bound)",
        "np.count_nonzero(prime <= bound)",
        ["tests/test_instruments.py::test_saturation_boundary_is_not_saturated"],
    ),
    "softmax-saturation-boundary": (
        "bpexp/instruments.py",
        "np.count_nonzero(far > 0.5 - epsilon)",
        "np.count_nonzero(far >= 0.5 - epsilon)",
        ["tests/test_instruments.py::test_tanh_and_softmax_saturation_boundaries"],
    ),
    "wrong-saturation-boundary": (
        "bpexp/instruments.py",
        "np.count_nonzero(off > 1.0 - epsilon)",
        "np.count_nonzero(off >= 1.0 - epsilon)",
        ["tests/test_instruments.py::test_saturation_boundary_is_not_saturated"],
    ),
    "no-epoch-end-loss-check": (
        "bpexp/trainer.py",
        'if stopped or _diverged(metrics["train/loss"], cfg.max_loss):',
        "if stopped:",
        ["tests/test_trainer.py::test_epoch_end_loss_check_stops_a_run_without_step_losses"],
    ),
    "loss-bound-inclusive": (
        "bpexp/trainer.py",
        "return not math.isfinite(loss) or loss > bound",
        "return not math.isfinite(loss) or loss >= bound",
        ["tests/test_trainer.py::test_epoch_end_loss_check_stops_a_run_without_step_losses"],
    ),
    "no-bp2-sigma-prime": (
        "bpexp/network.py",
        "prev *= self.activations[l - 2].prime(",
        "prev += 0 * self.activations[l - 2].prime(",
        ["tests/test_network.py::test_backprop_matches_hand_computation"],
    ),
    "nesterov-look-ahead": (
        "bpexp/optimizer.py",
        'w += np.multiply(v, self.beta, out=state["scratch"])',
        'w += np.multiply(v, 1.0, out=state["scratch"])',
        ["tests/test_optimizer.py"],
    ),
    "init-file-not-hashed": (
        "bpexp/tracking.py",
        'for key in ("data.path", "network.init_path"):',
        'for key in ("data.path",):',
        ["tests/test_sweep_guarantees.py::test_a_changed_init_file_is_a_new_job"],
    ),
    "diverged-runs-rerun": (
        "bpexp/tracking.py",
        'run.data.tags.get("outcome") in ("completed", "diverged")',
        'run.data.tags.get("outcome") in ("completed",)',
        [
            "tests/test_sweep_guarantees.py::test_rerun_skips_diverged_jobs_and_runs_failed_ones_again"
        ],
    ),
    "failed-runs-skipped": (
        "bpexp/tracking.py",
        'in ("completed", "diverged")\n        and run.info.status == "FINISHED"',
        'in ("completed", "diverged", "failed")\n        or run.info.status == "FAILED"',
        [
            "tests/test_sweep_guarantees.py::test_rerun_skips_diverged_jobs_and_runs_failed_ones_again"
        ],
    ),
    "confirm-on-tuning-seeds": (
        "hydra_plugins/bpexp_sweeper/bpexp_sweeper.py",
        "for seed in protocol.confirm_seeds",
        "for seed in protocol.tune_seeds",
        ["tests/test_jobs.py::test_a_factorial_sweep_stays_factorial_in_every_output"],
    ),
    "confirm-jobs-tagged-tune": (
        "hydra_plugins/bpexp_sweeper/bpexp_sweeper.py",
        '                "confirm",\n',
        '                "tune",\n',
        ["tests/test_jobs.py::test_a_factorial_sweep_stays_factorial_in_every_output"],
    ),
    "xavier-bias-not-zero": (
        "bpexp/network.py",
        "            W[...] = rng.uniform(-limit, limit, W.shape)\n            b[...] = 0.0",
        "            W[...] = rng.uniform(-limit, limit, W.shape)\n            b[...] = 1e-3",
        ["tests/test_network.py::test_initialisers_have_their_distribution"],
    ),
}


def copy_repository(folder: Path) -> Path:
    """bpexp/, hydra_plugins/ (the sweeper), conf/, sweeps/, tests/ and pyproject.toml of this
    checkout, copied."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("bpexp", "hydra_plugins", "conf", "sweeps", "tests"):
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", folder / "pyproject.toml")
    return folder


def run_tests(copy: Path, tests: list[str]) -> subprocess.CompletedProcess:
    env = cli_env(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    check = [sys.executable, "-c", "import bpexp, hydra_plugins.bpexp_sweeper.bpexp_sweeper as s"]
    check[-1] += "; print(bpexp.__file__); print(s.__file__)"
    where = subprocess.run(check, cwd=copy, env=env, capture_output=True, text=True, check=True)
    for line in where.stdout.split():  # the copy is tested: the package and the sweeper
        assert Path(line).is_relative_to(copy), where.stdout
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
        + tests,
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_the_guarding_tests_pass_on_an_unchanged_copy(tmp_path):
    tests = sorted({t for *_, guards in MUTANTS.values() for t in guards})
    proc = run_tests(copy_repository(tmp_path), tests)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(tmp_path, name):
    file, old, new, tests = MUTANTS[name]
    copy = copy_repository(tmp_path)
    source = (copy / file).read_text()
    assert source.count(old) == 1, f"mutation site not found once in {file}: {old!r}"
    (copy / file).write_text(source.replace(old, new))
    proc = run_tests(copy, tests)
    output = proc.stdout + proc.stderr
    # Exit code 1 is "tests failed"; 2-5 (errors, no tests collected) would hide the question.
    assert proc.returncode == 1, f"mutant {name!r} survived:\n{output[-3000:]}"
    assert "FAILED" in proc.stdout, output[-3000:]
