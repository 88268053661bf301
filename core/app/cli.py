"""The ``ponderkit`` command line: list, show, validate, run, eval, ablate, report, compare
(and the researcher tools of ``cli_tools``: config, diff, trace, predict, new-plugin).

Heavy imports (torch, plugin bodies) happen inside the commands that need them, so
``ponderkit list`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..contract.errors import (
    ConfigError,
    InputError,
    Issue,
    PonderkitError,
    UnknownComponentError,
    suggestion,
)
from ..contract.loading import Plugins
from ..contract.registry import KINDS, split_key
from .cli_tools import TOOL_COMMANDS, add_tool_parsers
from .importer import add_import_parser, cmd_import

EXIT_CONFIG = 2


def _plugin_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE",
        default=argparse.SUPPRESS,
        help="import MODULE as a plugin (repeatable; also PONDERKIT_PLUGINS)",
    )
    common.add_argument(
        "--strict-plugins",
        action="store_true",
        default=argparse.SUPPRESS,
        help="fail when a plugin cannot be loaded instead of skipping it",
    )
    return common


#: Commands whose options plugins extend through ``ponderkit_add_options``.
PLUGIN_OPTION_COMMANDS = ("eval",)


class PluginOptions:
    """What a plugin's ``ponderkit_add_options(command, parser)`` gets as ``parser``: argparse's
    ``add_argument``, into one group per plugin, recording which plugin added each option so
    that the command hands a plugin back only its own options."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._parser = parser
        self._plugin = ""
        self._group: Any = None
        #: option dest -> (the plugin that added it, its flag)
        self.owners: dict[str, tuple[str, str]] = {}

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action:
        if self._group is None:
            self._group = self._parser.add_argument_group(f"options of plugin {self._plugin}")
        action = self._group.add_argument(*flags, **kwargs)
        if action.dest in self.owners:  # argparse already refuses a flag added twice
            raise PonderkitError(
                f"plugin {self._plugin}: option {action.dest!r} is also added by plugin "
                f"{self.owners[action.dest][0]}"
            )
        self.owners[action.dest] = (self._plugin, action.option_strings[0] if flags else "")
        return action

    def collect(self, command: str, plugins: Plugins) -> None:
        """Ask every plugin, built-in ones included, for ``command``'s options."""
        plugins.load_all_builtins()  # built-ins load lazily; their options are needed now
        hook = plugins.pm.hook.ponderkit_add_options
        for impl in reversed(hook.get_hookimpls()):  # in registration order, one group each
            self._plugin, self._group = impl.plugin_name, None
            only = plugins.pm.subset_hook_caller(
                "ponderkit_add_options",
                [p for p in plugins.pm.get_plugins() if p is not impl.plugin],
            )
            only(command=command, parser=self)

    def given(self, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
        """The plugin options given on the command line: plugin -> {dest: value}."""
        out: dict[str, dict[str, Any]] = {}
        for dest, (plugin, _) in self.owners.items():
            value = vars(args).get(dest)
            if value is not None and value is not False:
                out.setdefault(plugin, {})[dest] = value
        return out


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``plugins``, the commands of
    :data:`PLUGIN_OPTION_COMMANDS` also take the options the plugins add."""
    common = _plugin_options()
    parser = argparse.ArgumentParser(
        prog="ponderkit",
        parents=[common],
        description="Compose recursive, routed and adaptive-depth reasoning models from YAML.",
    )
    parser.add_argument("--version", action="version", version=f"ponderkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "list", parents=[common], help="list registered components (or the shipped experiments)"
    )
    p.add_argument(
        "kind",
        nargs="?",
        metavar="KIND|PATTERN|experiments",
        help=f"only this kind ({', '.join(KINDS)}), the components whose name matches a "
        "wildcard PATTERN ('*moe*'), or `experiments`: the shipped experiment files",
    )

    p = sub.add_parser(
        "show", parents=[common], help="a kind's contract (KIND) or one component (KIND/NAME)"
    )
    p.add_argument("key", metavar="KIND|KIND/NAME")

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="check an experiment (or every variant of an ablation file) and count the built "
        "model's parameters",
    )
    p.add_argument("file", type=Path)
    p.add_argument("overrides", nargs="*", metavar="key.path=value")

    p = sub.add_parser("run", parents=[common], help="train an experiment into a run directory")
    p.add_argument("file", type=Path, nargs="?")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its latest checkpoint, with the config.yaml it holds "
        "(or, without RUN_DIR, the run in --out of FILE with the same overrides)",
    )
    p.add_argument(
        "--extend",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --resume RUN_DIR: raise the run's budget (train.steps, train.epochs, "
        "train.flops, train.max_time_s), finished or not (docs/runs-lifecycle.md)",
    )

    p = sub.add_parser(
        "eval",
        parents=[common],
        help="evaluate a run's final checkpoint on its task's held-out set",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="evaluation-time fields only: model.halting.*, model.recursion.H_cycles/L_cycles, "
        "train.eval_batch_size, train.device, train.precision, train.threads",
    )
    p.add_argument(
        "--early-exit",
        action="store_true",
        help="stop each sample when its halting policy says so, and compare with "
        "running every step",
    )
    p.add_argument("--checkpoint", default="final", help="checkpoint name (default final)")
    p.add_argument(
        "--data",
        type=Path,
        help="evaluate on this data set instead (a task/files path: TRM/HRM split, .npz, .jsonl)",
    )
    if plugins is not None:  # a task's own options (ARC's --vote ...), from its plugin
        p.set_defaults(plugin_options=PluginOptions(p))
        p.get_default("plugin_options").collect("eval", plugins)

    p = sub.add_parser(
        "ablate",
        parents=[common],
        help="run every variant x seed of an ablation file, then write its report",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, help="ablation directory (default runs/<name>)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once: subprocesses sharing the CPU cores, or one per GPU (default 1)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="K",
        help="train each run data-parallel over K processes (torchrun; K GPUs a run on CUDA)",
    )
    p.add_argument(
        "--memory-per-run",
        type=float,
        default=None,
        metavar="GIB",
        help="GPU memory a run needs at its peak (evaluation included), in GiB: skips the "
        "per-config memory probes of --jobs (each trains two steps, compiling first when "
        "train.compile is on); a run that needs more than this can run out of memory",
    )
    p.add_argument(
        "--progress",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="say each running run's progress (share of its budget, loss, samples/s, time "
        "left) every SECONDS (default 60; 0: only start and finish lines)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="VARIANT[/seedK]",
        help="run only these variants or runs (repeatable); the report still covers all",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="run every value of the dotted config KEY as variants named by their values "
        "(repeatable: every combination; see docs/sweeps.md)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("report", parents=[common], help="(re)write an ablation's report.md")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("compare", parents=[common], help="a table of any run directories")
    p.add_argument("run_dirs", nargs="+", type=Path)
    add_tool_parsers(sub, common)
    add_import_parser(sub, common)
    return parser


def _version() -> str:
    """The installed distribution's version (``pyproject.toml``'s)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ponderkit")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def launched_rank() -> int:
    """This process's rank as ``torchrun`` announced it (0 when not launched by it)."""
    import os

    raw = os.environ.get("RANK", "0")
    return int(raw) if raw.isdigit() else 0


