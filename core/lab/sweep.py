"""Sweeps: values of dotted config keys expanded into an ablation's variants.

On the command line (repeatable; values are YAML scalars separated by commas)::

    ponderkit ablate FILE --sweep optimizer.lr=1e-4,3e-4,1e-3 --sweep model.d_model=32,64

In an ablation file::

    sweep:
      mode: product        # product (every combination; the default) or zip (i-th with i-th)
      keys:
        optimizer.lr: [1.0e-4, 3.0e-4, 1.0e-3]
        model.d_model: [32, 64, 128]

Each point of the sweep is a variant named by its values (``lr-0.0001_d_model-32``: the last
part of each key, or the whole dotted key where two keys share a last part). Keys given both in
the file and on the command line: the command line's values replace the file's. Crossed with
the file's ``variants:``: every variant at every point (``VARIANT.POINT``); without variants
the points are the variants. The baseline is the baseline variant at the first point (the
first value of every key).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

import attrs

from ..contract.errors import Issue
from ..contract.yamlio import Document, parse_value

MODES = ("product", "zip")
MAX_POINTS = 1000  # a sweep of 10 keys x 10 values would otherwise expand into 1e10 variants
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")
# YAML 1.2 reads 1e-4 as a number; PyYAML (YAML 1.1) reads it as text without a dot
FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
CLI_ORIGIN = "--sweep"
Where = tuple[str | None, int | None]


@attrs.frozen
class Axis:
    """One swept key: its values, the text each was written as, and where it was written."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]
    where: Where = (None, None)


@attrs.frozen
class Sweep:
    mode: str
    axes: tuple[Axis, ...]

    def points(self) -> list[tuple[str, list[tuple[Axis, int]]]]:
        """``[(name, [(axis, value index), ...]), ...]`` in order, the first point first."""
        sizes = [range(len(a.values)) for a in self.axes]
        combos = itertools.product(*sizes) if self.mode == "product" else zip(*sizes, strict=True)
        labels = _labels([a.key for a in self.axes])
        out = []
        for combo in combos:
            name = "_".join(
                f"{labels[a.key]}-{_safe(a.texts[i])}"
                for a, i in zip(self.axes, combo, strict=True)
            )
            out.append((name, list(zip(self.axes, combo, strict=True))))
        return out


