"""Packaging invariants: every plugin family is packaged, and core/ knows no plugin."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        "ponderkit." + ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "plugins").rglob("__init__.py")
    } | {
        ".".join(("ponderkit", *p.parent.relative_to(REPO / "core").parts))
        for p in (REPO / "core").rglob("__init__.py")
    }
    assert found == listed


def test_core_imports_nothing_from_plugins():
    for path in (REPO / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for name in names:
                assert "plugins" not in name.split("."), f"{path.name} imports {name}"


def test_plugins_use_only_the_public_ponderkit_api():
    import ponderkit

    for path in (REPO / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ponderkit":
                for alias in node.names:
                    assert alias.name in ponderkit.__all__, f"{path.name}: {alias.name}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ponderkit."):
                assert node.module.startswith("ponderkit.plugins"), f"{path.name}: {node.module}"
