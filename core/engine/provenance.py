"""Which plugin code a run was trained with: a digest of each plugin's source files.

A run records them in ``meta.json`` (``plugin_sources``); ``ablate`` compares them with the
plugins as they are now, so a run trained before an editable-installed plugin was edited is
not silently counted as a result of the edited code."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..contract.config import iter_specs

BUILTIN_PREFIX = "ponderkit.plugins."


def plugin_sources(config: Any, registry: Any) -> dict[str, str]:
    """plugin -> digest of the source files of the package defining its components, for
    every plugin ``config`` uses (a built-in's family package, ``ponderkit.plugins.arc``; any
    other plugin's top-level package, or its module when it is a single file)."""
    roots: dict[str, set[str]] = {}
    for _, spec in iter_specs(config):
        comp = registry.get(spec.kind, spec.name)
        module = comp.builder.__module__
        parts = module.split(".")
        root = ".".join(parts[:3]) if module.startswith(BUILTIN_PREFIX) else parts[0]
        roots.setdefault(comp.origin.plugin, set()).add(root)
    return {plugin: _digest(sorted(found)) for plugin, found in sorted(roots.items())}


def stale_plugins(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Plugins (other than built-ins, which the recorded git commit covers) whose sources
    differ from those a run recorded."""
    return [
        plugin
        for plugin, digest in recorded.items()
        if not plugin.startswith(BUILTIN_PREFIX) and current.get(plugin, digest) != digest
    ]


def _digest(roots: list[str]) -> str:
    h = hashlib.sha256()
    for root in roots:
        for path in _source_files(root):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _source_files(root: str) -> list[Path]:
    module = sys.modules.get(root)
    spec = module.__spec__ if module is not None else importlib.util.find_spec(root)
    if spec is None:
        return []
    if spec.submodule_search_locations:  # a package: every .py under it
        return sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.py"))
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []
