"""The repository explains itself: no file points outside it, and every link in the docs works."""

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
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


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
