"""The house's shape, read from the source: a functional core that imports no shell library,
and no import circle anywhere in bpexp/ or its sweeper, counting the imports inside functions
too (app → config → sweeper → sweep → app was one)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, cli_env

CORE = ("activation", "cost", "network", "optimizer", "instruments", "curvature", "trainer")
CORE += ("data", "rng", "errors", "gradcheck", "checkpoint")
SHELL_LIBRARIES = ("hydra", "omegaconf", "mlflow", "pandas", "matplotlib")


def _modules() -> dict[str, Path]:
    found = {f"bpexp.{p.stem}": p for p in (ROOT / "bpexp").glob("*.py") if p.stem != "__main__"}
    found["bpexp"] = ROOT / "bpexp" / "__init__.py"
    sweeper = ROOT / "hydra_plugins" / "bpexp_sweeper" / "bpexp_sweeper.py"
    found["hydra_plugins.bpexp_sweeper.bpexp_sweeper"] = sweeper
    return found


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports: every import statement, also those inside functions (they
    run when the function does), or only the module-level ones. ``from bpexp import x``
    imports ``bpexp.x``."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module != "bpexp":
                names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    """Who imports whom among bpexp's modules. The package itself (``bpexp/__init__.py``,
    imported first for any ``bpexp.x`` anyway) counts as importing nothing: its one import
    is ``bpexp.run``'s lazy import of the app, for users."""
    modules = _modules()
    graph = {name: _imports(path) & set(modules) - {name} for name, path in modules.items()}
    graph["bpexp"] = set()
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    assert _cycle(_graph()) is None, " → ".join(_cycle(_graph()))


def test_the_circle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_imports_no_shell_library():
    for name in CORE:
        imported = _imports(ROOT / "bpexp" / f"{name}.py")
        bad = {m for m in imported if m.split(".")[0] in SHELL_LIBRARIES}
        assert not bad, f"bpexp/{name}.py imports {sorted(bad)}"


def test_the_sweeper_does_not_pull_in_the_shell_that_runs_jobs():
    # Hydra imports the sweeper to launch jobs; the sweeper must not import what runs them.
    code = (
        "import sys, hydra_plugins.bpexp_sweeper.bpexp_sweeper\n"
        "print(sorted(m for m in sys.modules if m in ('bpexp.app', 'bpexp.sweep', "
        "'bpexp.tracking', 'mlflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=cli_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout
