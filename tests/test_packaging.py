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


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (annotations only, never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> list[str]:
    """Absolute module names ``path`` imports (relative imports resolved), lazily or not;
    ``from package import module`` names the module. Imports under ``TYPE_CHECKING`` are not
    executed and do not count."""
    package = ["ponderkit", *path.parent.relative_to(REPO / "core").parts]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in CORE]
            found += subs or [module]
    return found


def _core_modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / "core").rglob("*.py"):
        parts = path.relative_to(REPO / "core").with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["ponderkit", *parts])] = path
    return out


CORE = _core_modules()

#: core's layers, bottom up: a module imports only from its own layer or below
LAYERS = {"contract": 0, "engine": 1, "lab": 2, "devkit": 2, "app": 3, "__main__": 3}


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "ponderkit" or len(parts) < 2:
        return -1  # not ponderkit, or the facade (which imports lazily, by string)
    return LAYERS[parts[1]]


def test_core_root_holds_only_the_facade_and_the_layers():
    root = {p.name for p in (REPO / "core").iterdir() if not p.name.startswith((".", "__py"))}
    assert root == {"__init__.py", "__main__.py", *(n for n in LAYERS if n != "__main__")}


def test_core_layers_import_only_downwards():
    """contract (0) <- engine, the runtime (1) <- lab and devkit (2) <- app, the command line
    (3): no module imports from a layer above its own. The package ``__init__`` re-exports
    names lazily (by string), which this check does not see."""
    for module, path in CORE.items():
        own = 99 if module == "ponderkit" else _layer(module)  # the facade sits on top
        for imported in _imports(path):
            assert _layer(imported) <= own, f"{module} (layer {own}) imports {imported}"


def _import_cycles() -> list[list[str]]:
    graph = {m: sorted({i for i in _imports(p) if i in CORE and i != m}) for m, p in CORE.items()}
    return _cycles(graph)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search, each once (as the path that closes it)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_core_has_no_import_cycles():
    """No cycle among core's modules, counting imports inside functions too: a cycle hidden
    behind a local import is still a cycle."""
    assert _import_cycles() == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_the_layer_check_sees_an_upward_import():
    assert (
        _layer("ponderkit.app.cli")
        > _layer("ponderkit.lab.report")
        > _layer("ponderkit.engine.train")
        > _layer("ponderkit.contract.interfaces")
    )
    assert "ponderkit.engine.model" in _imports(REPO / "core" / "engine" / "build.py")
    # a TYPE_CHECKING import does not count; the contract names the runtime's context only there
    assert "ponderkit.engine.context" not in _imports(REPO / "core" / "contract" / "interfaces.py")


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
            "import ponderkit.app.cli as c, sys; sys.exit(c.main(['list']))",
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
