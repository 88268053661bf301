"""The README's code blocks, as files: tests that follow a README section verbatim."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def readme_files() -> Callable[[str], dict[str, str]]:
    """readme_files(heading) -> {path: text} for the fenced blocks of the README section under
    ``## heading`` whose first line is a comment naming a file."""

    def files(heading: str) -> dict[str, str]:
        text = (REPO / "README.md").read_text()
        section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
        found = {}
        for body in re.findall(r"```(?:toml|python|yaml)\n(.*?)```", section, flags=re.S):
            first, rest = body.split("\n", 1)
            found[first.lstrip("# ").strip()] = rest
        return found

    return files
