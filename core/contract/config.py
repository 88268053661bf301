"""Typed configuration: YAML data -> frozen attrs configs, every error collected with its path.

A component reference in a config class is declared with :func:`component` (or
:func:`components` for a list). In YAML it is ``{name: X, ...fields}``, or a bare ``X`` when no
field is set; it becomes a :class:`Spec` holding the kind, the name and the component's own
typed config. Leaf values go through a cattrs converter with strict hooks (no silent
``3.7 -> 3``), classes are walked field by field so that all problems are reported at once.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import cattrs

from .errors import ConfigError, Issue, UnknownComponentError, suggestion
from .registry import Registry

KIND_KEY = "ponderkit.kind"
ECHO_LIMIT = 200  # characters of a value an error line echoes
DEFAULT_KEY = "ponderkit.default"
MANY_KEY = "ponderkit.many"


@attrs.frozen
class Spec:
    """A resolved component reference: its kind, name and typed config."""

    kind: str
    name: str
    config: Any

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


def component(kind: str, default: Any = attrs.NOTHING, *, help: str = "") -> Any:
    """Declare a config field that references a component of ``kind``.

    ``default`` is written as in YAML: a name (``"swiglu"``) or a mapping with ``name``.
    """
    return attrs.field(
        default=default,
        metadata={KIND_KEY: kind, DEFAULT_KEY: default, "help": help},
    )


def components(kind: str, default: tuple[Any, ...] = (), *, help: str = "") -> Any:
    """Declare a config field holding a list of ``kind`` components (e.g. callbacks)."""
    return attrs.field(
        default=default,
        metadata={KIND_KEY: kind, DEFAULT_KEY: default, MANY_KEY: True, "help": help},
    )


# -- leaf conversion ------------------------------------------------------------------------
class _LeafError(Exception):
    pass


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    args_ = typing.get_args(tp)
    if origin is tuple and len(args_) == 2 and args_[1] is Ellipsis:  # tuple[X, ...]: a list
        inner = type_name(args_[0])
        return f"list of ({inner})" if " | " in inner else f"list of {inner}"
    if origin is tuple:  # tuple[X, Y]: a YAML list of that length
        return "[" + ", ".join(type_name(a) for a in args_) + "]"
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and attrs.has(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _given(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{kind} {shorten(repr(value))}" if value is not None else "null"


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out: an error line echoes
    what it was given, and a 3 MB value must not become a 3 MB line."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


# Every integer a config holds ends in a tensor shape, a C int or a seed: none fits beyond this.
INT_LIMIT = 2**63


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _LeafError(f"expected int, got {_given(value)}")
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise _LeafError(f"must lie in [-2**63, 2**63), got {_given(value)}")
    return value


def _strict_float(value: Any, _: Any) -> float:
    """A float that is finite: no config field means nan or inf (``.nan`` and ``.inf`` are
    valid YAML, and train nothing but NaN), so the leaf itself refuses them, in every plugin's
    config as in the core's."""
    out = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        out = float(value) if abs(value) < 2**1024 else math.inf
    elif isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
        try:
            out = float(value)
        except ValueError:
            pass
    if out is None:
        raise _LeafError(f"expected float, got {_given(value)}")
    if not math.isfinite(out):
        raise _LeafError(f"must be a finite number, got {shorten(repr(value))}")
    return out


def _strict_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise _LeafError(f"expected bool (true/false), got {_given(value)}")
    return value


def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise _LeafError(f"expected str, got {_given(value)}")
    return value


def _literal(value: Any, tp: Any) -> Any:
    options = typing.get_args(tp)
    if value in options and type(value) in {type(o) for o in options}:
        return value
    hint = suggestion(str(value), [str(o) for o in options])
    msg = f"expected one of {type_name(tp)}, got {_given(value)}"
    raise _LeafError(f"{msg}; {hint}" if hint else msg)


_LEAF_HOOKS: dict[Any, Any] = {
    int: _strict_int,
    float: _strict_float,
    bool: _strict_bool,
    str: _strict_str,
}


def _is_leaf(tp: Any) -> bool:
    return tp in _LEAF_HOOKS or typing.get_origin(tp) is Literal


