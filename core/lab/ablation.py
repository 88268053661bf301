"""Ablation files: a base experiment, named variants (override sets), seeds and a matched budget.

```yaml
name: quickstart              # optional; default: the file name
base: sort_demo.yaml          # an experiment file, relative to this file
overrides: {train.threads: 1} # optional, applied to every variant (the base included)
baseline: base                # optional; the variant the others are compared with
variants:                     # name -> overrides (a mapping of dotted keys, or a list of
  one_layer: {model.recursion.layers: 1}       #   "key=value" strings as on the command line)
  narrow: ["model.d_model=32"]
seeds: [0, 1]                 # a list, or N for 0..N-1
budget: {steps: 300}          # or {epochs: 10}, {time_s: 60}, {flops: 1.0e12}; the same for all
reference:                    # optional: published figures to read the result beside
  source: "the paper, table 2"
  values:                     # variant -> metric -> figure (metrics: REFERENCE_METRICS)
    base: {loss: 1.06}
    one_layer: {loss: 1.10}
```

With ``reference:`` the report adds a table that reads each variant's difference from the
baseline beside the source's: the same direction with a 95% interval that excludes 0 (agrees),
the opposite direction (disagrees), or an interval that includes 0.

Without ``baseline:`` an implicit variant ``base`` (no overrides) is the reference. Every
variant's config is validated before anything runs, and every error of every variant is
reported at once with the variant's name, the dotted path, and the file and line.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ..contract.config import Structurer
from ..contract.errors import ConfigError, Issue, dotted, suggestion
from ..contract.experiment import (
    SEED_LIMIT,
    Experiment,
    ExperimentConfig,
    experiment_from_document,
    plain_name,
)
from ..contract.registry import Registry
from ..contract.yamlio import Document, apply_overrides, load_document
from ..engine.build import check_buildable
from .ladder import config_differences, flat_config  # noqa: F401  (re-exported)
from .sweep import expand

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED = {"plots", "logs"}  # subdirectories of an ablation directory
MAX_SEEDS = 1000  # `seeds: 1000000000` would otherwise expand into a billion runs
BUDGET_KEYS = {
    "steps": ("train", "steps"),
    "epochs": ("train", "epochs"),
    "time_s": ("train", "max_time_s"),
    "flops": ("train", "flops"),
}
Where = tuple[str | None, int | None]
#: ``tune:`` grid name -> the config key it sets
TUNED_KEYS = {"lr": "optimizer.lr", "warmup": "optimizer.warmup_steps"}
#: what a ``reference:`` may give per variant: run summary values (see run_analysis)
REFERENCE_METRICS = (
    "exact_acc",
    "token_acc",
    "loss",
    "initial_loss",
    "min_loss",
    "loss_improvement",
    "last_epoch_loss",
    "min_epoch_loss",
    "epoch_loss_improvement",
    "halting_steps",
)


def _optional_positive(kind: type) -> Any:
    return attrs.field(
        default=None,
        validator=attrs.validators.optional(
            [attrs.validators.instance_of(kind), attrs.validators.gt(0)]
        ),
    )


@attrs.frozen
class Budget:
    """A compute budget applied identically to every variant; at most one field is set.

    ``steps`` sets ``train.steps``; ``epochs`` sets ``train.epochs`` (every run stops once it
    has drawn epochs x train_size fresh samples, however many optimizer steps that takes);
    ``time_s`` sets ``train.max_time_s``; ``flops`` sets ``train.flops`` (every run stops once
    it has spent them, as counted, so a variant whose steps grow cheaper, a sparser router or
    an earlier halt, takes more of them)."""

    steps: int | None = _optional_positive(int)
    epochs: int | None = _optional_positive(int)
    time_s: float | None = _optional_positive(float)
    flops: float | None = _optional_positive(float)

    def describe(self) -> str:
        if self.steps:
            return f"{self.steps} optimizer steps per run"
        if self.epochs:
            return f"{self.epochs} epochs of fresh training samples per run (train.epochs)"
        if self.time_s:
            return f"{self.time_s:g} s of training per run (train.max_time_s)"
        if self.flops:
            return f"{self.flops:.3g} training FLOPs spent per run (train.flops)"
        return "none (each variant trains as its config says)"


def _grid_of(kind: type) -> Any:
    """A non-empty list of distinct positive values (a tuning grid)."""

    def check(instance: Any, attribute: Any, value: tuple) -> None:
        if not all(isinstance(v, kind) and not isinstance(v, bool) and v > 0 for v in value):
            raise ValueError(f"expected positive {kind.__name__}s, got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"values repeat: {list(value)}")

    return check


@attrs.frozen
class Tune:
    """``tune:``: before the comparison every arm picks its learning rate (and, with
    ``warmup``, its warm-up steps) from this grid: one short run per grid point and seed
    (``budget``, default 200 steps) on the task's training data less a validation split
    (``split`` of it, never the evaluation set), scored on that split by ``metric``; the arm
    then runs with the best point (:mod:`~ponderkit.lab.tune`)."""

    lr: tuple[float, ...] = attrs.field(
        converter=lambda v: tuple(float(x) if isinstance(x, str) else x for x in v),
        validator=[attrs.validators.min_len(1), _grid_of(float)],
    )
    warmup: tuple[int, ...] = attrs.field(default=(), validator=_grid_of(int))
    budget: Budget = attrs.field(factory=lambda: Budget(steps=200))
    split: float = attrs.field(
        default=0.1, validator=[attrs.validators.gt(0.0), attrs.validators.le(0.5)]
    )
    metric: Literal["exact_acc", "token_acc"] = "exact_acc"
    #: tuning seeds (a score is their mean); default: the grid's first seed
    seeds: tuple[int, ...] = ()


@attrs.frozen
class AblationFile:
    """The schema of an ablation file (see the module docstring)."""

    base: str
    variants: dict[str, Any] = attrs.field(factory=dict)
    seeds: Any = (0,)
    budget: Budget = attrs.field(factory=Budget)
    baseline: str | None = None
    overrides: Any = None
    name: str = attrs.field(default="", validator=plain_name)
    description: str = ""
    #: the dotted config path(s) this ablation varies (``model.recursion``); resolved-config
    #: differences between a variant and the baseline outside them are confounds
    factor: Any = None
    #: ``warn``: confounds are listed in the report; ``error``: they are refused before any run
    confounds: Literal["warn", "error"] = "warn"
    #: published figures per variant and metric (``{source, values}``), read beside the result
    reference: Any = None
    #: factor ladders between arms (:mod:`~ponderkit.lab.ladder`): derived variants
    ladders: Any = None
    #: a learning-rate grid each arm picks from before the comparison (:mod:`~ponderkit.lab.tune`)
    tune: Tune | None = None
    #: values of config keys expanded into variants (:mod:`~ponderkit.lab.sweep`)
    sweep: Any = None
    #: ``{variant: sibling or [siblings]}``: the arms each variant is read against besides the
    #: baseline (its nearest dense sibling, say); the report gives them one table
    nearest: Any = None


@attrs.frozen
class Override:
    """One ``key=value`` override and where it was written."""

    text: str
    where: Where = (None, None)
    inner: dict[tuple, Where] = attrs.field(factory=dict, eq=False)  # lines inside the value

    @property
    def path(self) -> tuple[str | int, ...]:
        key = self.text.partition("=")[0].strip()
        return tuple(int(p) if p.isdigit() else p for p in key.split("."))


@attrs.frozen
class Variant:
    name: str
    overrides: tuple[Override, ...]
    config: ExperimentConfig  # for the first seed; others differ only in ``seed``
    document: Document | None = attrs.field(default=None, eq=False, repr=False)  # its lines


@attrs.frozen
class Ablation:
    """A validated ablation: every variant's config, ready to expand into runs."""

    name: str
    description: str
    path: Path
    base: Path
    baseline: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    budget: Budget
    common: tuple[Override, ...]
    factor: tuple[str, ...] = ()
    #: ``{"source": str, "values": {variant: {metric: float}}}`` or None
    reference: dict[str, Any] | None = None
    #: per ladder: ``{from, to, mode, rungs: [{name, parent, step, merged}]}``
    ladders: tuple[dict[str, Any], ...] = ()
    #: variants derived by a ladder (not written in ``variants:``): name -> how
    derived: dict[str, str] = attrs.field(factory=dict)
    tune: Tune | None = None
    #: after tuning (:func:`~ponderkit.lab.tune.apply_tuning`): the grid, every score, each
    #: arm's pick (``picks``: variant -> tuned key -> value) and the FLOPs tuning spent
    tuning: dict[str, Any] = attrs.field(factory=dict)
    #: variant -> the arms it is read against besides the baseline (``nearest:``: its nearest
    #: siblings), one table of the report
    nearest: dict[str, list[str]] = attrs.field(factory=dict)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def runs(self) -> list[Run]:
        """Every variant x seed."""
        return [
            Run(v.name, s, attrs.evolve(v.config, seed=s))
            for v in self.variants
            for s in self.seeds
        ]

    def plan(self) -> dict[str, Any]:
        """The JSON-able description written to ``ablation.json`` (read by reports)."""
        return {
            "name": self.name,
            "description": self.description,
            "file": str(self.path),
            "base": str(self.base),
            "baseline": self.baseline,
            "seeds": list(self.seeds),
            "budget": attrs.asdict(self.budget),
            "budget_text": self.budget.describe(),
            "common_overrides": [o.text for o in self.common],
            "variants": {v.name: [o.text for o in v.overrides] for v in self.variants},
            "factor": list(self.factor),
            "differences": {
                v.name: config_differences(self.variant(self.baseline).config, v.config)
                for v in self.variants
                if v.name != self.baseline
            },
            "confounds": {
                v.name: confounds(
                    self.variant(self.baseline).config, v.config, (*self.factor, *self.tuned)
                )
                for v in self.variants
                if v.name != self.baseline
            },
            "reference": self.reference,
            "ladders": list(self.ladders),
            "nearest": dict(self.nearest),
            "derived": dict(self.derived),
            "tune": attrs.asdict(self.tune) if self.tune else None,
            "tuning": self.tuning,
        }

    @property
    def tuned(self) -> tuple[str, ...]:
        """The config keys ``tune:`` sets per arm (none without it)."""
        if self.tune is None:
            return ()
        return (TUNED_KEYS["lr"],) + ((TUNED_KEYS["warmup"],) if self.tune.warmup else ())


