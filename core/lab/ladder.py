"""Factor ladders: from one arm to another, one factor group at a time.

An ablation file may ask for them (see :mod:`~ponderkit.lab.ablation`)::

    ladders:
      - {from: trm_att, to: adr0005_dyntrm}                    # the path, default order
      - {from: trm_att, to: adr0004_dynmoe, order: [mixer, ffn, recursion], merge: false}
      - {from: trm_att, to: adr0005_dyntrm, mode: add_one_in}  # from + one group of `to`
      - {from: trm_att, to: adr0005_dyntrm, mode: leave_one_out}  # `to` less one group
      - {from: trm, to: adr0005_dyntrm, order: [[ffn, router, library], [recursion, halting]]}

An entry of ``order`` may be a list of groups: a *bundle* that moves in one rung (named
``..+ffn_and_router_and_library``), for a short ladder whose rungs are coarser than one group.

A resolved config's keys fall into factor groups (:data:`GROUP_PATTERNS`; ``other`` takes the
rest). A key that exists on one side only (a dynsmha mixer's router, absent from an attention
mixer) belongs to the group of the component whose change brought or removed it. Moving a
group takes the target's keys of that group; a component that a move brings in takes its
defaults for keys of groups not moved yet (so a dynsmha mixer arrives with its default router
and the target's router settings come on the ``router`` rung).

Every rung is validated (and, as for variants, built on the meta device) before any run. A
rung that cannot be built is merged with the next group in the order (``merge: true``, the
default; the rung is then named ``..+halting_and_schedule``), or, with ``merge: false``,
refused in one line that names it and suggests an order that builds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from ..contract.config import unstructure
from ..contract.errors import ConfigError
from ..contract.experiment import ExperimentConfig

#: a factor group -> the resolved-config keys (dotted, as :func:`flat_config` writes them) it
#: holds; the first pattern that matches a key decides (``library`` before ``mixer``)
GROUP_PATTERNS: dict[str, str] = {
    "library": r"model\.recursion\.block\.(mixer|ffn)\.library",
    "router": r"model\.recursion\.block\.(mixer|ffn)\.router(\..*)?",
    "mixer": r"model\.recursion\.block\.mixer(\..*)?",
    "ffn": r"model\.recursion\.block\.ffn(\..*)?",
    "block": r"model\.recursion\.block(\..*)?",  # the block itself: post_norm / pre_norm
    "recursion": r"model\.recursion(\..*)?",
    "halting": r"model\.halting(\..*)?",
    "schedule": r"schedule(\..*)?",
    "positions": r"model\.positions",
    "callbacks": r"callbacks(\..*)?",
}
OTHER = "other"
GROUPS = (*GROUP_PATTERNS, OTHER)
#: positions first (attention needs RoPE, TRM's mlp_t ignores it), then the block's parts, the
#: depth, and what depth implies for halting and the schedule
DEFAULT_ORDER = ("positions", "mixer", "ffn", "router", "library", "block", "recursion",
                 "halting", "schedule", "callbacks", OTHER)  # fmt: skip
MODES = ("path", "add_one_in", "leave_one_out")
IGNORED = ("seed", "name")  # every arm of a grid differs in these by construction
_MISSING = object()
_COMPILED = {g: re.compile(p + r"\Z") for g, p in GROUP_PATTERNS.items()}


# -- resolved configs as flat keys ---------------------------------------------------------------
def flat_config(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as ``{dotted.key: value}`` (lists and tuples are leaves)."""
    out: dict[str, Any] = {}

    def walk(value: Any, path: tuple[str, ...]) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, (*path, str(k)))
        else:
            out[".".join(path)] = value

    walk(unstructure(config), ())
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flat_config` (as plain data a config can be structured from)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def config_differences(base: ExperimentConfig, other: ExperimentConfig) -> dict[str, list]:
    """Every resolved-config key whose value differs: ``{key: [base value, other value]}``
    (``seed`` and ``name`` excluded; a key missing on one side shows as None)."""
    a, b = flat_config(base), flat_config(other)
    return {
        k: [a.get(k), b.get(k)]
        for k in sorted(a.keys() | b.keys())
        if k not in IGNORED and a.get(k) != b.get(k)
    }


# -- factor groups -------------------------------------------------------------------------------
def classify(key: str) -> str:
    """The factor group a resolved-config key belongs to by its path."""
    return next((g for g, p in _COMPILED.items() if p.match(key)), OTHER)


def owner(key: str, a: dict[str, Any], b: dict[str, Any]) -> str:
    """The group a differing key belongs to between flat configs ``a`` and ``b``: its own, or,
    when it exists on one side only, that of the nearest enclosing component present on both
    sides whose ``name`` differs (the change that brought or removed it)."""
    if key in a and key in b:
        return classify(key)
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:n]) + ".name"
        if name in a and name in b and a[name] != b[name]:
            return classify(name)
    return classify(key)


def differing_groups(a: ExperimentConfig, b: ExperimentConfig) -> dict[str, list[str]]:
    """Group -> the keys of :func:`config_differences` it owns (groups that differ only)."""
    return differing_flat(flat_config(a), flat_config(b))


def differing_flat(fa: dict[str, Any], fb: dict[str, Any]) -> dict[str, list[str]]:
    """:func:`differing_groups` of two flat configs."""
    out: dict[str, list[str]] = {}
    for key in sorted(fa.keys() | fb.keys()):
        if key not in IGNORED and fa.get(key, _MISSING) != fb.get(key, _MISSING):
            out.setdefault(owner(key, fa, fb), []).append(key)
    return out


def move(current: dict[str, Any], target: dict[str, Any], groups: set[str]) -> dict[str, Any]:
    """``current`` with ``groups`` taken from ``target``: their keys as the target has them;
    keys a changed component removes are dropped, and keys it brings in that belong to another
    group are left out (the component's defaults fill them until that group moves)."""
    out = {}
    for key, value in current.items():
        if key in IGNORED or (owner(key, current, target) not in groups):
            out[key] = value
        elif key in target and classify(key) in groups:
            out[key] = target[key]
    for key, value in target.items():  # brought in: of a moved group, by a moved component
        if key not in current and {classify(key), owner(key, current, target)} <= groups:
            out[key] = value
    return out


# -- ladder specs and their rungs ----------------------------------------------------------------
@attrs.frozen
class LadderSpec:
    """One entry of ``ladders:``."""

    source: str  # ``from:``
    target: str  # ``to:``
    mode: Literal["path", "add_one_in", "leave_one_out"] = "path"
    order: tuple[str | tuple[str, ...], ...] = DEFAULT_ORDER  # a tuple: a bundle of groups
    merge: bool = True


@attrs.frozen
class Rung:
    """A derived arm: ``config`` differs from ``parent``'s in ``groups`` only."""

    name: str
    parent: str  # the arm it is compared with (the previous rung; add/leave: from/to)
    groups: tuple[str, ...]
    config: ExperimentConfig
    merged: str = ""  # why groups moved together: the error of the first alone

    @property
    def step(self) -> str:
        return "_and_".join(self.groups)


class RungError(Exception):
    """A rung that cannot be built; the message is one line."""


Build = Callable[[dict[str, Any]], ExperimentConfig]  # raises ConfigError


def derive(spec: LadderSpec, source: ExperimentConfig, target: ExperimentConfig, build: Build,
           names: tuple[str, str] | None = None) -> list[Rung]:  # fmt: skip
    """The rungs of ``spec`` between the resolved configs ``source`` and ``target``.

    ``build(flat) -> config`` validates a candidate (raising ConfigError). ``path``: a chain
    from ``source`` whose last rung is ``target`` itself; ``add_one_in``: ``source`` plus each
    group of ``target``; ``leave_one_out``: ``target`` less each group (the source's instead).
    Raises :class:`RungError` for a rung that cannot be built and may not merge."""
    src_name, dst_name = names or (spec.source, spec.target)
    a, b = flat_config(source), flat_config(target)
    todo = _ordered(spec.order, differing_flat(a, b))
    if spec.mode == "path":
        return _path(spec, todo, a, b, build, src_name, dst_name)
    rungs = []
    start, goal, parent, sign = (a, b, src_name, "+") if spec.mode == "add_one_in" else (
        b, a, dst_name, "-")  # fmt: skip
    i = 0
    while i < len(todo):
        config, taken, why, used = _first_buildable(todo, i, start, goal, build, spec, parent, sign)
        rungs.append(Rung(f"{parent}{sign}{'_and_'.join(taken)}", parent, taken, config, why))
        i += used
    return rungs


def _path(spec, todo, a, b, build, src_name, dst_name) -> list[Rung]:
    """A chain of rungs; the groups left to move are read again after each rung, since a
    component a rung brings in may come with defaults that differ from the target's."""
    rungs, current, name = [], a, src_name
    while todo:
        config, taken, why, _ = _first_buildable(todo, 0, current, b, build, spec, name, "+")
        if flat_config(config) == current:  # cannot happen by the owner rule; never loop on it
            raise RungError(f"rung {name}+{'_and_'.join(taken)} changes nothing")
        current = flat_config(config)
        todo = _ordered(spec.order, differing_flat(current, b))
        rung_name = dst_name if not todo else f"{name}+{'_and_'.join(taken)}"
        rungs.append(Rung(rung_name, name, taken, config, why))
        name = rung_name
    return rungs


def _bundle(entry: str | Sequence[str]) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _ordered(order: Sequence[Any], differing: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """The bundles of ``order`` (a group alone is a bundle of one) that ``differing`` touches;
    groups ``order`` leaves out follow alone, in the default order.

    A bundle stays whole while any of its groups differs: a component it brings in (a dynsmha
    mixer) may bring keys of its other groups (the mixer's router) that differ only after it
    arrives, and they move in the same rung."""
    named = {g for e in order for g in _bundle(e)}
    todo = [b for b in map(_bundle, order) if (len(b) > 1 and any(g in differing for g in b))
            or (len(b) == 1 and b[0] in differing)]  # fmt: skip
    return todo + [(g,) for g in DEFAULT_ORDER if g in differing and g not in named]


def _moved(before: dict[str, Any], after: dict[str, Any], groups: Sequence[str]) -> tuple:
    """The groups of ``groups`` (in their order) that a rung from ``before`` to ``after``
    changed, by the changed keys' own groups and their owners: the rung's name."""
    changed = set()
    for key in before.keys() | after.keys():
        if key not in IGNORED and before.get(key, _MISSING) != after.get(key, _MISSING):
            changed |= {classify(key), owner(key, before, after)}
    return tuple(g for g in groups if g in changed) or tuple(groups)


def _first_buildable(todo, i, current, goal, build, spec, name, sign):
    """(config, groups, why merged, bundles used) for the rung that moves the bundle
    ``todo[i]`` (and the bundles after it that it must move with, where merging is allowed)."""
    used, first_error = 1, ""
    while True:
        taken = [g for bundle in todo[i : i + used] for g in bundle]
        try:
            config = build(move(current, goal, set(taken)))
            return config, _moved(current, flat_config(config), taken), first_error, used
        except ConfigError as exc:
            reason = _one_line(exc)
            first_error = first_error or f"{'_and_'.join(todo[i])} alone: {reason}"
            if not spec.merge or i + used >= len(todo):
                rung = f"{name}{sign}{'_and_'.join(taken)}"
                hint = _suggest(todo, current, goal, build) if sign == "+" else None
                advice = (
                    f"try order: [{', '.join(hint)}]" if hint else "allow merge: true"
                )  # fmt: skip
                raise RungError(f"rung {rung} cannot be built ({reason}); {advice}") from None
            used += 1


def _suggest(todo, current, goal, build) -> list[str] | None:
    """An order of ``todo`` in which every single-group rung builds (greedy), or None."""
    left, order = list(todo), []
    while left:
        for g in left:
            try:
                config = build(move(current, goal, set(g)))
            except ConfigError:
                continue
            order.append(g[0] if len(g) == 1 else f"[{', '.join(g)}]")
            left.remove(g)
            current = flat_config(config)
            break
        else:
            return None
    return order


def _one_line(exc: ConfigError) -> str:
    issue = exc.issues[0] if exc.issues else None
    if issue is None:
        return str(exc).splitlines()[0]
    text = ".".join(map(str, issue.path)) + ": " + issue.message if issue.path else issue.message
    more = f" (+{len(exc.issues) - 1} more)" if len(exc.issues) > 1 else ""
    return text + more


def check_order(order: Sequence[Any]) -> str | None:
    """Why ``order`` is not a list of distinct known groups (or lists of them, bundles), or
    None."""
    if any(not isinstance(e, str) and not (isinstance(e, list | tuple) and e) for e in order):
        return "expected a list of groups, or of lists of groups (bundles moved in one rung)"
    flat = [g for e in order for g in _bundle(e)]
    bad = [g for g in flat if not isinstance(g, str) or g not in GROUPS]
    if bad:
        return f"unknown group(s) {bad}; groups: {', '.join(GROUPS)}"
    if len(set(flat)) != len(flat):
        return f"groups repeat: {list(flat)}"
    return None


def parse_specs(value: Any) -> tuple[list[tuple[int, LadderSpec]], list[tuple[tuple, str]]]:
    """``ladders:`` (a list of mappings, or one mapping) -> ``(index, spec)``s and
    ``(path, problem)``s."""
    if value is None:
        return [], []
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        return [], [(("ladders",), "expected a list of {from: ARM, to: ARM[, mode, order, merge]}")]
    specs, problems = [], []
    known = {"from", "to", "mode", "order", "merge"}
    for i, item in enumerate(items):
        at = ("ladders", i)
        if not isinstance(item, dict) or not {"from", "to"} <= set(item):
            problems.append((at, "expected {from: ARM, to: ARM[, mode, order, merge]}"))
            continue
        extra = sorted(set(item) - known)
        if extra:
            problems.append(((*at, extra[0]), f"unknown key; keys: {', '.join(sorted(known))}"))
        mode = item.get("mode", "path")
        if mode not in MODES:
            problems.append(((*at, "mode"), f"expected one of {', '.join(MODES)}, got {mode!r}"))
        order = item.get("order", DEFAULT_ORDER)
        bad = check_order(order) if isinstance(order, list | tuple) else "expected a list"
        if bad:
            problems.append(((*at, "order"), bad))
        merge = item.get("merge", True)
        if not isinstance(merge, bool):
            problems.append(((*at, "merge"), f"expected true or false, got {merge!r}"))
        if extra or mode not in MODES or bad or not isinstance(merge, bool):
            continue
        order = tuple(e if isinstance(e, str) else tuple(e) for e in order)
        specs.append((i, LadderSpec(str(item["from"]), str(item["to"]), mode, order, merge)))
    return specs, problems
