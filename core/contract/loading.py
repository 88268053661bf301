"""Plugin discovery: built-ins from ``registry.yaml``, entry points, and ad-hoc modules.

Order: built-ins are declared (not imported); third-party packages from the entry-point
group ``ponderkit.plugins`` are imported unless ``PONDERKIT_DISABLE_PLUGIN_AUTOLOAD`` is set;
then modules named by ``--plugin`` and ``PONDERKIT_PLUGINS``. A plugin that fails to import is
reported by name and skipped (``strict=True`` makes it fatal); a duplicate name is always fatal.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib import metadata, resources
from typing import Any

import attrs
import pluggy

from . import hookspec
from .errors import PluginError, suggestion
from .registry import Origin, Registry, split_key

ENTRY_POINT_GROUP = "ponderkit.plugins"
ENV_PLUGINS = "PONDERKIT_PLUGINS"
ENV_DISABLE_AUTOLOAD = "PONDERKIT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PACKAGE = "ponderkit.plugins"


@attrs.frozen
class PluginFailure:
    plugin: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.plugin} failed to load: {self.error}"


def ponderkit_version() -> str:
    try:
        return metadata.version("ponderkit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _warn(message: str) -> None:
    print(f"ponderkit: warning: {message}", file=sys.stderr)


class Plugins:
    """A plugin manager plus the registry it fills."""

    def __init__(
        self,
        modules: Iterable[str] = (),
        *,
        strict: bool = False,
        autoload: bool | None = None,
        builtins: bool = True,
        warn: Callable[[str], None] = _warn,
    ):
        self.strict = strict
        self.warn = warn
        self.failures: list[PluginFailure] = []
        self.pm = pluggy.PluginManager(hookspec.PROJECT)
        self.pm.add_hookspecs(hookspec)
        self.registry = Registry(import_module=self._import_builtin)
        self.pm.hook.ponderkit_register.call_historic(kwargs={"registry": self.registry})
        if builtins:
            self._declare_builtins()
        if autoload is None:
            autoload = not os.environ.get(ENV_DISABLE_AUTOLOAD)
        if autoload:
            self._load_entry_points()
        env_modules = [m.strip() for m in os.environ.get(ENV_PLUGINS, "").split(",") if m.strip()]
        for name in [*env_modules, *modules]:
            self._guarded(name, lambda name=name: self._import_and_register(name))

    # -- sources ---------------------------------------------------------------------------
    def _declare_builtins(self) -> None:
        import yaml

        text = resources.files(BUILTIN_PACKAGE).joinpath("registry.yaml").read_text("utf-8")
        catalogue = yaml.safe_load(text) or {}
        for module, components in (catalogue.get("plugins") or {}).items():
            for key, summary in (components or {}).items():
                kind, name = split_key(key)
                self.registry.declare(kind, name, module, summary or "")

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            label = f"{dist.name if dist else '?'}:{ep.name}"
            version = dist.version if dist else "unknown"
            self._guarded(
                label,
                lambda ep=ep, label=label, version=version: self.register(
                    ep.load(), Origin(label, version)
                ),
            )

    def _import_and_register(self, module_name: str) -> None:
        module = importlib.import_module(module_name)
        version = str(getattr(module, "__version__", "unknown"))
        self.register(module, Origin(module_name, version))

    def _import_builtin(self, module_name: str) -> None:
        if self.pm.has_plugin(module_name):
            return
        module = importlib.import_module(module_name)
        self.register(module, Origin(module_name, ponderkit_version()))

    # -- registration ----------------------------------------------------------------------
    def register(self, plugin: Any, origin: Origin) -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions)."""
        if self.pm.is_registered(plugin):
            return
        try:
            with self.registry.registering(origin):
                self.pm.register(plugin, name=origin.plugin)
                self._check_hooks(plugin, origin)
        except BaseException:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise

    def _check_hooks(self, plugin: Any, origin: Origin) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            bad = [
                caller.name
                for caller in self.pm.get_hookcallers(plugin) or []
                if not caller.has_spec()
            ]
            hints = [suggestion(b, ["ponderkit_register"]) for b in bad]
            detail = "; ".join(
                f"unknown hook {b!r}" + (f", {h}" if h else "")
                for b, h in zip(bad, hints, strict=True)
            )
            raise PluginError(f"plugin {origin.plugin}: {detail or exc}") from exc
        if not self.pm.get_hookcallers(plugin):
            raise PluginError(
                f"plugin {origin.plugin} has no @hookimpl function; define "
                "`@ponderkit.hookimpl def ponderkit_register(registry): ...`"
            )

    def _guarded(self, label: str, load: Callable[[], None]) -> None:
        try:
            load()
        except PluginError:
            raise
        except Exception as exc:  # a broken plugin must not take the others down
            failure = PluginFailure(label, _describe(exc))
            if self.strict:
                raise PluginError(f"{failure} (--strict-plugins)") from exc
            self.failures.append(failure)
            self.warn(f"{failure}; continuing without it (--strict-plugins makes this fatal)")

    def load_all_builtins(self) -> None:
        """Import every built-in module (for ``show`` of everything, and the catalogue test)."""
        for module in sorted({d.module for d in self.registry.declared()}):
            self._import_builtin(module)


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
