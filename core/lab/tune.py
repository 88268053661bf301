"""Tuned arms: each arm picks its learning rate (and warm-up) before the comparison.

With ``tune:`` in an ablation file (:class:`~ponderkit.lab.ablation.Tune`)::

    tune: {lr: [1.0e-4, 3.0e-4, 1.0e-3], warmup: [20, 100], budget: {steps: 200}, split: 0.1}

every arm trains once per grid point (and tuning seed) at the short budget, on the task's
training data less a validation split (``split`` of it, :class:`ponderkit.HoldsOutTraining`),
and is scored there; the evaluation set is never read. The comparison then runs each arm with
its best point (the highest mean validation ``metric`` over the tuning seeds; ties go to token
accuracy, then to the earlier grid point). Tuning runs are run folders
``OUT/tune/<arm>/<point>/seed<k>/`` that skip and resume like the grid's; ``OUT/tune/
tune.json`` keeps the grid, every score, the picks and the FLOPs tuning spent, for the report.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import attrs

from ..contract.errors import InputError
from ..contract.experiment import ExperimentConfig, experiment_from_document
from ..contract.yamlio import Document
from ..engine.runs import write_json_atomic
from .ablation import TUNED_KEYS, Ablation, Run, Tune
from .ladder import flat_config, unflatten

TUNE_DIR = "tune"
VALIDATION = "validation.json"  # a finished tuning run's scores on its validation split


def grid_points(tune: Tune) -> list[dict[str, float]]:
    """Every grid point, in the order written (lr slowest): ``{"lr": x[, "warmup": w]}``."""
    if not tune.warmup:
        return [{"lr": lr} for lr in tune.lr]
    return [{"lr": lr, "warmup": w} for lr, w in itertools.product(tune.lr, tune.warmup)]


def point_label(point: dict[str, float]) -> str:
    """A grid point as a directory name: ``lr=0.001`` or ``lr=0.001,warmup=100``."""
    return ",".join(f"{k}={v:g}" for k, v in point.items())


def with_point(
    config: ExperimentConfig, point: dict[str, float], registry: Any
) -> ExperimentConfig:
    """``config`` with the grid point's keys set (validated as any config)."""
    flat = flat_config(config)
    for name, value in point.items():
        flat[TUNED_KEYS[name]] = int(value) if name == "warmup" else float(value)
    doc = Document(unflatten(flat), {}, "tune")
    return experiment_from_document(doc, registry).config


def tuning_config(
    config: ExperimentConfig, tune: Tune, point: dict, registry: Any
) -> ExperimentConfig:
    """An arm's config for one tuning run: the grid point, the tuning budget (in place of the
    grid's), and evaluations along the way for the tuning curves."""
    config = with_point(config, point, registry)
    b = tune.budget
    train = attrs.evolve(
        config.train,
        steps=b.steps,
        epochs=b.epochs,
        flops=b.flops,
        max_time_s=b.time_s,
        eval_every=max(1, b.steps // 4) if b.steps else config.train.eval_every,
    )
    return attrs.evolve(config, train=train)


def tuning_runs(ablation: Ablation, registry: Any) -> list[Run]:
    """Every arm x grid point x tuning seed, as runs under ``OUT/tune/`` (none without tune)."""
    tune = ablation.tune
    if tune is None:
        return []
    seeds = tune.seeds or ablation.seeds[:1]
    runs = []
    for v in ablation.variants:
        for point in grid_points(tune):
            config = tuning_config(v.config, tune, point, registry)
            name = f"{TUNE_DIR}/{v.name}/{point_label(point)}"
            runs += [Run(name, s, attrs.evolve(config, seed=s), holdout=tune.split) for s in seeds]
    return runs


def validation_scores(run_dir: Path) -> dict[str, float]:
    """The last evaluation on the validation split, and what the run spent, from its metrics
    (``metrics.jsonl`` is the source of truth)."""
    last: dict[str, Any] = {}
    spent: dict[str, Any] = {}
    curve = []  # [step, exact, token] of every evaluation: the tuning curve
    with (run_dir / "metrics.jsonl").open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
            if "eval/exact_acc" in record:
                last = record
                curve.append([record.get("step", 0), record["eval/exact_acc"],
                              record.get("eval/token_acc")])  # fmt: skip
            spent = record
    return {
        "exact_acc": float(last.get("eval/exact_acc", float("nan"))),
        "token_acc": float(last.get("eval/token_acc", float("nan"))),
        "flops": float(spent.get("flops", 0.0)),
        "steps": int(spent.get("step", 0)),
        "curve": curve,
    }


def write_validation(run_dir: Path) -> None:
    """``validation.json`` of a finished tuning run (what marks it done)."""
    write_json_atomic(run_dir / VALIDATION, validation_scores(run_dir))


def pick(scores: dict[str, dict[str, float]], metric: str) -> str:
    """The grid point (label) with the highest ``metric``; ties: token accuracy, then the
    earlier point (``scores`` is in grid order). A NaN score never wins."""

    def key(item: tuple[int, tuple[str, dict]]) -> tuple:
        i, (_, s) = item
        clean = lambda x: x if x == x else float("-inf")  # noqa: E731  (NaN: an unscored run)
        return (clean(s[metric]), clean(s["token_acc"]), -i)

    return max(enumerate(scores.items()), key=key)[1][0]


def apply_tuning(ablation: Ablation, out: Path, registry: Any) -> Ablation:
    """``ablation`` with every arm at its picked grid point, read from the finished tuning
    runs under ``out/tune``; ``out/tune/tune.json`` records the grid, the scores, the picks and
    the FLOPs spent. Raises :class:`InputError` naming a tuning run that has not finished."""
    tune = ablation.tune
    if tune is None:
        return ablation
    runs = tuning_runs(ablation, registry)
    missing = [r.key for r in runs if not (r.directory(out) / VALIDATION).exists()]
    if missing:
        raise InputError(
            f"tuning run {missing[0]} (and {len(missing) - 1} more) has not finished; run "
            "ablate again to finish tuning before the comparison"
        )
    table: dict[str, dict[str, dict[str, Any]]] = {}
    flops = 0.0
    for run in runs:
        scores = json.loads((run.directory(out) / VALIDATION).read_text("utf-8"))
        arm, label = run.variant.split("/")[1:]
        flops += scores["flops"]
        table.setdefault(arm, {}).setdefault(label, {"seeds": []})["seeds"].append(scores)
    for arm in table.values():  # mean over tuning seeds
        for cell in arm.values():
            for k in ("exact_acc", "token_acc", "flops"):
                cell[k] = sum(s[k] for s in cell["seeds"]) / len(cell["seeds"])
    labels = {point_label(p): p for p in grid_points(tune)}
    picks, variants = {}, []
    for v in ablation.variants:
        chosen = pick(table[v.name], tune.metric)
        point = labels[chosen]
        picks[v.name] = {TUNED_KEYS[k]: value for k, value in point.items()} | {"point": chosen}
        config = attrs.evolve(with_point(v.config, point, registry), seed=v.config.seed)
        variants.append(attrs.evolve(v, config=config))
    record = {
        "grid": [point_label(p) for p in grid_points(tune)],
        "tune": attrs.asdict(tune),
        "scores": table,
        "picks": picks,
        "flops": flops,
        "runs": len(runs),
    }
    write_json_atomic(out / TUNE_DIR / "tune.json", record)
    return attrs.evolve(ablation, variants=tuple(variants), tuning=record)
