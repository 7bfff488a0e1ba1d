"""The repository explains itself: no file points outside it, every link in the docs works, and
the facts the docs state about the code (its sweeps, config options, modules, random streams,
tests) are checked against the code, so the docs cannot drift from it silently."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What users of the package have: the code, its configuration, the sweeps and the docs.
CHECKED = ("bpexp", "hydra_plugins", "conf", "sweeps", "docs", "README.md")
# Notes kept outside the repository, which a user of the package does not have.
OUTSIDE = re.compile(r"SCIENCE\.md|\.\./shared\b|/work/shared\b")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
DOCS_PATH = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")


def tracked_files(*paths: str) -> list[Path]:
    """The files git tracks under ``paths``; every file there when this is not a checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *paths],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        files = [ROOT / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:  # an unpacked source tree
        for path in (ROOT / p for p in paths):
            files += [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def markdown_files() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "benchmarks" / "README.md",
    ]


def prose(text: str) -> str:
    """Markdown without fenced blocks and code spans: what is left can hold links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``: lower case, punctuation dropped,
    spaces turned into hyphens, ``-1``, ``-2`` ... after repeated headings."""
    seen: Counter[str] = Counter()
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        text = re.sub(r"`([^`]*)`", r"\1", heading)
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        out.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return out


def relative_links(markdown: Path) -> list[str]:
    targets = LINK.findall(prose(markdown.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def test_nothing_points_outside_the_repository():
    files = tracked_files(*CHECKED)
    assert any(f.suffix == ".py" for f in files) and any(f.suffix == ".md" for f in files)
    offending = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file (an image)
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                offending.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)


@pytest.mark.parametrize("markdown", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(markdown):
    broken = []
    for target in relative_links(markdown):
        path_part, _, anchor = target.partition("#")
        path = (markdown.parent / path_part).resolve() if path_part else markdown
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert not broken, f"{markdown.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_every_docs_path_cited_in_code_and_config_exists():
    # Docstrings, comments and generated reports cite docs/<page>.md#<section> as plain text.
    broken = []
    for file in tracked_files(*CHECKED, "tests", "benchmarks"):
        if file.suffix not in (".py", ".yaml", ".md", ".txt") or file == Path(__file__):
            continue  # this file's own examples are not citations
        for page, anchor in DOCS_PATH.findall(file.read_text(encoding="utf-8")):
            target = ROOT / "docs" / page
            if not target.is_file():
                broken.append(f"{file.relative_to(ROOT)}: docs/{page} does not exist")
            elif anchor and anchor not in anchors(target):
                broken.append(f"{file.relative_to(ROOT)}: docs/{page} has no #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    # The checks above must be able to fail: a page with a link, an image and a code sample.
    page = tmp_path / "page.md"
    page.write_text(
        "# Update rules\n\n## The `sgd` rule\n\n## Update rules\n\n"
        "See [the rules](other.md#a-b), ![a plot](plots/loss.png) and [the web](https://x.org).\n"
        "`[not a link](nowhere.md)`\n\n```\n[nor this](nowhere.md)\n```\n"
    )
    assert relative_links(page) == ["other.md#a-b", "plots/loss.png"]
    assert anchors(page) == {"update-rules", "the-sgd-rule", "update-rules-1"}
    assert OUTSIDE.search("see [x](../shared/SCIENCE.md)")
    assert not OUTSIDE.search("see docs/science.md#saturation")
    assert DOCS_PATH.findall("(docs/science.md#update-rules), docs/a.md.") == [
        ("science.md", "update-rules"),
        ("a.md", ""),
    ]


# ---------------------------------------------------------------- doc facts against the code

README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_README_LINES = 250
TABLE_ROW = re.compile(r"^\|(.*)\|\s*$")
NAME_SPAN = re.compile(r"`([^`]+)`")
PARENTHESES = re.compile(r"\([^()]*\)")
# A test the docs cite: `test_name`, or `tests/test_file.py::test_name`, alone in a code span.
CITED_TEST = re.compile(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`")
CITED_TEST_FILE = re.compile(r"\b(test_\w+)\.py\b")
PLACEHOLDER_TEST_FILES = {"test_x"}  # where-to-add.md: "python -m pytest tests/test_x.py"
DEFINED_TEST = re.compile(r"^\s*(?:async\s+)?def\s+(test_\w+)\s*\(", re.MULTILINE)
# A random stream in the rng.py entry of the module map: `name` (what it draws).
STREAM = re.compile(r"`(\w+)` \(")
MODULE_ENTRY = re.compile(r"^- \*\*`bpexp/([\w.]+\.py)`\*\*", re.MULTILINE)
MODULE_PATH = re.compile(r"\bbpexp/(\w+\.py)\b")
SWEEP_ERROR = re.compile(
    r"error: sweep='\w+' is not allowed; allowed: ([\w,\s]+?) \(named sweeps in sweeps/sweep/\)"
)
PARENT_KEY = re.compile(r"`(<?\w+>?)/<(\w+)>/<(\w+)>`")
# A test named with its file: "test_file.py: `test_a`, `test_b`", "test_file.py `test_a`",
# or `tests/test_file.py::test_a`.
ATTRIBUTED = re.compile(
    r"\b(test_\w+)\.py(?::|\s)\s*((?:`test_\w+`(?:,\s*(?:and\s+)?|\s+and\s+)?)+)"
)
QUALIFIED = re.compile(r"`(?:tests/)?(test_\w+)\.py::(test_\w+)`")


def tables(markdown: Path) -> list[list[list[str]]]:
    """Every Markdown table outside fenced blocks, as rows of stripped cells, header first (the
    |---| separator line dropped)."""
    out: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in FENCE.sub("", markdown.read_text(encoding="utf-8")).splitlines():
        row = TABLE_ROW.match(line.strip())
        if row is None:
            if current:
                out.append(current)
            current = []
            continue
        cells = [c.strip() for c in row.group(1).split("|")]
        if not all(re.fullmatch(r":?-+:?", c) for c in cells):
            current.append(cells)
    if current:
        out.append(current)
    return out


def table_with_header(markdown: Path, first: str) -> list[list[str]]:
    """The body of the one table of ``markdown`` whose first header cell is ``first``."""
    found = [t for t in tables(markdown) if t[0][0] == first]
    assert len(found) == 1, f"{markdown.name}: {len(found)} tables headed {first!r}"
    return found[0][1:]


def names(cell: str) -> list[str]:
    """The names in code spans of a table cell, leaving out those inside parentheses (the
    notes that follow a name, as in `digits` (default, embedded))."""
    return NAME_SPAN.findall(PARENTHESES.sub("", cell))


def options(folder: Path) -> set[str]:
    return {f.stem for f in folder.glob("*.yaml")}


def section(text: str, heading: str) -> str:
    """The body of the section whose heading line is ``heading``, up to the next heading of the
    same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = re.search(rf"^#{{1,{level}}} ", text[start:], re.MULTILINE)
    return text[start : start + end.start()] if end else text[start:]


def package_modules() -> set[str]:
    return {f.name for f in (ROOT / "bpexp").glob("*.py")}


def config_keys() -> set[str]:
    """Every key of the configuration schema, group keys included (``test_fraction`` is a key,
    not a test)."""
    import dataclasses

    from bpexp.config import Config

    config = Config()
    keys = {f.name for f in dataclasses.fields(config)}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys |= {f.name for f in dataclasses.fields(value)}
    return keys


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_readme_gives_the_test_command_ci_runs():
    readme = README.read_text(encoding="utf-8").splitlines()
    commands = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("pip install")
    ]
    assert commands, ".ci/run installs nothing"
    for command in commands:
        assert command in readme, f"README.md does not give .ci/run's command: {command}"


def test_named_sweeps_table_lists_exactly_the_sweep_files():
    rows = table_with_header(README, "sweep")
    listed = [names(row[0])[0] for row in rows]
    assert len(listed) == len(set(listed)), f"a sweep listed twice: {listed}"
    assert set(listed) == options(ROOT / "sweeps" / "sweep")


def test_config_group_table_lists_exactly_each_groups_options():
    rows = table_with_header(README, "group")
    groups = {names(row[0])[0]: row for row in rows}
    on_disk = {d.name for d in (ROOT / "conf").iterdir() if d.is_dir() and d.name != "hydra"}
    assert set(groups) == on_disk
    wrong = {
        group: sorted(set(names(row[1])) ^ options(ROOT / "conf" / group))
        for group, row in groups.items()
        if set(names(row[1])) != options(ROOT / "conf" / group)
    }
    assert not wrong, f"options listed but absent, or present but not listed: {wrong}"


def test_config_group_table_lists_exactly_each_groups_keys():
    import dataclasses

    from bpexp.config import Config

    config = Config()
    wrong = {}
    for row in table_with_header(README, "group"):
        group = names(row[0])[0]
        schema = {f.name for f in dataclasses.fields(getattr(config, group))}
        if set(names(row[2])) != schema:
            wrong[group] = sorted(set(names(row[2])) ^ schema)
    assert not wrong, f"keys listed but not in the schema, or in it but not listed: {wrong}"


def test_every_figure_file_the_docs_name_is_drawn_by_the_code():
    drawn = {
        name
        for file in [*(ROOT / "bpexp").glob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
        for name in re.findall(r"[\"'](\w+\.png)[\"']", file.read_text(encoding="utf-8"))
    }
    named = {
        (markdown.relative_to(ROOT), name)
        for markdown in markdown_files()
        for name in re.findall(r"`(\w+\.png)`", markdown.read_text(encoding="utf-8"))
    }
    unknown = sorted(f"{page}: {name}" for page, name in named if name not in drawn)
    assert named and not unknown, "\n".join(unknown)


def test_architecture_config_table_matches_the_folders():
    rows = table_with_header(ARCHITECTURE, "`conf/` group")
    seen = set()
    for row in rows:
        folder = names(row[0])[0].rstrip("/")
        listed = set(names(row[1]))
        seen.add(folder)
        if folder == "hydra/sweeper":  # bpexp's sweeper is a plugin, chosen in config.yaml
            assert listed == {"bpexp"}
            assert "override hydra/sweeper: bpexp" in (ROOT / "conf" / "config.yaml").read_text()
            assert (ROOT / "hydra_plugins" / "bpexp_sweeper").is_dir()
            continue
        path = ROOT / "conf" / folder if (ROOT / "conf" / folder).is_dir() else ROOT / folder
        assert path.is_dir(), f"architecture.md names {folder}/, which does not exist"
        assert listed == options(path), f"{folder}/: {sorted(listed ^ options(path))}"
    groups = {
        str(d.relative_to(ROOT / "conf"))
        for d in (ROOT / "conf").rglob("*")
        if d.is_dir() and any(d.glob("*.yaml"))
    }
    assert groups | {"sweeps/sweep"} <= seen


def test_quoted_unknown_sweep_error_lists_every_sweep():
    # The message sorts the sweep names (errors.bad_value), as the quote must.
    expected = sorted(options(ROOT / "sweeps" / "sweep"))
    quotes = [
        (markdown.name, [n.strip() for n in allowed.split(",")])
        for markdown in markdown_files()
        for allowed in SWEEP_ERROR.findall(markdown.read_text(encoding="utf-8"))
    ]
    assert quotes, "no doc quotes the error of a misspelt sweep name"
    for name, listed in quotes:
        assert listed == expected, f"{name} quotes {listed}"


def module_entry(text: str, module: str) -> str:
    """The module map's entry for ``bpexp/<module>``: its bullet, up to the next one."""
    pattern = rf"^- \*\*`bpexp/{re.escape(module)}`\*\*.*?(?=^- |^#|\Z)"
    (entry,) = re.findall(pattern, text, re.DOTALL | re.MULTILINE)
    return entry


def test_architecture_lists_exactly_the_random_streams():
    from bpexp.rng import PURPOSES

    entry = module_entry(ARCHITECTURE.read_text(encoding="utf-8"), "rng.py")
    assert STREAM.findall(entry) == list(PURPOSES)


def test_module_map_names_every_module_and_no_other():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    mapped = MODULE_ENTRY.findall(section(text, "## Modules"))
    assert len(mapped) == len(set(mapped)), f"a module described twice: {mapped}"
    assert set(mapped) == package_modules(), (
        f"missing from the map: {sorted(package_modules() - set(mapped))}; "
        f"not in bpexp/: {sorted(set(mapped) - package_modules())}"
    )


def test_readme_tree_names_every_module_and_no_other():
    tree = re.search(r"```text\nbpexp/.*?```", README.read_text(encoding="utf-8"), re.S)
    assert tree, "README.md has no repository tree"
    listed = re.findall(r"^  ([\w]+\.py)\b", tree.group(0), re.MULTILINE)
    assert sorted(listed) == sorted(package_modules())
    top = re.findall(r"^([\w.]+)/", tree.group(0), re.MULTILINE)
    assert all((ROOT / name).is_dir() for name in top), top


def test_every_module_path_in_the_docs_exists():
    missing = [
        f"{markdown.relative_to(ROOT)}: bpexp/{module}"
        for markdown in markdown_files()
        for module in MODULE_PATH.findall(markdown.read_text(encoding="utf-8"))
        if not (ROOT / "bpexp" / module).is_file()
    ]
    assert not missing, "\n".join(missing)


def test_every_test_the_docs_cite_exists():
    tests = ROOT / "tests"
    defined = {
        name for file in tests.glob("*.py") for name in DEFINED_TEST.findall(file.read_text())
    }
    files = {f.stem for f in tests.glob("test_*.py")} | PLACEHOLDER_TEST_FILES
    keys = config_keys()
    missing = []
    for markdown in markdown_files():
        text = markdown.read_text(encoding="utf-8")
        for name in set(CITED_TEST.findall(text)) - keys - defined:
            missing.append(f"{markdown.relative_to(ROOT)}: {name}")
        for name in set(CITED_TEST_FILE.findall(text)) - files:
            missing.append(f"{markdown.relative_to(ROOT)}: {name}.py")
    assert not missing, "cited but not in tests/:\n" + "\n".join(sorted(missing))


def attributed_tests(text: str) -> list[tuple[str, str]]:
    """(file stem, test name) for every test the text names together with its file."""
    pairs = [
        (stem, name)
        for stem, names in ATTRIBUTED.findall(text)
        for name in re.findall(r"`(test_\w+)`", names)
    ]
    return pairs + QUALIFIED.findall(text)


def test_every_test_the_docs_attribute_to_a_file_is_in_that_file():
    defined = {
        file.stem: set(DEFINED_TEST.findall(file.read_text()))
        for file in (ROOT / "tests").glob("test_*.py")
    }
    wrong = [
        f"{markdown.relative_to(ROOT)}: {stem}.py has no {name}"
        for markdown in markdown_files()
        for stem, name in attributed_tests(markdown.read_text(encoding="utf-8"))
        if name not in defined.get(stem, set())
    ]
    assert not wrong, "\n".join(wrong)


def test_parent_metric_names_in_the_docs_follow_the_code():
    from bpexp.report import parent_metric_key

    value = {"arm": "A", "metric": "m", "sweep": "S"}
    expected = parent_metric_key("m", "A", "S")
    for markdown in markdown_files():
        for parts in PARENT_KEY.findall(markdown.read_text(encoding="utf-8")):
            if all(p.strip("<>") in value for p in parts):
                written = "/".join(value[p.strip("<>")] for p in parts)
                assert written == expected, f"{markdown.name}: {'/'.join(parts)}"


def test_docs_index_lists_every_page():
    index = ROOT / "docs" / "README.md"
    linked = {t.partition("#")[0] for t in relative_links(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= linked, f"docs/README.md does not list {sorted(pages - linked)}"


def test_no_doc_links_to_the_web():
    found = [
        f"{markdown.relative_to(ROOT)}: {url}"
        for markdown in markdown_files()
        for url in re.findall(r"\b[a-z][a-z0-9+.-]*://\S+", prose(markdown.read_text("utf-8")))
    ]
    assert not found, "\n".join(found)


def test_the_fact_checkers_see_what_they_check(tmp_path):
    # Each check above must be able to fail: its parser finds the facts in a page written
    # the way the docs write them.
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n| group | options | keys |\n|---|---|---|\n"
        "| `data` | `digits` (default, `embedded`), `moons` | `name` |\n\n"
        "```\n| sweep | not a table |\n```\n\n"
        "- **`bpexp/rng.py`**: streams `init` (weights), `split` (the split); see `seed`.\n"
        "- **`bpexp/trainer.py`**: the loop, `test_fraction`, `test_a_b`,\n"
        "  `tests/test_x.py::test_c_d`, and `<arm>/<metric>/<sweep>`.\n"
    )
    (rows,) = tables(page)
    assert rows == [
        ["group", "options", "keys"],
        ["`data`", "`digits` (default, `embedded`), `moons`", "`name`"],
    ]
    assert names(rows[1][1]) == ["digits", "moons"]
    text = page.read_text()
    assert MODULE_ENTRY.findall(text) == ["rng.py", "trainer.py"]
    assert STREAM.findall(module_entry(text, "rng.py")) == ["init", "split"]
    assert set(CITED_TEST.findall(text)) - config_keys() == {"test_a_b", "test_c_d"}
    assert PARENT_KEY.findall(text) == [("<arm>", "metric", "sweep")]
    assert SWEEP_ERROR.findall(
        "error: sweep='x' is not allowed; allowed: a, b_c (named sweeps in sweeps/sweep/)"
    ) == ["a, b_c"]
    assert section("\n## A\nbody\n### sub\nmore\n## B\nrest\n", "## A") == "body\n### sub\nmore\n"
    assert attributed_tests(
        "(test_a.py: `test_b`, `test_c`, and\n`test_d`; test_e.py `test_f`; "
        "`tests/test_g.py::test_h`, test_i.py, `test_j`)"
    ) == [
        ("test_a", "test_b"),
        ("test_a", "test_c"),
        ("test_a", "test_d"),
        ("test_e", "test_f"),
        ("test_g", "test_h"),
    ]
