"""The registry: every component, built-in or third-party, by ``kind/name``.

Built-in components are *declared* from ``registry.yaml`` without importing their module, so
``ponderkit list`` stays fast; the module is imported the first time one of its components is
needed, and must then register exactly what the catalogue says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .errors import PluginError, UnknownComponentError, did_you_mean, suggestion

#: The kinds of component, in the order DESIGN.md lists them.
KINDS: tuple[str, ...] = (
    "block",
    "mixer",
    "ffn",
    "router",
    "recursion",
    "halting",
    "schedule",
    "task",
    "callback",
    "optimizer",
)


@attrs.frozen
class Origin:
    """Which plugin registered a component."""

    plugin: str
    version: str = "unknown"

    def __str__(self) -> str:
        return f"{self.plugin} {self.version}"


@attrs.frozen
class Component:
    """A registered component: name, frozen attrs config class, builder and docstring.

    ``requires``/``provides`` are capability tags checked across the components of one
    experiment (e.g. a halting policy that needs a recursion with a carried state). ``check``
    is an optional ``check(config, env) -> iterable of messages`` for value-level cross checks.
    """

    kind: str
    name: str
    config_cls: type
    builder: Callable[..., Any]
    doc: str
    origin: Origin
    requires: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()
    check: Callable[..., Iterable[Any]] | None = None
    absent: bool = False

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def summary(self) -> str:
        return first_line(self.doc)


@attrs.frozen
class Declared:
    """A built-in component known from ``registry.yaml`` whose module is not imported yet."""

    kind: str
    name: str
    module: str
    summary: str


def first_line(doc: str | None) -> str:
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def split_key(key: str) -> tuple[str, str]:
    """``'router/spl'`` -> ``('router', 'spl')``; raises ValueError on a malformed key."""
    kind, sep, name = key.partition("/")
    if not sep or not kind or not name:
        raise ValueError(f"expected KIND/NAME (e.g. router/spl), got {key!r}")
    return kind, name


class Registry:
    """Components by kind and name. Plugins fill it through ``ponderkit_register``."""

    def __init__(self, import_module: Callable[[str], None] | None = None):
        self._components: dict[tuple[str, str], Component] = {}
        self._declared: dict[tuple[str, str], Declared] = {}
        self._import_module = import_module
        self._origin: Origin | None = None
        self._staged: dict[tuple[str, str], Component] | None = None

    # -- filling ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def registering(self, origin: Origin) -> Iterator[None]:
        """Attribute additions to ``origin``; they land only if the whole block succeeds."""
        if self._origin is not None:
            raise PluginError(f"plugin {origin.plugin} registered while {self._origin.plugin} was")
        self._origin, self._staged = origin, {}
        try:
            yield
            self._components.update(self._staged)
        finally:
            self._origin, self._staged = None, None

    def declare(self, kind: str, name: str, module: str, summary: str = "") -> None:
        """Record a built-in from ``registry.yaml``; its module is imported on first use."""
        self._check_kind(kind, f"registry.yaml entry {kind}/{name}")
        other = self._declared.get((kind, name))
        if other is not None and other.module != module:
            raise PluginError(
                f"duplicate component {kind}/{name}: registry.yaml lists it under both "
                f"{other.module} and {module}"
            )
        self._declared[(kind, name)] = Declared(kind, name, module, summary)

    def add(
        self,
        kind: str,
        name: str,
        config_cls: type,
        builder: Callable[..., Any],
        *,
        doc: str | None = None,
        requires: Iterable[str] = (),
        provides: Iterable[str] = (),
        check: Callable[..., Iterable[Any]] | None = None,
        absent: bool = False,
    ) -> Component:
        """Register ``kind/name``. Call only from a ``ponderkit_register`` hook.

        ``config_cls`` must be a frozen attrs class; ``builder(config, ctx, **kwargs)`` returns
        an object satisfying the kind's Protocol (``ponderkit show KIND``), or None for a
        component registered with ``absent=True`` (one that stands for no layer, ``ffn/none``).
        """
        origin = self._origin or Origin("<direct>")
        where = f"plugin {origin.plugin}"
        self._check_kind(kind, f"{where} registering {kind}/{name}")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{where}: component name {name!r} must be letters, digits, _ or -")
        if not attrs.has(config_cls):
            raise PluginError(
                f"{where}: the config class of {kind}/{name} must be an attrs class "
                f"(@attrs.frozen), got {config_cls!r}"
            )
        if not _is_frozen(config_cls):
            raise PluginError(
                f"{where}: the config class {config_cls.__name__} of {kind}/{name} must be "
                "frozen: declare it with @attrs.frozen, not @attrs.define"
            )
        if not callable(builder):
            raise PluginError(f"{where}: the builder of {kind}/{name} is not callable")
        key = (kind, name)
        existing = self._components.get(key) or (self._staged or {}).get(key)
        if existing is not None:
            raise PluginError(
                f"duplicate component {kind}/{name}: registered by {existing.origin.plugin} "
                f"and again by {origin.plugin} (uninstall or rename one; "
                "PONDERKIT_DISABLE_PLUGIN_AUTOLOAD=1 skips installed plugins meanwhile)"
            )
        declared = self._declared.get(key)
        if declared is not None and declared.module != origin.plugin:
            raise PluginError(
                f"duplicate component {kind}/{name}: built in ({declared.module}, registry.yaml) "
                f"and registered again by {origin.plugin} (rename it; "
                "PONDERKIT_DISABLE_PLUGIN_AUTOLOAD=1 skips installed plugins meanwhile)"
            )
        component = Component(
            kind=kind,
            name=name,
            config_cls=config_cls,
            builder=builder,
            doc=doc or config_cls.__doc__ or builder.__doc__ or "",
            origin=origin,
            requires=frozenset(requires),
            provides=frozenset(provides),
            check=check,
            absent=absent,
        )
        if self._staged is not None:
            self._staged[key] = component
        else:
            self._components[key] = component
        return component

    def component(
        self, kind: str, name: str, config: type, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`add` for a builder function or class."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            self.add(kind, name, config, builder, **kwargs)
            return builder

        return decorate

    # -- reading ---------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Every name of ``kind``, registered or declared, without importing anything."""
        self._check_kind(kind, "looking up names")
        found = {n for k, n in self._components if k == kind}
        found |= {n for k, n in self._declared if k == kind}
        return sorted(found)

    def keys(self) -> list[tuple[str, str]]:
        return sorted(set(self._components) | set(self._declared), key=_kind_order)

    def summary(self, kind: str, name: str) -> str:
        """One-line description, from the live component or else from ``registry.yaml``."""
        if (kind, name) in self._components:
            return self._components[(kind, name)].summary
        return self._declared[(kind, name)].summary

    def origin(self, kind: str, name: str) -> str:
        if (kind, name) in self._components:
            return self._components[(kind, name)].origin.plugin
        return self._declared[(kind, name)].module

    def declared(self) -> list[Declared]:
        return list(self._declared.values())

    def loaded(self) -> list[Component]:
        return list(self._components.values())

    def get(self, kind: str, name: str) -> Component:
        """The component ``kind/name``, importing its built-in module if needed."""
        self._check_kind(kind, f"looking up {kind}/{name}", error=UnknownComponentError)
        key = (kind, name)
        if key not in self._components and key in self._declared:
            module = self._declared[key].module
            if self._import_module is None:
                raise PluginError(f"{kind}/{name} is declared by {module} but nothing loads it")
            self._import_module(module)
            if key not in self._components:
                raise PluginError(
                    f"registry.yaml says {module} registers {kind}/{name}, but importing it "
                    "did not register that name"
                )
        if key not in self._components:
            raise UnknownComponentError(self.unknown_message(kind, name))
        return self._components[key]

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self._components or (kind, name) in self._declared

    def unknown_message(self, kind: str, name: str) -> str:
        known = self.names(kind)
        hint = suggestion(name, known)
        listing = ", ".join(known) if known else "none registered"
        return f"unknown {kind} {name!r}" + (f"; {hint}" if hint else "") + f" ({kind}s: {listing})"

    def providers(self, capability: str) -> list[str]:
        """Keys of loaded components that provide ``capability``."""
        return sorted(c.key for c in self._components.values() if capability in c.provides)

    def _check_kind(self, kind: str, context: str, error: type[Exception] = PluginError) -> None:
        if kind not in KINDS:
            hits = did_you_mean(kind, KINDS)
            hint = f"; did you mean {hits[0]!r}?" if hits else ""
            raise error(f"{context}: unknown kind {kind!r}{hint} (kinds: {', '.join(KINDS)})")


def _is_frozen(cls: type) -> bool:
    """Whether attrs class ``cls`` refuses attribute assignment (``@attrs.frozen``)."""
    return getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"


def _kind_order(key: tuple[str, str]) -> tuple[int, str]:
    return (KINDS.index(key[0]), key[1])
