"""The ``ponderkit`` command line: list, show, validate, run, eval, ablate, report, compare.

Heavy imports (torch, plugin bodies) happen inside the commands that need them, so
``ponderkit list`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError, PonderkitError, UnknownComponentError, suggestion
from .loading import Plugins
from .registry import KINDS, split_key

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


def build_parser() -> argparse.ArgumentParser:
    common = _plugin_options()
    parser = argparse.ArgumentParser(
        prog="ponderkit",
        parents=[common],
        description="Compose recursive, routed and adaptive-depth reasoning models from YAML.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list registered components")
    p.add_argument("kind", nargs="?", help=f"only this kind ({', '.join(KINDS)})")

    p = sub.add_parser("show", parents=[common], help="describe one component: KIND/NAME")
    p.add_argument("key", metavar="KIND/NAME")

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="check an experiment and count the built model's parameters",
    )
    p.add_argument("file", type=Path)
    p.add_argument("overrides", nargs="*", metavar="key.path=value")

    p = sub.add_parser("run", parents=[common], help="train an experiment into a run directory")
    p.add_argument("file", type=Path)
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--out", type=Path, help="run directory (default runs/<name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (same config)",
    )

    p = sub.add_parser(
        "eval",
        parents=[common],
        help="evaluate a run's final checkpoint on its task's held-out set",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--early-exit",
        action="store_true",
        help="stop each sample when its halting policy says so, and compare with "
        "running every step",
    )
    p.add_argument("--checkpoint", default="final", help="checkpoint name (default final)")
    p.add_argument(
        "--arc-submission",
        type=Path,
        metavar="FILE",
        help="ARC tasks: write the voted predictions as a Kaggle submission.json",
    )
    p.add_argument(
        "--puzzle-ids",
        choices=["own", "blank", "random"],
        help="tasks scored per puzzle (ARC): evaluate with each view's own identifier, the "
        "blank one or a random training one (default: the task's eval_puzzle_ids)",
    )
    p.add_argument(
        "--vote",
        choices=["count", "confidence"],
        help="tasks scored per puzzle (ARC): rank each test input's candidates by how many "
        "views predicted them or by their summed halting confidence (default: the task's vote)",
    )

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
        "--only",
        action="append",
        metavar="VARIANT[/seedK]",
        help="run only these variants or runs (repeatable); the report still covers all",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("report", parents=[common], help="(re)write an ablation's report.md")
    p.add_argument("dir", type=Path)

    p = sub.add_parser("compare", parents=[common], help="a table of any run directories")
    p.add_argument("run_dirs", nargs="+", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # overrides may come after options (`run X --out D a.b=1`): collect them from the leftovers
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        plugins = Plugins(
            getattr(args, "plugin", None) or (), strict=getattr(args, "strict_plugins", False)
        )
        return COMMANDS[args.command](args, plugins)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        return EXIT_CONFIG
    except PonderkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_list(args: argparse.Namespace, plugins: Plugins) -> int:
    reg = plugins.registry
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

    from .config import DEFAULT_KEY, KIND_KEY, fields_of, type_name

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
        shown = "(required)" if default is attrs.NOTHING else f"= {default!r}"
        help_text = f.metadata.get("help", "")
        print(f"  {f.name}: {tp} {shown}" + (f"  # {help_text}" if help_text else ""))
    if comp.requires:
        print(f"requires: {', '.join(sorted(comp.requires))}")
    if comp.provides:
        print(f"provides: {', '.join(sorted(comp.provides))}")
    return 0


def cmd_validate(args: argparse.Namespace, plugins: Plugins) -> int:
    from .experiment import load_experiment

    exp = load_experiment(args.file, args.overrides, registry=plugins.registry)
    count, table = count_parameters(exp.config, plugins.registry, with_prefix_table=True)
    extra = f" ({count - table} without the puzzle-embedding table)" if table else ""
    print(f"ok: {count} parameters{extra}")
    return 0


def count_parameters(config: object, registry: object, with_prefix_table: bool = False):
    """Build the model on the meta device (no memory, no init cost) and count parameters."""
    import torch

    from .engine.model import ReasoningModel
    from .engine.nn import parameter_count
    from .interfaces import BuildContext

    task = BuildContext(registry, seed=config.seed).build(config.task)  # type: ignore[attr-defined]
    try:
        with torch.device("meta"):
            model = ReasoningModel(config.model, task, registry)  # type: ignore[attr-defined]
    except PonderkitError:
        raise
    except Exception as exc:
        raise PonderkitError(f"building the model failed: {type(exc).__name__}: {exc}") from exc
    total = parameter_count(model)
    if with_prefix_table:
        table = model.puzzle_emb.weight.numel() if model.puzzle_emb is not None else 0
        return total, table
    return total


def cmd_run(args: argparse.Namespace, plugins: Plugins) -> int:
    from .engine.runs import create_run_dir, default_run_dir
    from .engine.train import Trainer
    from .experiment import load_experiment

    exp = load_experiment(args.file, args.overrides, registry=plugins.registry)
    if args.resume:
        if not args.out:
            raise PonderkitError("--resume needs --out DIR, the run directory to continue")
        trainer = resume_trainer(exp.config, args.out, plugins.registry, quiet=args.quiet)
        if trainer is None:
            print(f"{args.out} already finished; nothing to do")
            return 0
        run_dir = args.out
    else:
        out = args.out or default_run_dir(exp.config.name or args.file.stem)
        run_dir = create_run_dir(out)
        trainer = Trainer(exp.config, plugins.registry, run_dir, quiet=args.quiet)
    print(
        f"run directory: {run_dir}  ({sum(p.numel() for p in trainer.model.parameters())} "
        f"parameters, device {trainer.device})",
        flush=True,
    )
    result = trainer.fit()
    summary = " ".join(f"{k}={v:.4f}" for k, v in result.items())
    print(f"done: {summary}")
    return 0


def cmd_eval(args: argparse.Namespace, plugins: Plugins) -> int:
    import json

    from .engine.runs import write_json_atomic, write_text_atomic
    from .engine.train import load_trainer

    trainer = load_trainer(args.run_dir, plugins.registry, args.checkpoint)
    # tasks that score whole puzzles (ARC: votes over augmented views) say so with this method
    puzzles = getattr(trainer.task, "evaluate_puzzles", None)
    given = [o for o in ("arc_submission", "puzzle_ids", "vote") if getattr(args, o)]
    if puzzles is None and given:
        option = "--" + given[0].replace("_", "-")
        raise PonderkitError(
            f"{option}: task {trainer.config.task.name!r} does not score puzzles (use task arc)"
        )
    if args.arc_submission and not args.arc_submission.parent.is_dir():
        raise PonderkitError(f"--arc-submission: no directory {args.arc_submission.parent}")
    report = None
    if puzzles is not None:
        report = puzzles(trainer, puzzle_ids=args.puzzle_ids, vote=args.vote)
    full = trainer.evaluate(early_exit=False)
    result = {"checkpoint": args.checkpoint, "full": full}
    print(_eval_line("all steps", full))
    if report is not None:
        submission = report.pop("submission", None)
        tests = report.pop("tests_per_task", {})
        result["puzzles"] = report
        for split in ("eval", "train"):
            if split in report:
                print(_eval_line(f"{split} set", report[split]))
        print(f"(puzzle ids: {report['puzzle_ids']}, vote: {report['vote']})")
        if args.arc_submission and submission is not None:
            write_text_atomic(args.arc_submission, json.dumps(submission))
            print(
                f"submission: {args.arc_submission} ({len(submission)} tasks, "
                f"{sum(tests.values())} test inputs)"
            )
    if args.early_exit:
        early = trainer.evaluate(early_exit=True)
        saved = 1.0 - early["steps"] / max(full["steps"], 1e-9)
        delta = early["exact_acc"] - full["exact_acc"]
        result.update(early_exit=early, steps_saved=saved, exact_acc_change=delta)
        print(_eval_line("early exit", early))
        print(
            f"early exit saves {saved:.1%} of the steps; exact accuracy changes by "
            f"{delta * 100:+.2f} points"
        )
    # a non-default --puzzle-ids or --vote gets a report file of its own
    suffix = f"-ids-{args.puzzle_ids}" if args.puzzle_ids else ""
    suffix += f"-vote-{args.vote}" if args.vote else ""
    write_json_atomic(args.run_dir / f"eval-{args.checkpoint}{suffix}.json", result)
    return 0


def cmd_ablate(args: argparse.Namespace, plugins: Plugins) -> int:
    from .lab.ablation import load_ablation
    from .lab.grid import prepare, run_grid, select, worker_command

    ablation = load_ablation(args.file, registry=plugins.registry)
    out = args.out or Path("runs") / ablation.name
    select(ablation.runs(), args.only)  # a bad --only fails before anything is measured
    every = prepare(ablation, out, plugins.registry, measure=not args.worker)
    if not args.worker:
        print(
            f"ablation {ablation.name}: {len(ablation.variants)} variants x "
            f"{len(ablation.seeds)} seeds into {out} (budget: {ablation.budget.describe()})",
            flush=True,
        )
    plugin_args = [a for m in getattr(args, "plugin", None) or () for a in ("--plugin", m)]
    failed = run_grid(
        ablation,
        select(every, args.only),
        out,
        plugins.registry,
        jobs=args.jobs,
        child_argv=worker_command(args.file, out, plugin_args),
        say=lambda text: print(text, flush=True),
        plan_runs=None if args.worker else every,
    )
    if not args.worker:
        from .lab.report import write_report

        print(f"report: {write_report(out)}")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace, plugins: Plugins) -> int:
    from .lab.report import write_report

    if not (args.dir / "ablation.json").exists() and not any(args.dir.glob("*/seed*/config.yaml")):
        raise PonderkitError(f"{args.dir} is not an ablation directory (no ablation.json)")
    print(f"report: {write_report(args.dir)}")
    return 0


def cmd_compare(args: argparse.Namespace, plugins: Plugins) -> int:
    from .lab.report import compare_table

    missing = [str(d) for d in args.run_dirs if not (d / "metrics.jsonl").exists()]
    if missing:
        raise PonderkitError(f"not a run directory (no metrics.jsonl): {', '.join(missing)}")
    print(compare_table(args.run_dirs))
    return 0


def resume_trainer(config: object, run_dir: Path, registry: object, quiet: bool = False):
    """A trainer continuing ``run_dir`` (None when it already finished).

    A directory that does not exist or is empty starts a new run; one holding a different
    config is refused, so a resumed run never mixes two experiments."""
    from .engine.runs import create_run_dir
    from .engine.train import Trainer, latest_checkpoint
    from .experiment import load_experiment

    run_dir = Path(run_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return Trainer(config, registry, create_run_dir(run_dir), quiet=quiet)
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise PonderkitError(f"{run_dir} is not a run directory (no config.yaml); cannot resume")
    if load_experiment(saved, registry=registry).config != config:
        raise PonderkitError(
            f"{run_dir} holds a run of a different config; resume it with the "
            f"same file and overrides, or choose another --out"
        )
    trainer = Trainer(config, registry, run_dir, quiet=quiet)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        trainer.restore(checkpoint)
    elif trainer.metrics_log:  # interrupted before its first checkpoint: start the log afresh
        trainer.metrics_log.truncate_after(0)
    if trainer.step >= config.train.steps:  # type: ignore[attr-defined]
        return None
    return trainer


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
}


if __name__ == "__main__":
    sys.exit(main())
