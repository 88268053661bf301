"""The README fits a screen, and every relative link in README.md and docs/*.md resolves: to a
file of the repository and, where the link names one, to a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page (a repeated heading gets -1, -2 ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def broken(page: Path, root: Path = REPO) -> list[str]:
    """What is wrong with each relative link of ``page`` whose target lies under ``root``."""
    problems = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or root not in (file, *file.parents):
            problems.append(f"{target}: no such file in the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: {file.name} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken(page) == []


def test_the_readme_fits_a_screen():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_the_readme_links_every_docs_page():
    linked = {Path(t.partition("#")[0]).name for t in relative_links(REPO / "README.md")}
    assert {p.name for p in PAGES[1:]} <= linked


def test_the_link_check_finds_a_broken_file_an_outside_file_and_a_broken_anchor(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "outside.md").write_text("# Outside\n")
    (root / "a.md").write_text(
        "# A page\n\n## Some `code`, and more!\n\n```\n# not a heading\n```\n"
    )
    page = root / "b.md"
    page.write_text(
        "[ok](a.md#some-code-and-more) [ok](a.md) [file](c.md) [anchor](a.md#not-a-heading)"
        " [web](https://example.org/x) `[code](nowhere.md)` [out](../outside.md)\n"
    )
    assert broken(page, root=root) == [
        "c.md: no such file in the repository",
        "a.md#not-a-heading: a.md has no heading with anchor #not-a-heading",
        "../outside.md: no such file in the repository",
    ]
