"""Safe YAML with source positions, ``extends:`` inheritance and ``a.b.c=value`` overrides.

Only ``yaml.SafeLoader`` is used, so a config can never construct Python objects. Every
mapping key and value is remembered with the file and line it came from, so errors found
later (while structuring) can point at the line to fix.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, Issue

Path_ = tuple[str | int, ...]
Positions = dict[Path_, tuple[str, int]]
OVERRIDE_ORIGIN = "<command line>"


class Document:
    """A parsed config: plain data plus where each path came from."""

    def __init__(self, data: dict[str, Any], positions: Positions, source: str):
        self.data = data
        self.positions = positions
        self.source = source

    def where(self, path: Path_) -> tuple[str | None, int | None]:
        """File and line of ``path`` or of its nearest ancestor that has one."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.positions:
                return self.positions[path[:n]]
        return self.source, None

    def locate(self, issue: Issue) -> Issue:
        file, line = self.where(issue.path)
        return issue.located(file, line)


def _parse(text: str, source: str) -> tuple[Any, Positions]:
    """Parse YAML safely, returning data and the line of each mapping entry."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, source)]) from None
    if node is None:
        return {}, {}
    positions: Positions = {}
    try:
        data = _construct(node, (), source, positions)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, source)]) from None
    return data, positions


def _construct(node: yaml.Node, path: Path_, source: str, positions: Positions) -> Any:
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"could not determine a constructor for the tag {node.tag!r}",
            node.start_mark,
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        loader = yaml.SafeLoader("")
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            positions[(*path, key)] = (source, key_node.start_mark.line + 1)
            out[key] = _construct(value_node, (*path, key), source, positions)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            positions[(*path, i)] = (source, item.start_mark.line + 1)
            items.append(_construct(item, (*path, i), source, positions))
        return items
    return yaml.SafeLoader("").construct_object(node, deep=True)


_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


def _yaml_issue(exc: yaml.YAMLError, source: str) -> Issue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    if "python/" in str(problem) or "could not determine a constructor" in str(problem):
        problem = f"{problem}; configs are loaded safely and cannot construct Python objects"
    return Issue((), f"YAML error: {problem}", file=source, line=line)


def load_document(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Document:
    """Load ``path`` following ``extends:`` chains, then apply command-line overrides."""
    data, positions = _load_with_extends(Path(path), ())
    doc = Document(data, positions, str(path))
    apply_overrides(doc, overrides)
    return doc


def _load_with_extends(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Positions]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError([Issue(("extends",), f"cyclic extends: {cycle}", file=str(path))])
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        referrer = str(chain[-1]) if chain else None
        what = "extends file" if chain else "config file"
        raise ConfigError(
            [Issue(("extends",) if chain else (), f"{what} not found: {path}", file=referrer)]
        ) from None
    data, positions = _parse(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError([Issue((), "the top level must be a mapping of keys", file=str(path))])
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, positions
    if not isinstance(parent_ref, str):
        raise ConfigError(
            [
                Issue(
                    ("extends",),
                    "extends must be a file name",
                    file=str(path),
                    line=positions.get(("extends",), (None, None))[1],
                )
            ]
        )
    parent_data, parent_pos = _load_with_extends(path.parent / parent_ref, (*chain, resolved))
    merged = deep_merge(parent_data, data)
    return merged, {**parent_pos, **positions}


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; mappings merge key by key, a component's ``name`` change replaces.

    When ``top`` names a different component (``name:``) than ``base`` at the same place, the
    base's fields belong to another component, so the whole mapping is replaced.
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and _same_component(old, value):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _same_component(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return "name" not in b or a.get("name") == b.get("name")


def apply_overrides(doc: Document, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to ``doc`` in place."""
    issues = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        path: Path_ = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
        if not sep or not key.strip() or any(p == "" for p in path):
            issues.append(
                Issue(
                    (), f"override {text!r} is not of the form key.path=value", file=OVERRIDE_ORIGIN
                )
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            issues.append(
                Issue(
                    path, f"override value {raw!r} is not valid YAML: {exc}", file=OVERRIDE_ORIGIN
                )
            )
            continue
        problem = _set_path(doc.data, path, value)
        if problem:
            issues.append(Issue(path, problem, file=OVERRIDE_ORIGIN))
            continue
        doc.positions[path] = (OVERRIDE_ORIGIN, 0)
        if isinstance(value, dict):
            for sub in value:
                doc.positions[(*path, sub)] = (OVERRIDE_ORIGIN, 0)
    if issues:
        raise ConfigError(issues)


def _set_path(data: Any, path: Path_, value: Any) -> str | None:
    node = data
    for i, part in enumerate(path[:-1]):
        nxt = _child(node, part)
        if nxt is _MISSING:
            node[part] = nxt = {}
        elif isinstance(nxt, str) and isinstance(node, dict):  # bare component name
            node[part] = nxt = {"name": nxt}
        if isinstance(nxt, list) and not isinstance(path[i + 1], int):
            return f"{'.'.join(map(str, path[: i + 1]))} is a list; index it with a number"
        if not isinstance(nxt, dict | list):
            return f"cannot set a key under {'.'.join(map(str, path[: i + 1]))}, which is {nxt!r}"
        node = nxt
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            return f"list index {last} out of range (the list has {len(node)} items)"
        node[last] = value
    else:
        if isinstance(node.get(last), dict) and isinstance(value, str):
            # `model.halting=q_head` names a component: keep only its name
            value = {"name": value}
        node[last] = value
    return None


_MISSING = object()


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return _MISSING


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