@attrs.frozen
class Run:
    variant: str
    seed: int
    config: ExperimentConfig
    #: a tuning run's validation split (:mod:`~ponderkit.lab.tune`): it trains on the rest of
    #: the training data and evaluates on this share of it, never on the evaluation set
    holdout: float | None = None

    @property
    def key(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def directory(self, out: Path) -> Path:
        return Path(out) / self.variant / f"seed{self.seed}"


def load_ablation(
    path: str | Path, *, registry: Registry, build: bool = True, sweep: Sequence[str] = ()
) -> Ablation:
    """Load and validate an ablation file and every variant's experiment; one ConfigError.
    With ``build``, every variant's components are also built (the model on the meta device)
    and checked against their contracts. ``sweep``: ``KEY=V1,V2`` (``ablate --sweep``)."""
    path = Path(path)
    doc = load_document(path)
    structurer = Structurer(registry)
    spec = structurer.structure_class(AblationFile, doc.data, ())
    issues = [doc.locate(i) for i in structurer.issues]
    if spec is None:  # go on past unknown top-level keys to report the variants' errors too
        unknown = tuple(k for k in doc.data if k not in attrs.fields_dict(AblationFile))
        spec = Structurer(registry).structure_class(AblationFile, doc.data, (), allow=unknown)
        if spec is None:
            raise ConfigError(issues)
    seeds = _seeds(spec.seeds, doc, issues)
    budget_keys = [k for k in BUDGET_KEYS if getattr(spec.budget, k) is not None]
    if len(budget_keys) > 1:
        issues.append(
            _at(doc, ("budget",), f"set one of {', '.join(BUDGET_KEYS)}, not {budget_keys}")
        )
    common = _overrides(spec.overrides, ("overrides",), doc, issues)
    named, baseline = _variants(spec, doc, issues)
    if spec.sweep is not None or sweep:  # variants x the values swept
        named, baseline = expand(
            named, baseline, bool(spec.variants), spec.sweep, sweep, doc, issues, Override
        )
    issues += _budget_conflicts(budget_keys[0] if budget_keys else None, common, named)
    written_in = Path(doc.where(("base",))[0] or path)  # relative to the file that says it
    base_path = written_in.parent / spec.base
    if not base_path.exists():
        issues.append(_at(doc, ("base",), f"base experiment not found: {base_path}"))
        raise ConfigError(issues)
    try:
        base_doc = load_document(base_path)
    except ConfigError as exc:
        raise ConfigError(issues + exc.issues) from None
    budget = _budget_overrides(spec.budget, doc)
    first = (Override(f"seed={seeds[0]}", doc.where(("seeds",))),)
    variants, per_variant = [], {}
    for name, overrides in named.items():
        all_overrides = (*common, *overrides, *budget, *first)
        try:
            exp = variant_experiment(base_doc, all_overrides, registry)
            if build:  # builder mistakes too, before any run directory exists
                check_buildable(exp, registry)
            config = exp.config
        except ConfigError as exc:
            per_variant[name] = exc.issues
            continue
        variants.append(Variant(name, tuple(overrides), config, exp.document))
    ladders, derived = [], {}
    if spec.ladders is not None and not per_variant:  # rungs need every arm they join
        ladders, rungs = _ladders(spec.ladders, variants, registry, build, doc, issues)
        variants += rungs
        derived = {r.name: str(r.overrides[0].text) for r in rungs}
    factor = _factor(spec.factor, doc, issues)
    published = _reference(spec.reference, named, baseline, doc, issues)
    nearest = _nearest(spec.nearest, [v.name for v in variants], doc, issues)
    reference = next((v for v in variants if v.name == baseline), None)
    written = [(("overrides",), common)] + [(("variants", n), o) for n, o in named.items()]
    tuned = _tune_issues(spec.tune, written, variants, registry, build, doc, issues)
    if spec.confounds == "error" and reference is not None:
        for v in variants:
            found = confounds(reference.config, v.config, (*factor, *tuned))
            if v.name != baseline and found:
                what = f"outside the factor ({', '.join(factor)})" if factor else "(no factor set)"
                issues.append(
                    _at(
                        doc,
                        ("variants", v.name),
                        f"differs from the baseline {baseline!r} {what} in: {', '.join(found)}",
                        "confounds: error refuses this; name it in `factor` or remove it",
                    )
                )
    if issues or per_variant:
        raise ConfigError(issues + _name_variants(per_variant))
    order = sorted(variants, key=lambda v: v.name != baseline)  # baseline first
    return Ablation(
        name=spec.name or path.stem,
        description=spec.description,
        path=path,
        base=base_path,
        baseline=baseline,
        variants=tuple(order),
        seeds=tuple(seeds),
        budget=spec.budget,
        common=tuple(common),
        factor=tuple(factor),
        reference=published,
        ladders=tuple(ladders),
        derived=derived,
        tune=spec.tune,
        nearest=nearest,
    )


def _tune_issues(
    tune: Tune | None,
    written: list[tuple[tuple, list[Override]]],
    variants: list[Variant],
    registry: Registry,
    build: bool,
    doc: Document,
    issues: list[Issue],
) -> tuple[str, ...]:
    """The keys ``tune:`` sets; a variant that sets one itself, or a task that cannot hold out
    part of its training data, is an issue."""
    if tune is None:
        return ()
    keys = (TUNED_KEYS["lr"],) + ((TUNED_KEYS["warmup"],) if tune.warmup else ())
    for at, overrides in written:
        for o in overrides:
            key = ".".join(map(str, o.path))
            if any(k == key or k.startswith(key + ".") for k in keys):
                issues.append(Issue(at, f"{o.text!r} sets what tune: picks for "
                                    "every arm", file=o.where[0], line=o.where[1]))  # fmt: skip
    if build and variants:
        from ..contract.interfaces import HoldsOutTraining
        from ..engine.build import build_context

        config = variants[0].config
        task = build_context(config, registry).build(config.task)
        if not isinstance(task, HoldsOutTraining):
            issues.append(_at(doc, ("tune",), f"task {config.task.name!r} cannot set part of "
                              "its training data aside (no holdout(fraction)) to tune on",
                              "tune on a task that implements ponderkit.HoldsOutTraining"))  # fmt: skip
    return keys


def _ladders(
    value: Any,
    variants: list[Variant],
    registry: Registry,
    build: bool,
    doc: Document,
    issues: list[Issue],
) -> tuple[list[dict[str, Any]], list[Variant]]:
    """``ladders:`` -> their plans and the derived variants (a rung whose config equals an arm
    already in the grid is that arm, run once), every rung validated and, with ``build``,
    built; a rung that cannot be is one issue naming it (:mod:`~ponderkit.lab.ladder`)."""
    from .ladder import RungError, derive, parse_specs, unflatten

    specs, problems = parse_specs(value)
    issues += [_at(doc, at, message) for at, message in problems]
    arms = {v.name: v for v in variants}
    plans, derived = [], []
    for i, spec in specs:
        at = ("ladders", i)
        missing = [n for n in (spec.source, spec.target) if n not in arms]
        for name in missing:
            hint = suggestion(name, arms) or f"variants: {', '.join(arms)}"
            issues.append(_at(doc, at, f"no variant named {name!r}", hint))
        if missing:
            continue
        where = doc.where(at)

        def make(flat: dict[str, Any], where: Where = where) -> ExperimentConfig:
            doc_ = Document(unflatten(flat), {(): where}, where[0])
            exp = experiment_from_document(doc_, registry)
            if build:
                check_buildable(exp, registry)
            return exp.config

        label = f"{spec.source} -> {spec.target}"
        try:
            rungs = derive(spec, arms[spec.source].config, arms[spec.target].config, make)
        except RungError as exc:
            issues.append(_at(doc, at, f"ladder {label} ({spec.mode}): {exc}"))
            continue
        steps = []
        renamed: dict[str, str] = {}  # a rung's derived name -> the arm that runs it
        for rung in rungs:
            same = next((v.name for v in arms.values() if v.config == rung.config), None)
            name = same or rung.name
            if same is None and name in arms:  # the name is taken by another config
                name = f"{rung.name}@{spec.target}"
                n = 2
                while name in arms:  # two ladders to one target
                    name, n = f"{rung.name}@{spec.target}.{n}", n + 1
            if same is None:
                parent = renamed.get(rung.parent, rung.parent)
                text = f"{label}: {rung.step} of {spec.target} onto {parent}"
                variant = Variant(name, (Override(text, where),), rung.config,
                                  Document(unflatten(flat_config(rung.config)), {(): where}, where[0]))  # fmt: skip
                arms[name] = variant
                derived.append(variant)
            renamed[rung.name] = name
            steps.append({"name": name, "parent": renamed.get(rung.parent, rung.parent),
                          "step": rung.step, "merged": rung.merged})  # fmt: skip
        plans.append({"from": spec.source, "to": spec.target, "mode": spec.mode, "rungs": steps})
    return plans, derived


def _variants(spec: AblationFile, doc: Document, issues: list[Issue]) -> tuple[dict, str]:
    """Variant name -> overrides (the implicit ``base`` first unless a baseline is named)."""
    named = {}
    for name, value in spec.variants.items():
        if not NAME_RE.match(str(name)) or name in RESERVED:
            rule = f"letters, digits, '_', '.', '-', and not {sorted(RESERVED)}"
            issues.append(
                _at(doc, ("variants", name), f"a variant name is a directory name: {rule}")
            )
        named[str(name)] = _overrides(value, ("variants", name), doc, issues)
    baseline = spec.baseline or "base"
    if spec.baseline is None and "base" not in named:
        named = {"base": [], **named}
    if baseline not in named:
        hint = suggestion(baseline, named) or f"variants: {', '.join(named)}"
        issues.append(_at(doc, ("baseline",), f"no variant named {baseline!r} ({hint})"))
    return named, baseline


def variant_config(
    base_doc: Document, overrides: Sequence[Override], registry: Registry
) -> ExperimentConfig:
    """The base experiment with ``overrides`` applied, each error located where it was written."""
    return variant_experiment(base_doc, overrides, registry).config


def preflight_variants(ablation: Ablation, registry: Registry) -> None:
    """What ``run`` would refuse (device, memory) for every variant, in one ConfigError."""
    from ..engine.preflight import preflight

    per_variant = {}
    for v in ablation.variants:
        issues = preflight(v.config, registry)
        if issues:
            per_variant[v.name] = [v.document.locate(i) if v.document else i for i in issues]
    if per_variant:
        raise ConfigError(_name_variants(per_variant))


def variant_experiment(
    base_doc: Document, overrides: Sequence[Override], registry: Registry
) -> Experiment:
    """:func:`variant_config` with the document that located it."""
    doc = Document(copy.deepcopy(base_doc.data), dict(base_doc.positions), base_doc.source)
    for o in overrides:
        try:
            apply_overrides(doc, [o.text])
        except ConfigError as exc:
            raise ConfigError([i.located(*o.where) for i in exc.issues]) from None
        # errors inside the value point at the line where the override wrote them
        n = len(o.path)
        for sub in [k for k in doc.positions if k[:n] == o.path]:
            doc.positions[sub] = o.where
        doc.positions.update({(*o.path, *rel): w for rel, w in o.inner.items()})
    return experiment_from_document(doc, registry)


def confounds(base: ExperimentConfig, other: ExperimentConfig, factor: Sequence[str]) -> list[str]:
    """Keys that differ from the baseline outside every ``factor`` path."""
    inside = lambda k: any(k == f or k.startswith(f + ".") for f in factor)  # noqa: E731
    return [k for k in config_differences(base, other) if not inside(k)]


def _factor(value: Any, doc: Document, issues: list[Issue]) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        issues.append(_at(doc, ("factor",), "expected a dotted config path or a list of them"))
        return []
    return list(items)


def _nearest(
    value: Any, names: list[str], doc: Document, issues: list[Issue]
) -> dict[str, list[str]]:
    """``nearest: {VARIANT: SIBLING or [SIBLING, ...]}``, checked: every name is an arm of the
    grid (rungs included), and an arm is not its own sibling."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        issues.append(_at(doc, ("nearest",), "expected {VARIANT: SIBLING or [SIBLING, ...]}"))
        return {}
    out: dict[str, list[str]] = {}
    for variant, siblings in value.items():
        listed = siblings if isinstance(siblings, list) else [siblings]
        ok = True
        for i, (name, at) in enumerate([(variant, ("nearest",))] + [
            (s, ("nearest", variant, j) if isinstance(siblings, list) else ("nearest", variant))
            for j, s in enumerate(listed)
        ]):  # fmt: skip
            if not isinstance(name, str) or name not in names:
                hint = suggestion(str(name), names) or f"variants: {', '.join(names)}"
                issues.append(_at(doc, at, f"no variant named {name!r}", hint))
                ok = False
            elif i and name == variant:
                issues.append(_at(doc, at, "an arm is not its own sibling"))
                ok = False
        if ok and listed:
            out[variant] = list(dict.fromkeys(listed))
    return out


def _reference(
    value: Any, named: Mapping[str, Any], baseline: str, doc: Document, issues: list[Issue]
) -> dict[str, Any] | None:
    """``reference: {source: TEXT, values: {variant: {metric: number}}}``, checked: known
    variants (the baseline among them) and metrics, numbers."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"source", "values"}:
        issues.append(_at(doc, ("reference",), "expected {source: TEXT, values: {VARIANT: "
                          "{METRIC: NUMBER}}}"))  # fmt: skip
        return None
    source = value.get("source", "")
    if not isinstance(source, str):
        issues.append(_at(doc, ("reference", "source"), f"expected text, got {source!r}"))
    values = value.get("values")
    if not isinstance(values, Mapping) or not values:
        issues.append(_at(doc, ("reference", "values"), "expected {VARIANT: {METRIC: NUMBER}}"))
        return None
    out: dict[str, dict[str, float]] = {}
    for variant, metrics in values.items():
        at = ("reference", "values", variant)
        if variant not in named:
            hint = suggestion(str(variant), named) or f"variants: {', '.join(named)}"
            issues.append(_at(doc, at, f"no variant named {variant!r}", hint))
            continue
        if not isinstance(metrics, Mapping):
            issues.append(_at(doc, at, "expected {METRIC: NUMBER}"))
            continue
        for metric, number in metrics.items():
            if metric not in REFERENCE_METRICS:
                hint = suggestion(str(metric), REFERENCE_METRICS) or (
                    f"metrics: {', '.join(REFERENCE_METRICS)}"
                )
                issues.append(_at(doc, (*at, metric), f"unknown metric {metric!r}", hint))
            elif isinstance(number, bool) or not isinstance(number, int | float):
                issues.append(_at(doc, (*at, metric), f"expected a number, got {number!r}"))
            else:
                out.setdefault(str(variant), {})[metric] = float(number)
    if out and baseline not in out:
        issues.append(
            _at(
                doc,
                ("reference", "values"),
                f"no figures for the baseline {baseline!r}: "
                "the source's differences are taken from it",
            )  # fmt: skip
        )
    return {"source": source if isinstance(source, str) else "", "values": out}


def _name_variants(per_variant: dict[str, list[Issue]]) -> list[Issue]:
    """Issues every variant shares (e.g. in the base file) once; the rest named by variant."""
    key = lambda i: (i.path, i.message, i.file, i.line)  # noqa: E731
    sets = [set(map(key, v)) for v in per_variant.values()]
    shared = set.intersection(*sets) if len(sets) > 1 else set()
    out, seen = [], set()
    for name, issues in per_variant.items():
        for i in issues:
            if key(i) in shared:
                if key(i) not in seen:
                    seen.add(key(i))
                    out.append(i)
                continue
            out.append(
                attrs.evolve(i, path=("variants", name), message=f"{dotted(i.path)}: {i.message}")
            )
    return out


def _at(doc: Document, path: tuple, message: str, hint: str = "") -> Issue:
    return doc.locate(Issue(path, message, hint))


def _seeds(value: Any, doc: Document, issues: list[Issue]) -> list[int]:
    def is_seed(s: Any) -> bool:
        return isinstance(s, int) and not isinstance(s, bool) and 0 <= s < SEED_LIMIT

    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SEEDS:
        return list(range(value))
    if isinstance(value, list | tuple) and 0 < len(value) <= MAX_SEEDS and all(map(is_seed, value)):
        if len(set(value)) == len(value):
            return list(value)
        issues.append(_at(doc, ("seeds",), f"seeds repeat: {list(value)}"))
        return list(dict.fromkeys(value))
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    issues.append(
        _at(
            doc,
            ("seeds",),
            f"expected a list of seeds (ints in [0, 2**63)) or a count from 1 to {MAX_SEEDS}, "
            f"got {shown}",
        )
    )
    return [0]


def _overrides(value: Any, at: tuple, doc: Document, issues: list[Issue]) -> list[Override]:
    """A variant's overrides: a mapping {dotted.key: value}, a list of "key=value", or null."""
    if value is None:
        return []
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            odd = _not_plain(v)
            if odd is not None:  # e.g. an unquoted date, which YAML reads as a datetime
                message = f"{k}: {odd!r} is a {type(odd).__name__}, not a config value; quote it"
                issues.append(_at(doc, (*at, k), message))
                continue
            n = len(at) + 1
            inner = {p[n:]: w for p, w in doc.positions.items() if p[:n] == (*at, k) and p[n:]}
            out.append(Override(f"{k}={json.dumps(v)}", doc.where((*at, k)), inner))
        return out
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return [Override(v, doc.where((*at, i))) for i, v in enumerate(value)]
    issues.append(
        _at(
            doc,
            at,
            "overrides are a mapping {dotted.key: value} or a list of 'key=value' "
            f"strings, got {value!r}",
        )
    )
    return []


def _not_plain(value: Any) -> Any:
    """The first value inside ``value`` that is not JSON data (a date, a set...), or None."""
    if isinstance(value, dict):
        return next((x for x in map(_not_plain, [*value, *value.values()]) if x is not None), None)
    if isinstance(value, list):
        return next((x for x in map(_not_plain, value) if x is not None), None)
    if value is None or isinstance(value, str | int | float | bool):
        return None
    return value


def _budget_conflicts(
    key: str | None, common: list[Override], named: dict[str, list[Override]]
) -> list[Issue]:
    """Overrides that would make the budget differ between variants.

    The budget's own setting is fixed for everyone; under any budget a variant may not set the
    other kind of limit either (a variant with ``train.max_time_s`` under a steps budget trains
    for a different budget than the report says), nor replace the whole ``train`` mapping."""
    issues = []
    limits = [("train", "steps"), ("train", "epochs"), ("train", "flops"), ("train", "max_time_s")]
    lengths = [("train", "steps"), ("train", "epochs"), ("train", "flops")]  # one fixes all
    own = lengths if key in ("steps", "epochs", "flops") else [BUDGET_KEYS[key]] if key else []
    for where, overrides in [(("overrides",), common)] + [
        (("variants", n), o) for n, o in named.items()
    ]:
        fixed = limits if key and where[0] == "variants" else own
        for o in overrides:
            p = o.path
            sets = any(p[: len(f)] == f or f[: len(p)] == p for f in fixed)
            if sets or p == ("seed",):
                what = "the seeds" if p == ("seed",) else f"the budget ({key})"
                message = f"{o.text!r} sets what {what} fixes for every variant"
                issues.append(Issue(where, message, file=o.where[0], line=o.where[1]))
    return issues


def _budget_overrides(budget: Budget, doc: Document) -> list[Override]:
    if budget.steps:
        where = doc.where(("budget", "steps"))
        return [
            Override("train.epochs=null", where),
            Override(f"train.steps={budget.steps}", where),
        ]
    if budget.epochs:
        where = doc.where(("budget", "epochs"))
        return [
            Override("train.steps=null", where),
            Override(f"train.epochs={budget.epochs}", where),
        ]
    if budget.flops:  # every run stops once it has spent them, as counted
        where = doc.where(("budget", "flops"))
        return [
            Override("train.steps=null", where),
            Override("train.epochs=null", where),
            Override(f"train.flops={budget.flops!r}", where),
        ]
    if budget.time_s:
        return [Override(f"train.max_time_s={budget.time_s}", doc.where(("budget", "time_s")))]
    return []


def config_digest(config: Any) -> str:
    import hashlib

    from ..contract.config import unstructure
    from ..contract.yamlio import dump

    return hashlib.sha256(dump(unstructure(config)).encode()).hexdigest()[:16]