def _labels(keys: Sequence[str]) -> dict[str, str]:
    """The last part of each key, or the whole key where two keys end alike."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (n if last.count(n) == 1 else k) for k, n in zip(keys, last, strict=True)}


def _safe(text: str) -> str:
    """``text`` as part of a directory name (letters, digits, ``_ . -``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def _scalar(text: str) -> Any:
    value = parse_value(text)
    if isinstance(value, str) and FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def parse_cli(texts: Sequence[str]) -> tuple[list[Axis], list[Issue]]:
    """``--sweep KEY=V1,V2,...`` options as axes (the order given), and their problems."""
    axes, issues = [], []
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()

        def bad(message: str, key: str = key) -> None:
            path = tuple(key.split(".")) if key and KEY_RE.match(key) else ()
            issues.append(Issue(path, message, file=CLI_ORIGIN))

        if not sep or not KEY_RE.match(key):
            bad(f"{text!r} is not KEY=V1,V2,... (KEY a dotted config path, e.g. optimizer.lr)")
            continue
        parts = [p.strip() for p in raw.split(",")]
        if not raw.strip() or any(not p for p in parts):
            bad(f"{text!r}: an empty value; give values separated by commas (1e-4,3e-4)")
            continue
        values = []
        for p in parts:
            try:
                values.append(_scalar(p))
            except Exception as exc:  # a ConfigError from the YAML parser: one line says it
                bad(f"value {p!r} is not a YAML scalar ({str(exc).splitlines()[0]})")
                break
        else:
            if not all(map(_is_scalar, values)):
                bad(f"{text!r}: values are scalars (numbers, text, true/false, null)")
            elif len(set(map(json.dumps, values))) < len(values):
                bad(f"{text!r}: a value repeats")
            elif any(a.key == key for a in axes):
                bad(f"{key} is swept twice on the command line")
            else:
                axes.append(Axis(key, tuple(values), tuple(parts), (CLI_ORIGIN, None)))
    return axes, issues


def parse_file(value: Any, doc: Document) -> tuple[str, list[Axis], list[Issue]]:
    """The ``sweep:`` section of an ablation file: (mode, axes, problems located in the file)."""
    issues: list[Issue] = []

    def bad(path: tuple, message: str) -> None:
        issues.append(doc.locate(Issue(("sweep", *path), message)))

    if value is None:
        return "product", [], issues
    if not isinstance(value, dict) or set(value) - {"mode", "keys"} or "keys" not in value:
        bad((), "expected {mode: product|zip, keys: {dotted.key: [values...]}}")
        return "product", [], issues
    mode = value.get("mode", "product")
    if mode not in MODES:
        bad(("mode",), f"expected one of {', '.join(MODES)}, got {mode!r}")
        mode = "product"
    keys = value["keys"]
    if not isinstance(keys, dict) or not keys:
        bad(("keys",), "expected a mapping {dotted.key: [values...]} with at least one key")
        return mode, [], issues
    axes = []
    for key, values in keys.items():
        at = ("keys", key)
        if not isinstance(key, str) or not KEY_RE.match(key):
            bad(at, f"{key!r} is not a dotted config path (e.g. optimizer.lr)")
        elif not isinstance(values, list) or not values:
            bad(at, f"expected a non-empty list of values, got {values!r}")
        elif not all(map(_is_scalar, values)):
            bad(at, "values are scalars (numbers, text, true/false, null)")
        elif len(set(map(json.dumps, values))) < len(values):
            bad(at, f"a value repeats: {values}")
        else:
            texts = tuple(_text(v) for v in values)
            axes.append(Axis(key, tuple(values), texts, doc.where(("sweep", *at))))
    return mode, axes, issues


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if not isinstance(value, str) else value


def expand(
    named: dict[str, list[Any]],
    baseline: str,
    explicit: bool,
    file_value: Any,
    cli: Sequence[str],
    doc: Document,
    issues: list[Issue],
    override: Any,
) -> tuple[dict[str, list[Any]], str]:
    """``named`` (variant -> overrides) crossed with the sweep of the file and ``cli``; the new
    baseline. ``override(text, where)`` makes one override (the ablation's ``Override``).
    Without a sweep, ``named`` and ``baseline`` come back as they are."""
    mode, axes, found = parse_file(file_value, doc)
    cli_axes, cli_found = parse_cli(cli)
    issues += found + cli_found
    given = {a.key for a in cli_axes}
    axes = [a for a in axes if a.key not in given] + cli_axes
    if not axes:
        return named, baseline
    if mode == "zip" and len({len(a.values) for a in axes}) > 1:
        sizes = ", ".join(f"{a.key}: {len(a.values)}" for a in axes)
        issues.append(doc.locate(Issue(("sweep", "mode"), f"zip needs as many values for "
                                       f"every key ({sizes})")))  # fmt: skip
        return named, baseline
    sweep = Sweep(mode, tuple(axes))
    total = len(named if explicit else [None]) * _count(sweep)
    if total > MAX_POINTS:
        issues.append(doc.locate(Issue(("sweep",), f"{total} variants; at most {MAX_POINTS}")))
        return named, baseline
    points = sweep.points()
    sources = named if explicit else {"": []}
    out: dict[str, list[Any]] = {}
    for variant, overrides in sources.items():
        for point, chosen in points:
            name = f"{variant}.{point}" if variant else point
            extra = [override(f"{a.key}={json.dumps(a.values[i])}", a.where) for a, i in chosen]
            out[name] = [*overrides, *extra]
    first = points[0][0]
    return out, (f"{baseline}.{first}" if explicit else first)


def _count(sweep: Sweep) -> int:
    n = 1
    for a in sweep.axes:
        n = n * len(a.values) if sweep.mode == "product" else len(a.values)
    return n