def _launched_world() -> int:
    import os

    raw = os.environ.get("WORLD_SIZE", "1")
    return int(raw) if raw.isdigit() else 1


def main(argv: Sequence[str] | None = None) -> int:
    loaded = None
    if _command(argv) in PLUGIN_OPTION_COMMANDS:  # its parser (and --help) has plugin options
        try:
            loaded = _load_plugins(_plugin_options().parse_known_args(argv)[0])
        except PonderkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    parser = build_parser(loaded)
    # overrides may come after options (`run X --out D a.b=1`): collect them from the leftovers
    args, extra = parser.parse_known_args(argv)
    args.loaded_plugins = loaded
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        plugins = vars(args).pop("loaded_plugins", None) or _load_plugins(args)
        code = COMMANDS[args.command](args, plugins)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except ConfigError as exc:
        if launched_rank() == 0:  # under torchrun every rank fails alike; one says so
            for line in exc.lines():
                print(f"error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except PonderkitError as exc:
        if launched_rank() == 0:
            for line in ConfigError([Issue((), text) for text in str(exc).splitlines()]).lines():
                print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `ponderkit list | head`: the reader left, which is fine
        _silence_stdout()
        return 0
    except OSError as exc:  # the file system refused (full, read-only, a loop): one line
        if launched_rank() == 0:
            print(f"error: {ConfigError([Issue((), os_error_line(exc))]).lines()[0]}",
                  file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)  # recovery.Interrupted's (not a plugin's)
        if signum == 2 and not str(exc):
            print("interrupted", file=sys.stderr)
        return 128 + signum


def _command(argv: Sequence[str] | None) -> str | None:
    """The command word of ``argv`` (the first word that is not an option or a --plugin's
    value), before the full parser exists."""
    words = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(words):
        if not word.startswith("-") and (i == 0 or words[i - 1] != "--plugin"):
            return word
    return None


def _load_plugins(args: argparse.Namespace) -> Plugins:
    # `--plugin` and `--strict-plugins` are SUPPRESSed where not given: absent from ``args``
    return Plugins(
        getattr(args, "plugin", None) or (), strict=getattr(args, "strict_plugins", False)
    )


def os_error_line(exc: OSError) -> str:
    """``path: what the system said`` for a file-system error, without a traceback."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' -> '.join(where)}: {what}" if where else what


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush raises nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def cmd_list(args: argparse.Namespace, plugins: Plugins) -> int:
    from .cli_tools import list_experiments, list_matching

    reg = plugins.registry
    if args.kind == "experiments":
        return list_experiments()
    if args.kind and args.kind not in KINDS and any(c in args.kind for c in "*?["):
        return list_matching(args.kind, reg)
    if args.kind and args.kind not in KINDS:
        hint = suggestion(args.kind, KINDS)
        raise PonderkitError(
            f"unknown kind {args.kind!r}"
            + (f"; {hint}" if hint else "")
            + f" (kinds: {', '.join(KINDS)})"
        )
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        names = reg.names(kind)
        print(f"{kind}:")
        if not names:
            print("  (none)")
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f"  {name:<{width}}  {reg.summary(kind, name)}  [{reg.origin(kind, name)}]")
    return 0


def cmd_show(args: argparse.Namespace, plugins: Plugins) -> int:
    import attrs

    from ..contract.config import DEFAULT_KEY, KIND_KEY, fields_of, type_name
    from .cli_tools import field_help

    if "/" not in args.key:
        return show_kind(args.key, plugins)
    try:
        kind, name = split_key(args.key)
    except ValueError as exc:
        raise PonderkitError(str(exc)) from None
    try:
        comp = plugins.registry.get(kind, name)
    except UnknownComponentError as exc:
        raise PonderkitError(str(exc)) from None
    print(f"{comp.key}  (from {comp.origin.plugin} {comp.origin.version})")
    print()
    for line in (comp.doc or "(no docstring)").strip().splitlines():
        print(f"  {line.strip()}")
    print()
    fields = fields_of(comp.config_cls)
    helps = field_help(comp.config_cls)
    print("fields:" if fields else "fields: none")
    for f in fields:
        if f.metadata.get(KIND_KEY):
            tp = f"{f.metadata[KIND_KEY]} component"
            default = f.metadata.get(DEFAULT_KEY)
        else:
            tp = type_name(f.type)
            default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if isinstance(default, tuple):  # written as a YAML list
            default = list(default)
        shown = "(required)" if default is attrs.NOTHING else f"= {default!r}"
        help_text = helps.get(f.name, "")
        print(f"  {f.name}: {tp} {shown}" + (f"  # {help_text}" if help_text else ""))
    if comp.requires:
        print(f"requires: {', '.join(sorted(comp.requires))}")
    if comp.provides:
        print(f"provides: {', '.join(sorted(comp.provides))}")
    return 0


def show_kind(kind: str, plugins: Plugins) -> int:
    """Print ``kind``'s contract: its Protocol with every member, the optional capabilities,
    how a builder is called, and which built-ins provide each capability."""
    import inspect

    from ..contract.hookspec import CALLBACK_HOOKS
    from ..contract.interfaces import CAPABILITIES, MODULE_KINDS, PROTOCOLS
    from ..contract.interfaces import protocol_members as members

    if kind not in KINDS:
        owners = [f"{k}/{kind}" for k in KINDS if kind in plugins.registry.names(k)]
        hint = f"did you mean {' or '.join(owners)}?" if owners else suggestion(kind, KINDS)
        raise PonderkitError(
            f"unknown kind {kind!r}" + (f"; {hint}" if hint else "") + f" (kinds: "
            f"{', '.join(KINDS)}); show takes a KIND or a KIND/NAME"
        )
    protocol = PROTOCOLS[kind]
    print(
        f"{kind}: ponderkit.{protocol.__name__}"
        + (" (a torch.nn.Module)" if kind in MODULE_KINDS else "")
    )
    print()
    print(inspect.cleandoc(protocol.__doc__ or ""))
    print()
    print(
        "members:"
        if kind != "callback"
        else "hooks (any, at least one, each marked @ponderkit.callback_hook):"
    )
    for name in members(protocol):
        print(f"  {_member_signature(protocol, name)}")
    if kind == "callback":
        for signature in CALLBACK_HOOKS.values():
            print(f"  {signature}")
    print()
    print(
        "register: registry.add(" + repr(kind) + ", NAME, ConfigClass, builder) in a "
        "@ponderkit.hookimpl ponderkit_register(registry); ConfigClass is @attrs.frozen;"
    )
    extra = ", num_experts=E" if kind == "router" else ""
    print(f"builder(config, ctx: ponderkit.BuildContext{extra}) -> the {kind}; checked when built")
    if kind == "router":
        from ..contract.interfaces import Routing

        print()
        print("forward returns ponderkit.Routing:")
        print(inspect.cleandoc(Routing.__doc__ or ""))
    kit = {"ffn": "check_ffn", "mixer": "check_mixer", "block": "check_block"}.get(kind)
    kit = kit or {"router": "check_router", "recursion": "check_recursion"}.get(kind)
    kit = kit or {"halting": "check_halting", "task": "check_task"}.get(kind)
    kit = kit or {"optimizer": "check_optimizer"}.get(kind)
    if kit:
        print()
        print(
            f"conformance test: ponderkit.devkit.conformance.{kit}(factory) (docs/plugins.md: The plugin contract)"
        )
    caps = CAPABILITIES.get(kind, ())
    reg = plugins.registry
    names = reg.names(kind)
    if caps:
        print()
        print("optional capabilities:")
        for cap in caps:
            print(f"  ponderkit.{cap.__name__}: {', '.join(members(cap))}")
    print()
    print("built-in and installed components:")
    width = max((len(n) for n in names), default=0)
    for name in names:
        provides = []
        if caps:
            cls = _built_class(reg.get(kind, name))
            provides = [c.__name__ for c in caps if cls is not None and _class_has(cls, c)]
        shown = f"  (+ {', '.join(provides)})" if provides else ""
        print(f"  {name:<{width}}  [{reg.origin(kind, name)}]{shown}")
    return 0


def _member_signature(protocol: type, name: str) -> str:
    import inspect

    value = protocol.__dict__.get(name)
    if callable(value):
        return f"{name}{inspect.signature(value)}".replace("(self, ", "(").replace("(self)", "()")
    annotation = protocol.__annotations__.get(name, "")
    return f"{name}: {annotation}"


def _built_class(component: object) -> type | None:
    import typing

    try:
        hints = typing.get_type_hints(component.builder)  # type: ignore[attr-defined]
    except Exception:
        return None
    cls = hints.get("return")
    return cls if isinstance(cls, type) else None


def _class_has(cls: type, capability: type) -> bool:
    """Whether instances of ``cls`` have ``capability``, judged from the class: its methods
    (data members are usually set in ``__init__``; a data-only capability needs a class
    attribute)."""
    from ..contract.interfaces import protocol_members

    members = protocol_members(capability)
    methods = [n for n in members if callable(getattr(capability, n, None))]
    data = [n for n in members if n not in methods]
    if methods:
        return all(callable(getattr(cls, n, None)) for n in methods)
    return all(hasattr(cls, n) for n in data)


def cmd_validate(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..contract.experiment import load_experiment
    from ..engine.build import check_buildable
    from ..engine.preflight import check_cache, memory_issues, preflight
    from ..engine.smoke import smoke_step
    from .cli_tools import is_ablation_file, validate_ablation

    if is_ablation_file(args.file):
        return validate_ablation(args, plugins)
    exp = load_experiment(args.file, args.overrides, registry=plugins.registry)
    check_cache()
    issues = preflight(exp.config, plugins.registry, memory=False)
    if issues:
        raise ConfigError([exp.document.locate(i) for i in issues])
    count, table = check_buildable(exp, plugins.registry)
    issues = memory_issues(exp.config, plugins.registry, count)
    if issues:
        raise ConfigError([exp.document.locate(i) for i in issues])
    stepped = smoke_step(exp, plugins.registry, count)  # a plugin's runtime mistake ends here
    extra = f" ({count - table} without the puzzle-embedding table)" if table else ""
    skipped = "" if stepped else " (too large for the one-step CPU check)"
    print(f"ok: {count} parameters{extra}{skipped}")
    return 0


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    """Train one experiment; under ``torchrun`` every rank runs this, rank 0 owning the run
    directory (its checks and lock run there and their outcome reaches every rank)."""
    import contextlib

    from ..contract.experiment import load_experiment
    from ..engine.build import check_buildable
    from ..engine.distributed import init_from_env
    from ..engine.lifecycle import record_extension, resolve_run
    from ..engine.preflight import check_cache, preflight
    from ..engine.runlock import RunLock, is_empty_run_dir
    from ..engine.runs import create_run_dir, default_run_dir, ensure_new_run_dir
    from ..engine.smoke import smoke_step
    from ..engine.train import Trainer, resume_or_start

    args.file, args.overrides, args.out, extended = resolve_run(
        args.file, args.overrides, args.resume, args.out, args.extend, plugins.registry
    )
    exp = load_experiment(args.file, args.overrides, registry=plugins.registry)
    if args.resume and not args.out:
        raise InputError("--resume needs --out DIR, the run directory to continue")
    check_cache()
    count, _ = check_buildable(exp, plugins.registry)  # builder mistakes end here, before
    if _launched_world() == 1:  # any directory; and runtime ones (each rank would step alike)
        smoke_step(exp, plugins.registry, count)
    issues = preflight(exp.config, plugins.registry)
    if issues:
        raise ConfigError([exp.document.locate(i) for i in issues])
    with init_from_env(exp.config.train.device) as dist, contextlib.ExitStack() as held:
        run_dir = dist.from_main(
            lambda: Path(args.out or default_run_dir(exp.config.name or args.file.stem))
        )
        say = print if dist.is_main else _silent

        def lock_existing() -> bool:  # rank 0: True when resuming a run that has begun
            if not (args.resume and not is_empty_run_dir(run_dir)):
                ensure_new_run_dir(run_dir)
                return False
            if not run_dir.is_dir():
                raise InputError(f"--out {run_dir} is a file, not a run directory")
            held.enter_context(RunLock(run_dir))
            if extended:  # its config.yaml says the new budget, which the resume checks
                record_extension(run_dir, exp.config, extended)
            return True

        def create_and_lock() -> None:  # rank 0, once the trainer is built
            create_run_dir(run_dir)
            held.enter_context(RunLock(run_dir))
            ensure_new_run_dir(run_dir)  # another `run --out` may have got there first

        if dist.from_main(lock_existing):
            trainer = resume_or_start(
                exp.config, run_dir, plugins.registry, quiet=args.quiet, extend=bool(extended)
            )
            if trainer is None:
                say(f"{run_dir} already finished; nothing to do")
                return 0
        else:
            # built before the directory exists: a failure here leaves nothing behind
            trainer = Trainer(exp.config, plugins.registry, run_dir, quiet=args.quiet)
            dist.from_main(create_and_lock)
        ranks = f", {dist.world_size} ranks" if dist.active else ""
        say(
            f"run directory: {run_dir}  ({sum(p.numel() for p in trainer.model.parameters())} "
            f"parameters, device {trainer.device}{ranks})",
            flush=True,
        )
        result = trainer.fit()
    summary = " ".join(f"{k}={v:.4f}" for k, v in result.items())
    say(f"done: {summary}")
    return 0


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` for the ranks other than 0 of a ``torchrun`` job: they say nothing."""


def cmd_eval(args: argparse.Namespace, plugins: Plugins) -> int:
    import attrs

    from ..contract.interfaces import EvaluatesPuzzles
    from ..engine.evaluate import load_model
    from ..engine.runs import write_json_atomic
    from .cli_tools import overrides_suffix

    run = load_model(args.run_dir, plugins.registry, args.checkpoint, overrides=args.overrides)
    if args.data is not None:
        run = attrs.evolve(run, task=_data_task(args.data, run, plugins.registry))
    options = _task_options(args, run.config.task.name, plugins)
    report = None
    # a task that scores whole puzzles (ARC: votes over augmented views) has this capability
    if isinstance(run.task, EvaluatesPuzzles):
        report = run.task.evaluate_puzzles(run, **options)
    full = run.evaluate(early_exit=False)
    result = {"checkpoint": args.checkpoint, "full": full}
    if args.data is not None:
        result["data"] = str(args.data)
    if args.overrides:
        result["overrides"] = list(args.overrides)
    print(_eval_line("all steps", full))
    if report is not None:
        lines = report.pop("lines", [])
        result["puzzles"] = report
        for split in ("eval", "train"):
            if split in report:
                print(_eval_line(f"{split} set", report[split]))
        for line in lines:
            print(line)
    if args.early_exit:
        early = run.evaluate(early_exit=True)
        saved = 1.0 - early["steps"] / max(full["steps"], 1e-9)
        delta = early["exact_acc"] - full["exact_acc"]
        result.update(early_exit=early, steps_saved=saved, exact_acc_change=delta)
        print(_eval_line("early exit", early))
        print(
            f"early exit saves {saved:.1%} of the steps; exact accuracy changes by "
            f"{delta * 100:+.2f} points"
        )
    suffix = f"-{args.data.stem}" if args.data is not None else ""
    # a task option that changes the scores (ARC's --vote) gets a report file of its own; a
    # file to write (--arc-submission) does not
    for dest, value in options.items():
        suffix += f"-{dest.replace('_', '-')}-{value}" if isinstance(value, str) else ""
    suffix += overrides_suffix(args.overrides)
    write_json_atomic(args.run_dir / f"eval-{args.checkpoint}{suffix}.json", result)
    return 0


def _task_options(args: argparse.Namespace, task: str, plugins: Plugins) -> dict[str, Any]:
    """The options ``task``'s plugin added that were given; another plugin's option given is
    refused (it would be ignored)."""
    table: PluginOptions = args.plugin_options
    given = table.given(args)
    own = plugins.registry.get("task", task).origin.plugin
    for plugin, options in given.items():
        if plugin != own:
            flag = table.owners[next(iter(options))][1]
            raise InputError(
                f"{flag}: an option of plugin {plugin}, which task {task!r} is not from "
                f"(task {task!r} is from {own})"
            )
    return given.get(own, {})


def _data_task(data: Path, run: object, registry: object) -> object:
    """The ``task/files`` evaluation split at ``data``, checked against the run's model."""
    from ..contract.errors import Issue
    from ..engine.context import BuildContext

    comp = registry.get("task", "files")  # type: ignore[attr-defined]
    cfg = comp.config_cls(path=str(data), train_split=None)
    model = run.model  # type: ignore[attr-defined]
    try:
        task = comp.builder(cfg, BuildContext(registry))
    except PonderkitError as exc:
        raise ConfigError([Issue(("--data",), str(exc))]) from None
    want = (model.seq_len, model.token_emb.num_embeddings)
    table = model.puzzle_emb.num_embeddings if model.puzzle_emb is not None else 1
    problem = None
    if task.seq_len != want[0]:
        problem = f"sequences of {task.seq_len} tokens; the run's model takes {want[0]}"
    elif task.vocab_size > want[1]:
        problem = f"tokens up to {task.vocab_size - 1}; the run's vocabulary is [0, {want[1]})"
    elif task.num_puzzle_ids > table:
        problem = f"puzzle ids up to {task.num_puzzle_ids - 1}; the run's table has {table}"
    if problem:
        raise ConfigError([Issue(("--data",), f"{data}: {problem}")])
    return task


def cmd_ablate(args: argparse.Namespace, plugins: Plugins) -> int:
    import contextlib

    from ..engine.preflight import check_cache
    from ..engine.runlock import RunLock
    from ..engine.smoke import smoke_variants
    from ..lab.ablation import _name_variants, load_ablation, preflight_variants
    from ..lab.grid import die_with_parent, prepare, run_grid, select, worker_command, worker_env
    from ..lab.report import write_report
    from ..lab.tune import apply_tuning, tuning_runs

    ablation = load_ablation(args.file, registry=plugins.registry, sweep=args.sweep)
    out = args.out or Path("runs") / ablation.name
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    if args.nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {args.nproc}")
    if args.memory_per_run is not None and not args.memory_per_run > 0:
        raise InputError(
            f"--memory-per-run must be a positive number of GiB, got {args.memory_per_run}"
        )
    if not args.progress >= 0 or args.progress == float("inf"):
        raise InputError(f"--progress must be a number of seconds >= 0, got {args.progress}")
    if not args.worker and _launched_world() > 1:
        raise InputError(
            "ablate starts its runs itself: run it without torchrun and give --nproc K to "
            "train each run over K processes"
        )
    for variant in ablation.variants if args.nproc > 1 else ():
        if variant.config.train.batch_size % args.nproc:
            raise InputError(
                f"--nproc {args.nproc}: variant {variant.name} has train.batch_size="
                f"{variant.config.train.batch_size}, not divisible by {args.nproc}"
            )
    tuning = tuning_runs(ablation, plugins.registry)  # tune: each arm's short runs, first
    select([*tuning, *ablation.runs()], args.only)  # a bad --only fails before anything runs
    tune_only = [k for k in args.only or () if k.startswith("tune/")]  # tuning runs named
    only = [k for k in args.only or () if not k.startswith("tune/")]
    compare = not tune_only or bool(only)  # --only naming tuning runs alone runs just those
    with contextlib.ExitStack() as held:
        if args.worker:  # its parent checked everything and holds the ablation's lock
            die_with_parent()
        else:
            check_cache()
            preflight_variants(ablation, plugins.registry)
            failed = smoke_variants(ablation.variants, plugins.registry)  # one step each
            if failed:
                raise ConfigError(_name_variants(failed))
            if out.is_symlink() and not out.exists():
                raise InputError(f"--out {out}: a symbolic link to nothing (or a link loop)")
            if out.exists() and not out.is_dir():
                raise InputError(f"--out {out} is a file, not a directory")
            out.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(out))
        modules = getattr(args, "plugin", None) or ()  # argparse SUPPRESSes it when absent

        def grid(ablation: Any, runs: Any, plan_runs: Any) -> list[str]:
            return run_grid(
                ablation,
                runs,
                out,
                plugins.registry,
                jobs=args.jobs,
                nproc=args.nproc,
                memory_per_run=args.memory_per_run,
                child_argv=worker_command(
                    args.file, out, [a for m in modules for a in ("--plugin", m)]
                )
                + [f"--sweep={s}" for s in args.sweep],
                child_env=worker_env(modules),
                say=lambda text: print(text, flush=True) if launched_rank() == 0 else None,
                plan_runs=plan_runs,
                progress_s=0.0 if args.worker else args.progress,  # the parent says it
            )

        failed = []
        if tuning and (tune_only or not args.worker):  # a worker runs the one it is given
            todo = select(tuning, tune_only) if tune_only else tuning
            if not args.worker:
                print(f"tuning: {len(todo)} runs into {out / 'tune'}", flush=True)
            if (failed := grid(ablation, todo, None)) and not args.worker:
                print(f"error: tuning run(s) failed: {', '.join(failed)}", file=sys.stderr)
                return 1
        if compare:
            ablation = apply_tuning(ablation, out, plugins.registry)  # each arm at its pick
            every = prepare(ablation, out)
            if not args.worker:
                print(
                    f"ablation {ablation.name}: {len(ablation.variants)} variants x "
                    f"{len(ablation.seeds)} seeds into {out} (budget: "
                    f"{ablation.budget.describe()})",
                    flush=True,
                )
            failed = grid(ablation, select(every, only), None if args.worker else every)
        if not args.worker and compare:
            print(f"report: {write_report(out, warn=_warn, registry=plugins.registry)}")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..lab.report import write_report

    if not args.dir.is_dir():
        raise InputError(f"{args.dir} is not a directory")
    if not (args.dir / "ablation.json").exists() and not any(args.dir.glob("*/seed*/config.yaml")):
        raise InputError(f"{args.dir} is not an ablation directory (no ablation.json)")
    print(f"report: {write_report(args.dir, warn=_warn, registry=plugins.registry)}")
    return 0


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def cmd_compare(args: argparse.Namespace, plugins: Plugins) -> int:
    from ..lab.report import compare_table

    missing = [str(d) for d in args.run_dirs if not (d / "metrics.jsonl").is_file()]
    if missing:
        raise InputError(f"not a run directory (no metrics.jsonl): {', '.join(missing)}")
    print(compare_table(args.run_dirs, warn=_warn))
    return 0


def _eval_line(label: str, metrics: dict[str, float]) -> str:
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    return f"{label:>10}: {shown}"


COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "validate": cmd_validate,
    "run": cmd_run,
    "eval": cmd_eval,
    "ablate": cmd_ablate,
    "report": cmd_report,
    "compare": cmd_compare,
    **TOOL_COMMANDS,
    "import": cmd_import,
}


if __name__ == "__main__":
    sys.exit(main())
