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


def _imports(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (relative imports resolved), lazily or not."""
    package = ["ponderkit", *path.parent.relative_to(REPO / "core").parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
                found += [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                found.append(node.module or "")
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "ponderkit" or len(parts) < 2:
        return -1  # not ponderkit
    layers = {"engine": 1, "lab": 2, "cli": 3, "cli_tools": 3, "__main__": 3, "testing": 1}
    return layers.get(parts[1], 0)


def test_core_layers_import_only_downwards():
    """contract (core's root, 0) <- runtime (engine, 1) <- lab (2) <- command line (3): no
    module imports from a layer above its own. The package ``__init__`` re-exports names
    from every layer lazily (by string), which this check does not see."""
    for path in (REPO / "core").rglob("*.py"):
        rel = path.relative_to(REPO / "core").with_suffix("")
        own = _layer(".".join(["ponderkit", *rel.parts]))
        for module in _imports(path):
            assert _layer(module) <= own, f"core/{rel}.py (layer {own}) imports {module}"


def test_the_layer_check_sees_an_upward_import():
    assert (
        _layer("ponderkit.lab.report")
        > _layer("ponderkit.engine.train")
        > _layer("ponderkit.interfaces")
    )
    assert "ponderkit.engine.model" in _imports(REPO / "core" / "engine" / "build.py")


def test_a_built_wheel_installs_and_lists_the_catalogue(tmp_path):
    """registry.yaml lives at the repository's top level; a non-editable wheel still carries it
    (plugins/registry.yaml links to it). Build the wheel, install it without dependencies
    into a fresh venv that borrows this environment's site-packages for the dependencies,
    and run `ponderkit list`."""
    import os
    import subprocess
    import sys
    import sysconfig

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("ponderkit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + [str(wheel)],
        check=True,
        capture_output=True,
    )
    # the wheel's ponderkit first, then this environment's dependencies (its editable
    # ponderkit is a .pth finder, which PYTHONPATH entries do not process)
    deps = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{target}{os.pathsep}{deps}", "PATH": os.environ.get("PATH", "")}
    result = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import ponderkit.cli as c, sys; sys.exit(c.main(['list']))",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "cosine_threshold" in result.stdout and "deep_supervision" in result.stdout
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ponderkit; print(ponderkit.__file__)"],
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert where.startswith(str(target)), where
