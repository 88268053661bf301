"""Safe YAML with source positions, ``extends:`` inheritance and ``a.b.c=value`` overrides.

Only ``yaml.SafeLoader`` is used, so a config can never construct Python objects. Every
mapping key and value is remembered with the file and line it came from, so errors found
later (while structuring) can point at the line to fix.
"""

from __future__ import annotations

import copy
import os
import stat
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


# Limits on what a config file may be: far above any real config, far below what would exhaust
# memory or the interpreter's stack (an alias "billion laughs" expands 9 aliases 9 levels deep).
MAX_FILE_BYTES = 4 * 2**20
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_ALIASES = 1_000


class _LimitError(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses deep nesting and floods of aliases.

    PyYAML composes recursively, so 100k nested ``[`` would end in a RecursionError; here the
    depth is counted and refused first, with the line where the limit was crossed."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _LimitError(f"more than {MAX_ALIASES} aliases (*name)", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _LimitError(f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse(text: str, source: str) -> tuple[Any, Positions]:
    """Parse YAML safely, returning data and the line of each mapping entry."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        line = text[: exc.position].count("\n") + 1
        message = f"YAML error: control character #x{char:04x} is not allowed in a config"
        raise ConfigError([Issue((), message, file=source, line=line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, source)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return {}, {}
    positions: Positions = {}
    budget = _Budget()
    try:
        data = _construct(node, (), source, positions, budget)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, source)]) from None
    return data, positions


class _Budget:
    """Counts constructed nodes: aliases share nodes, so a small file can expand hugely."""

    def __init__(self) -> None:
        self.nodes = 0
        self.loader = yaml.SafeLoader("")  # constructs scalars; one per document, not per value

    def spend(self, node: yaml.Node, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _LimitError(
                f"expands to more than {MAX_NODES} values (aliases repeated too often)",
                node.start_mark,
            )
        if depth > MAX_DEPTH:  # a recursive alias (&a [*a]) or aliases stacked deep
            raise _LimitError(f"nested deeper than {MAX_DEPTH} levels", node.start_mark)


def _construct(
    node: yaml.Node, path: Path_, source: str, positions: Positions, budget: _Budget
) -> Any:
    budget.spend(node, len(path))
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN_TAGS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"could not determine a constructor for the tag {node.tag!r}",
            node.start_mark,
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        loader = budget.loader
        own = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
        seen: dict[str, yaml.Node] = {}
        for key_node in own:  # a key written twice: the last would silently win
            key = _key(loader, key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise _LimitError(f"duplicate key {key!r} (first set on line {first})",
                                  key_node.start_mark)  # fmt: skip
            seen[key] = key_node
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<); own keys come last
        for key_node, value_node in node.value:
            key = _key(loader, key_node)
            positions[(*path, key)] = (source, key_node.start_mark.line + 1)
            out[key] = _construct(value_node, (*path, key), source, positions, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            positions[(*path, i)] = (source, item.start_mark.line + 1)
            items.append(_construct(item, (*path, i), source, positions, budget))
        return items
    return budget.loader.construct_object(node, deep=True)


def _key(loader: yaml.SafeLoader, key_node: yaml.Node) -> str:
    if not isinstance(key_node, yaml.ScalarNode):
        raise _LimitError("a mapping key must be a plain value, not a list or mapping",
                          key_node.start_mark)  # fmt: skip
    key = loader.construct_object(key_node, deep=True)
    return key if isinstance(key, str) else str(key)


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


# ``extends:`` stays inside the folder of the file named on the command line (and the folders
# under it), so a config cannot pull in -- and echo into its errors -- any file it likes;
# PONDERKIT_EXTENDS_ANYWHERE=1 allows any readable file.
EXTENDS_ANYWHERE_ENV = "PONDERKIT_EXTENDS_ANYWHERE"


def _resolved(path: Path, at: tuple, where: str | None) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        problem = getattr(exc, "strerror", None) or "a symbolic link loop"
        raise ConfigError([Issue(at, f"{path}: {problem}", file=where)]) from None


def _load_with_extends(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Positions]:
    at = ("extends",) if chain else ()
    resolved = _resolved(path, at, str(chain[-1]) if chain else None)
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError([Issue(("extends",), f"cyclic extends: {cycle}", file=str(path))])
    text = read_config_text(path, chain[-1] if chain else None)
    data, positions = _parse(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError([Issue((), "the top level must be a mapping of keys", file=str(path))])
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, positions
    line = positions.get(("extends",), (None, None))[1]
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise ConfigError([Issue(("extends",), "extends must be a file name", file=str(path),
                                 line=line)])  # fmt: skip
    parent = path.parent / parent_ref
    root = (chain[0] if chain else resolved).parent
    target = _resolved(parent, ("extends",), str(path))
    if not target.is_relative_to(root) and os.environ.get(EXTENDS_ANYWHERE_ENV) != "1":
        raise ConfigError(
            [
                Issue(
                    ("extends",),
                    f"{_short(parent_ref)} is outside {root}, the experiment's folder "
                    f"(set {EXTENDS_ANYWHERE_ENV}=1 to allow it)",
                    file=str(path),
                    line=line,
                )
            ]
        )
    parent_data, parent_pos = _load_with_extends(parent, (*chain, resolved))
    merged = deep_merge(parent_data, data)
    return merged, {**parent_pos, **positions}


def _short(text: str, limit: int = 200) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def read_config_text(path: Path, referrer: Path | None = None) -> str:
    """The text of a config file, or one ConfigError saying why it cannot be read."""
    what = "extends file" if referrer else "config file"
    at = ("extends",) if referrer else ()
    where = str(referrer) if referrer else None

    def fail(message: str, file: str | None = where, line: int | None = None) -> ConfigError:
        return ConfigError([Issue(at, message, file=file, line=line)])

    try:
        if path.is_dir():
            raise fail(f"{what} {path} is a directory, not a file")
        # O_NONBLOCK: a named pipe opens at once instead of waiting for a writer, and is then
        # refused with every other special file (a device would read forever)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = "a named pipe" if stat.S_ISFIFO(mode) else "a special file"
                raise fail(f"{what} {path} is {kind}, not a regular file")
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise fail(f"{what} not found: {path}") from None
    except OSError as exc:
        raise fail(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise fail(f"{what} {path} is larger than {MAX_FILE_BYTES // 2**20} MiB; not a config")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start : exc.start + 1].hex()
        raise ConfigError(
            [
                Issue(
                    (),
                    f"not UTF-8 text (byte 0x{byte} at offset {exc.start})",
                    file=str(path),
                    line=line,
                )
            ]  # fmt: skip
        ) from None


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` (a child file) over ``base`` (the file it extends), by these rules:

    1. a key only one of them sets keeps its value; a scalar or list in ``top`` replaces;
    2. ``null`` in ``top`` keeps ``base``'s value ("use the parent's"; an override on the
       command line, ``key=null``, sets null);
    3. two mappings merge key by key, by the same rules;
    4. a component named in ``top`` (``ffn: swiglu`` or ``{name: swiglu, ...}``) that is the
       component ``base`` names there keeps ``base``'s fields (``top``'s own fields merged
       over them); naming another component replaces them all, as they belong to the other.
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        old = out.get(key)
        if value is None and key in out:
            continue
        if isinstance(old, str) and isinstance(value, dict) and value.get("name", old) == old:
            old = {"name": old}  # a bare name in base, fields in top: the same component
        if isinstance(old, dict) and isinstance(value, str) and old.get("name") == value:
            continue  # the same component by its bare name: base's fields stay
        if isinstance(old, dict) and isinstance(value, dict) and _same_component(old, value):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _same_component(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return "name" not in b or a.get("name") == b.get("name")


def parse_value(text: str) -> Any:
    """One YAML value (an override's right-hand side) under the same limits as a file."""
    data, _ = _parse(text, OVERRIDE_ORIGIN)
    return None if data == {} and not text.strip().startswith("{") else data


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
            value = parse_value(raw) if raw.strip() else ""
        except ConfigError as exc:
            problem = exc.issues[0].message.removeprefix("YAML error: ")
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            issues.append(
                Issue(
                    path,
                    f"override value {shown!r} is not valid YAML: {problem}",
                    file=OVERRIDE_ORIGIN,
                )  # fmt: skip
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
        if nxt is _MISSING and isinstance(node, list):
            return f"list index {part} out of range (the list has {len(node)} items)"
        if nxt is _MISSING:
            node[part] = nxt = {}
        elif isinstance(nxt, str) and isinstance(node, dict | list):  # bare component name
            node[part] = nxt = {"name": nxt}  # (a list of them: callbacks.0.decay=0.9)
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