def _is_leaf_union(tp: Any) -> bool:
    """A union of leaf types and literals without None (``bool | Literal["block"]``); cattrs
    structures ``X | None`` itself."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    args = typing.get_args(tp)
    return type(None) not in args and all(_is_leaf(a) for a in args)


def _leaf_union(value: Any, tp: Any) -> Any:
    """The first arm of the union that takes ``value`` as it is."""
    arms = typing.get_args(tp)
    for arm in arms:
        try:
            return _LEAF_HOOKS[arm](value, arm) if arm in _LEAF_HOOKS else _literal(value, arm)
        except _LeafError:
            continue
    words = ["bool (true/false)" if a is bool else type_name(a) for a in arms]
    literals = [str(o) for a in arms if typing.get_origin(a) is Literal for o in typing.get_args(a)]
    hint = suggestion(str(value), literals) if isinstance(value, str) else ""
    msg = f"expected {' or '.join(words)}, got {_given(value)}"
    raise _LeafError(f"{msg}; {hint}" if hint else msg)


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook_func(lambda t: typing.get_origin(t) is Literal, _literal)
    conv.register_structure_hook_func(_is_leaf_union, _leaf_union)
    conv.register_unstructure_hook(Spec, lambda s: {"name": s.name, **unstructure(s.config)})
    return conv


CONVERTER = make_converter()


# -- the walker ------------------------------------------------------------------------------
def fields_of(cls: type) -> tuple[attrs.Attribute, ...]:
    attrs.resolve_types(cls)
    return attrs.fields(cls)


class Structurer:
    """Turns plain data into config objects, collecting every issue with its path."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.issues: list[Issue] = []

    def fail(self, path: tuple, message: str, hint: str = "") -> None:
        self.issues.append(Issue(tuple(path), message, hint))

    def structure_class(self, cls: type, data: Any, path: tuple, allow: tuple = ()) -> Any:
        """Structure ``data`` into attrs class ``cls``; returns None if it had issues."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path, f"expected a mapping, got {_given(data)}")
            return None
        before = len(self.issues)
        fields = fields_of(cls)
        names = [f.name for f in fields]
        for key in data:
            if key not in names and key not in allow:
                self.fail(
                    (*path, key),
                    "unknown key",
                    suggestion(str(key), names) or f"valid keys: {', '.join(names) or 'none'}",
                )
        values: dict[str, Any] = {}
        for field in fields:
            if field.name in data:
                value = self.structure_field(field, data[field.name], (*path, field.name))
            elif field.metadata.get(KIND_KEY) and field.default is not attrs.NOTHING:
                value = self.structure_field(
                    field, field.metadata[DEFAULT_KEY], (*path, field.name)
                )
            elif field.default is attrs.NOTHING:
                self.fail((*path, field.name), f"missing required field ({type_name(field.type)})")
                continue
            else:
                continue
            values[field.name] = value
        if len(self.issues) > before:
            return None
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:  # attrs validators
            message = str(exc)
            sub = next((n for n in names if message.startswith(f"'{n}'")), None)
            self.fail((*path, sub) if sub else path, message)
            return None

    def structure_field(self, field: attrs.Attribute, value: Any, path: tuple) -> Any:
        kind = field.metadata.get(KIND_KEY)
        if kind and field.metadata.get(MANY_KEY):
            if value is None:
                return ()
            if not isinstance(value, list | tuple):
                self.fail(path, f"expected a list of {kind} components, got {_given(value)}")
                return None
            return tuple(self.structure_spec(kind, v, (*path, i)) for i, v in enumerate(value))
        if kind:
            if value is None and field.default is None:
                return None
            return self.structure_spec(kind, value, path)
        return self.structure_value(field.type, value, path)

    def structure_value(self, tp: Any, value: Any, path: tuple) -> Any:
        if isinstance(tp, type) and attrs.has(tp):
            return self.structure_class(tp, value, path)
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
            if not isinstance(value, list | tuple) or len(value) != len(args):
                self.fail(path, f"expected a list {type_name(tp)}, got {_given(value)}")
                return None
        try:
            return CONVERTER.structure(value, tp)
        except _LeafError as exc:
            self.fail(path, str(exc))
        except Exception as exc:  # cattrs' own errors for containers
            self.fail(path, _describe_cattrs(exc, tp, value))
        return None

    def structure_spec(self, kind: str, value: Any, path: tuple) -> Spec | None:
        if isinstance(value, str):
            name, fields = value, {}
        elif isinstance(value, dict):
            if "name" not in value:
                self.fail(
                    path,
                    f"a {kind} needs a name",
                    f"{kind}s: {', '.join(self.registry.names(kind))}",
                )
                return None
            name, fields = value["name"], {k: v for k, v in value.items() if k != "name"}
            if not isinstance(name, str):
                self.fail((*path, "name"), f"expected a {kind} name, got {_given(name)}")
                return None
        else:
            self.fail(
                path, f"expected a {kind} name or a mapping with `name:`, got {_given(value)}"
            )
            return None
        try:
            comp = self.registry.get(kind, name)
        except UnknownComponentError as exc:
            self.fail((*path, "name") if isinstance(value, dict) else path, str(exc))
            return None
        config = self.structure_class(comp.config_cls, fields, path, allow=())
        return None if config is None else Spec(kind, name, config)


def _describe_cattrs(exc: Exception, tp: Any, value: Any) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        parts = []
        for part in cattrs.transform_error(exc, path=""):
            message, _, where = part.rpartition(" @ ")
            if message.startswith("unknown error (") and message.endswith(")"):
                message = message[len("unknown error (") : -1]
            parts.append(f"item {where.strip()}: {message}" if where.strip() else message)
        return "; ".join(parts)
    return f"expected {type_name(tp)}, got {_given(value)} ({exc})"


def structure(registry: Registry, cls: type, data: Any) -> Any:
    """Structure ``data`` into ``cls`` or raise :class:`ConfigError` with every issue."""
    s = Structurer(registry)
    out = s.structure_class(cls, data, ())
    if s.issues:
        raise ConfigError(s.issues)
    return out


def unstructure(obj: Any) -> Any:
    """Config object -> plain YAML-able data (components as ``{name: ..., fields}``)."""
    if isinstance(obj, Spec):
        return {"name": obj.name, **unstructure(obj.config)}
    if attrs.has(type(obj)):
        return {f.name: unstructure(getattr(obj, f.name)) for f in attrs.fields(type(obj))}
    if isinstance(obj, list | tuple):
        return [unstructure(v) for v in obj]
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    return obj


def iter_specs(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Spec]]:
    """Every :class:`Spec` inside a config object, with its path, outermost first."""
    if isinstance(obj, Spec):
        yield path, obj
        yield from iter_specs(obj.config, path)
    elif attrs.has(type(obj)):
        for f in attrs.fields(type(obj)):
            yield from iter_specs(getattr(obj, f.name), (*path, f.name))
    elif isinstance(obj, tuple | list):
        for i, v in enumerate(obj):
            yield from iter_specs(v, (*path, i))
