"""The documentation's code blocks, as files: tests that follow a README or docs/ section
verbatim."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def section(page: str, heading: str) -> str:
    """The text of ``page`` (a path relative to the repository) under ``## heading``, up to the
    next ``## `` heading."""
    text = (REPO / page).read_text()
    marker = f"\n## {heading}\n"
    assert marker in text, f"{page} has no section '## {heading}'"
    return text.split(marker, 1)[1].split("\n## ", 1)[0]


@pytest.fixture
def doc_files() -> Callable[[str, str], dict[str, str]]:
    """doc_files(page, heading) -> {path: text} for the fenced blocks of the section
    ``## heading`` of ``page`` whose first line is a comment naming a file."""

    def files(page: str, heading: str) -> dict[str, str]:
        found = {}
        for body in re.findall(
            r"```(?:toml|python|yaml)\n(.*?)```", section(page, heading), flags=re.S
        ):
            first, rest = body.split("\n", 1)
            if first.startswith("#"):
                found[first.lstrip("# ").strip()] = rest
        return found

    return files
