"""Researcher tools on the command line: ``validate`` of ablation files, ``config``, ``diff``,
``trace``, ``predict`` and ``new-plugin``; ``cli.py`` registers them.

Heavy imports happen inside the commands, as in ``cli.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contract.errors import ConfigError, InputError, Issue, TextError, suggestion
from ..contract.loading import Plugins


def add_tool_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's commands to ``ponderkit``'s subparsers."""
    p = sub.add_parser(
        "config",
        parents=[common],
        help="print the resolved experiment (defaults, extends, overrides) as YAML",
    )
    p.add_argument("file", metavar="FILE[:VARIANT]|RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")

    p = sub.add_parser(
        "diff", parents=[common], help="the keys where two experiments or runs differ"
    )
    p.add_argument("a", metavar="A", help="an experiment file, FILE:VARIANT of an ablation, a run")
    p.add_argument("b", metavar="B")

    p = sub.add_parser(
        "trace",
        parents=[common],
        help="a run's answer step by step on one puzzle, as a PNG sheet and an animated GIF",
    )
    p.add_argument("run_dir", type=Path)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample", type=int, help="held-out sample index (default 0)")
    which.add_argument("--data", type=Path, help="a puzzle as text (as `predict` reads it)")
    p.add_argument("--out", type=Path, help="folder for the images (default RUN_DIR/trace)")
    p.add_argument("--checkpoint", default="final", help="checkpoint name (default final)")

    p = sub.add_parser(
        "predict", parents=[common], help="solve a puzzle given as text with a trained run"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("file", type=Path, help="the puzzle as text ('-': standard input)")
    p.add_argument("--checkpoint", default="final", help="checkpoint name (default final)")
    p.add_argument(
        "--all-steps",
        action="store_true",
        help="run every step instead of stopping where the halting policy says",
    )

    p = sub.add_parser(
        "new-plugin",
        parents=[common],
        help="write an installable plugin package with a component, its test and an example",
    )
    p.add_argument("dir", type=Path)
    p.add_argument(
        "--kind",
        required=True,
        help="the kind of component: ffn, mixer, halting, router, recursion, schedule, "
        "callback or task",
    )
    p.add_argument("--name", help="component name (default: from DIR)")


# -- validate on an ablation file ---------------------------------------------------------------
def is_ablation_file(path: Path) -> bool:
    """Whether ``path`` is an ablation file (``base:`` and no ``task:``), as ``ablate`` reads."""
    from ..contract.yamlio import load_document

    try:
        data = load_document(path).data
    except ConfigError:
        return False  # the experiment path reports it
    return "base" in data and "task" not in data


def validate_ablation(args: argparse.Namespace, plugins: Plugins) -> int:
    """Validate an ablation's base and every variant, all errors at once; one ``ok`` line per
    variant with its parameter count."""
    from ..contract.experiment import Experiment
    from ..engine.build import check_buildable
    from ..engine.preflight import check_cache, memory_issues, preflight
    from ..engine.smoke import smoke_step
    from ..lab.ablation import _name_variants, load_ablation

    if args.overrides:
        raise InputError(
            f"{args.file} is an ablation file: its overrides are its own (overrides:, variants:)"
            "; validate takes key=value only for an experiment file"
        )
    registry = plugins.registry
    ablation = load_ablation(args.file, registry=registry)  # builds each variant, all errors
    check_cache()
    per_variant: dict[str, list[Issue]] = {}
    counts = {}
    for v in ablation.variants:
        exp = Experiment(v.config, v.document)  # type: ignore[arg-type]
        issues = preflight(v.config, registry, memory=False)
        if not issues:
            counts[v.name] = check_buildable(exp, registry)
            issues = memory_issues(v.config, registry, counts[v.name][0])
        if issues:
            per_variant[v.name] = [exp.document.locate(i) for i in issues]
            continue
        try:  # one training step: a plugin's runtime mistake (issues already located)
            smoke_step(exp, registry, counts[v.name][0])
        except ConfigError as exc:
            per_variant[v.name] = list(exc.issues)
    if per_variant:
        raise ConfigError(_name_variants(per_variant))
    width = max(len(v.name) for v in ablation.variants)
    for v in ablation.variants:
        count, table = counts[v.name]
        extra = f" ({count - table} without the puzzle-embedding table)" if table else ""
        print(f"ok: {v.name:<{width}}  {count} parameters{extra}")
    for ladder in ablation.ladders:  # every rung above was validated and built
        names = [r["name"] for r in ladder["rungs"]]
        if ladder["mode"] == "path":
            print(f"ok: ladder {ladder['from']} -> {' -> '.join(names)}")
        else:
            print(f"ok: ladder ({ladder['mode']}) {ladder['from']} / {ladder['to']}: "
                  f"{', '.join(names)}")  # fmt: skip
    if ablation.tune is not None:
        from ..lab.tune import grid_points

        n = len(grid_points(ablation.tune)) * len(ablation.variants)
        print(f"ok: tune: {n} tuning runs per tuning seed before the comparison (OUT/tune/)")
    print(
        f"ok: ablation {ablation.name}: {len(ablation.variants)} variants x "
        f"{len(ablation.seeds)} seeds, baseline {ablation.baseline}"
    )
    return 0


# -- config and diff ----------------------------------------------------------------------------
def resolve_experiment(ref: str, overrides: Sequence[str], registry: Any) -> Any:
    """The :class:`~ponderkit.ExperimentConfig` that ``ref`` names: a run directory (its
    ``config.yaml``), an ablation variant ``FILE:VARIANT``, or an experiment file."""
    from ..contract.experiment import load_experiment
    from ..contract.yamlio import load_document
    from ..lab.ablation import load_ablation, variant_experiment

    path = Path(ref)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise InputError(f"{ref} is a directory but not a run directory (no config.yaml)")
        return load_experiment(path / "config.yaml", overrides, registry=registry).config
    file, sep, variant = ref.rpartition(":")
    if sep and variant and Path(file).is_file() and not path.exists():
        path = Path(file)
    else:
        variant = ""
    if is_ablation_file(path):
        ablation = load_ablation(path, registry=registry, build=False)
        names = [v.name for v in ablation.variants]
        if not variant:
            raise InputError(
                f"{path} is an ablation file; name a variant: {path}:VARIANT "
                f"(variants: {', '.join(names)})"
            )
        if variant not in names:
            hint = suggestion(variant, names)
            raise InputError(
                f"{path}: no variant {variant!r}"
                + (f"; {hint}" if hint else "")
                + f" (variants: {', '.join(names)})"
            )
        config = ablation.variant(variant).config
        if overrides:
            from ..contract.config import unstructure
            from ..contract.yamlio import Document
            from ..lab.ablation import Override

            doc = Document(unstructure(config), {}, f"{path}:{variant}")
            over = [Override(o, ("<command line>", None)) for o in overrides]
            config = variant_experiment(doc, over, registry).config
        return config
    if variant:
        raise InputError(f"{file} is an experiment file, not an ablation: it has no variants")
    load_document(path)  # a missing or unreadable file is one located error
    return load_experiment(path, overrides, registry=registry).config


def cmd_config(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..contract.config import unstructure
    from ..contract.yamlio import dump

    config = resolve_experiment(args.file, args.overrides, plugins.registry)
    sys.stdout.write(dump(unstructure(config)))
    return 0


def cmd_diff(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..lab.ablation import flat_config

    a = flat_config(resolve_experiment(args.a, (), plugins.registry))
    b = flat_config(resolve_experiment(args.b, (), plugins.registry))
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    if not keys:
        print(f"no differences between {args.a} and {args.b}")
        return 0
    # as diff(1) does: 0 when the two are the same, 1 when they differ (2: an error)
    rows = [(k, _shown(a.get(k, _ABSENT)), _shown(b.get(k, _ABSENT))) for k in keys]
    rows.insert(0, ("key", args.a, args.b))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for key, left, right in rows:
        print(f"{key:<{w0}}  {left:<{w1}}  {right}".rstrip())
    return 1


_ABSENT = object()


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


# -- trace and predict --------------------------------------------------------------------------
def _puzzle_text(file: Path) -> str:
    if str(file) == "-":
        return sys.stdin.read()
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"no such file: {file}") from None
    except IsADirectoryError:
        raise InputError(f"{file} is a directory, not a puzzle file") from None
    except UnicodeDecodeError:
        raise InputError(f"{file}: not UTF-8 text") from None


def parse_puzzle(task: Any, file: Path) -> Any:
    """The input tokens of the puzzle in ``file``; malformed text is ``file:line:column``."""
    text = _puzzle_text(file)
    try:
        return task.parse_grid(text)
    except TextError as exc:
        name = "<stdin>" if str(file) == "-" else str(file)
        raise InputError(f"{name}:{exc.line}:{exc.column}: {exc.message}") from None


def grid_text(task: Any, tokens: Any) -> str:
    """A grid as rows of text (``.`` for a blank cell)."""
    cells = [c or "." for c in task.grid_cells(tokens)]
    rows, cols = task.grid_shape
    sep = "" if all(len(c) == 1 for c in cells) else " "
    return "\n".join(sep.join(cells[r * cols : (r + 1) * cols]) for r in range(rows))


def cmd_predict(args: argparse.Namespace, plugins: Plugins) -> int:
    import torch

    from ..contract.interfaces import CountsSolutions
    from ..engine.evaluate import load_model
    from ..lab.trace import grid_task

    run = load_model(args.run_dir, plugins.registry, args.checkpoint)
    task = grid_task(run, "predict", typed=True)
    inputs = parse_puzzle(task, args.file)
    batch = run.to_device({"inputs": torch.as_tensor(inputs, dtype=torch.long)[None]})
    with run.autocast():
        logits, steps = run.model.infer(batch, early_exit=not args.all_steps)
    answer = logits[0].argmax(-1).cpu().numpy()
    valid = bool(task.check_answer(inputs, answer))
    limit = run.model.halting.max_steps
    how = "all steps" if args.all_steps else "halted by the policy"
    print(grid_text(task, answer))
    print(f"steps: {int(steps[0])} of {limit} ({how})")
    print(f"valid: {'yes' if valid else 'no'}")
    # a task with a solver (Sudoku) says more
    found = task.count_solutions(inputs, 2) if isinstance(task, CountsSolutions) else 1
    if found != 1:  # on stderr: stdout keeps its grid, steps and valid lines
        what = "no solution" if found == 0 else "more than one solution"
        print(
            f"note: the puzzle has {what}; `valid` checks the rules and the givens, "
            "not that this is the puzzle's answer",
            file=sys.stderr,
        )
    return 0 if valid else 1


def cmd_trace(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..contract.interfaces import GridPuzzle, PaddedGrid
    from ..engine.evaluate import load_model
    from ..lab.trace import (
        eval_sample,
        grid_extent,
        grid_task,
        solves,
        trace,
        write_gif,
        write_sheet,
    )

    run = load_model(args.run_dir, plugins.registry, args.checkpoint)
    typed = args.data is not None
    task = grid_task(run, "trace --data" if typed else "trace", typed=typed)
    if args.data is not None:
        inputs, labels, pid, stem = parse_puzzle(task, args.data), None, 0, args.data.stem
    else:
        index = args.sample or 0
        inputs, labels, pid = eval_sample(run, index)
        stem = f"sample{index}"
    tr = trace(run, inputs, labels, pid)
    out = args.out or args.run_dir / "trace"
    sheet = write_sheet(task, tr, out / f"{stem}.png", label=f"{args.run_dir.name} {stem}")
    gif = write_gif(task, tr, out / f"{stem}.gif")
    solved = solves(task, tr, tr.answer)
    if solved is None:
        verdict = ""
    elif isinstance(task, GridPuzzle):
        verdict = f"; answer valid: {'yes' if solved else 'no'}"
    else:
        verdict = f"; answer equals the held-out output: {'yes' if solved else 'no'}"
    print(f"halted at step {tr.halted_at} of {len(tr.steps)}{verdict}")
    if isinstance(task, PaddedGrid):
        sizes = [("input", inputs), ("answer", tr.answer)]
        if labels is not None:
            sizes.append(("expected", labels))
        shown = ", ".join(f"{k} {'x'.join(map(str, grid_extent(task, t)))}" for k, t in sizes)
        print(f"grids: {shown}")
    print(f"sheet: {sheet}")
    print(f"gif: {gif} ({len(tr.steps)} frames)")
    return 0


def overrides_suffix(overrides: Sequence[str]) -> str:
    """A file-name suffix naming ``eval``'s overrides (``-model.halting.max_steps=8``)."""
    return "".join("-" + re.sub(r"[^A-Za-z0-9_.=-]", "_", o) for o in overrides)


def cmd_new_plugin(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..devkit.scaffold import write_plugin

    written = write_plugin(args.dir, args.kind, args.name)
    for path in written:
        print(f"wrote {path}")
    print(f"next: pip install -e {args.dir} && pytest {args.dir}")
    return 0


# -- list PATTERN, list experiments, per-field help of show --------------------------------------
def list_matching(pattern: str, registry: Any) -> int:
    """Components whose ``name`` or ``kind/name`` matches the wildcard ``pattern`` (``*moe*``,
    case-insensitive), by kind; exit 1 when none does."""
    import fnmatch

    from ..contract.registry import KINDS

    pat = pattern.lower()
    found = 0
    for kind in KINDS:
        names = [
            n
            for n in registry.names(kind)
            if fnmatch.fnmatchcase(n.lower(), pat)
            or fnmatch.fnmatchcase(f"{kind}/{n}".lower(), pat)
        ]
        if not names:
            continue
        found += len(names)
        print(f"{kind}:")
        width = max(len(n) for n in names)
        for name in names:
            print(
                f"  {name:<{width}}  {registry.summary(kind, name)}  [{registry.origin(kind, name)}]"
            )
    if not found:
        print(f"no component matches {pattern!r}", file=sys.stderr)
        return 1
    return 0


def experiments_dir() -> Path | None:
    """The shipped ``experiments/`` folder: in the working directory, else beside the source
    tree this package was installed from (an editable install)."""
    here = Path(__file__).resolve().parents[2] / "experiments"
    for folder in (Path.cwd() / "experiments", here):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def experiment_description(path: Path) -> str:
    """An experiment's ``description:``, else its first comment line; one line."""
    import yaml

    text = path.read_text("utf-8", errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    desc = data.get("description") if isinstance(data, dict) else None
    if not isinstance(desc, str) or not desc.strip():
        comments = [ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#")]
        desc = comments[0] if comments else ""
    desc = " ".join(desc.split())
    return desc if len(desc) <= 110 else desc[:107].rstrip() + "..."


def list_experiments() -> int:
    """The shipped experiment and ablation files with a line of description each."""
    folder = experiments_dir()
    if folder is None:
        raise InputError("no experiments/ folder here nor beside ponderkit's source tree")
    files = sorted(folder.glob("*.yaml"))
    print(f"experiments ({folder}):")
    width = max(len(p.name) for p in files)
    for path in files:
        kind = "ablation" if is_ablation_file(path) else "run"
        print(f"  {path.name:<{width}}  {kind:<8}  {experiment_description(path)}")
    return 0


def field_help(cls: type) -> dict[str, str]:
    """Each attrs field's help: its ``help`` metadata, else the comment above the field (or
    at the end of its line) in the class's source, else the sentence of the class docstring
    that names it in ````name````. A subclass's word wins over its bases'."""
    import attrs

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not attrs.has(klass):
            continue
        comments = _field_comments(klass)
        doc = " ".join((klass.__doc__ or "").split())
        for f in attrs.fields(klass):  # inherited fields too: a subclass may say more
            text = f.metadata.get("help") or comments.get(f.name) or _doc_sentence(doc, f.name)
            if text:
                out[f.name] = text
    return out


def _field_comments(klass: type) -> dict[str, str]:
    """``{field: comment}`` from the class body's source: the ``#`` lines right above a field,
    or a comment at the end of its line."""
    import inspect
    import io
    import tokenize

    try:
        source = inspect.cleandoc("\n" + inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    by_line: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                by_line[tok.start[0]] = tok.string.lstrip("#:").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return {}
    lines = source.splitlines()
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        m = re.match(r"^    (\w+)\s*:", line)  # a field of the class body
        if not m:
            continue
        above = []
        k = number - 1
        while k >= 1 and lines[k - 1].strip().startswith("#") and k in by_line:
            above.insert(0, by_line[k])
            k -= 1
        text = " ".join(above) or by_line.get(number, "")
        if text and not text.startswith(("fmt:", "noqa", "type:")):
            out[m.group(1)] = text
    return out


def _doc_sentence(doc: str, name: str) -> str:
    """The sentence of ``doc`` that names ````name````, or ''."""
    found = [i for i in (doc.find(f"``{name}``"), doc.find(f"``{name}:")) if i >= 0]
    if not found:
        return ""
    at = min(found)
    start = max(doc.rfind(". ", 0, at), doc.rfind("; ", 0, at))
    start = 0 if start < 0 else start + 2
    ends = [i for i in (doc.find(". ", at), doc.find("; ", at)) if i >= 0]
    end = min(ends) + 1 if ends else len(doc)
    return doc[start:end].strip()


TOOL_COMMANDS = {
    "config": cmd_config,
    "diff": cmd_diff,
    "trace": cmd_trace,
    "predict": cmd_predict,
    "new-plugin": cmd_new_plugin,
}
