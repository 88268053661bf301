"""The experiment schema and its loading: YAML file -> validated :class:`Experiment`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import validators as v

from .config import Spec, Structurer, component, components, iter_specs
from .errors import ConfigError, Issue
from .registry import Registry
from .yamlio import Document, load_document

positive = v.gt(0)
non_negative = v.ge(0)
SEED_LIMIT = 2**63
# a batch larger than this is a typo (1e9), caught before the allocator fails on it
MAX_BATCH = 2**20
DEFAULT_STEPS = 1000  # train.steps when neither steps nor epochs is set  # torch.manual_seed takes a signed 64-bit seed
# a run directory is runs/<name>-<time>: the name must stay one path component
RUN_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def finite(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A float that is not inf or nan (``.inf`` is valid YAML, and trains nothing but NaN)."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


def _betas(instance: Any, attribute: attrs.Attribute, value: tuple[float, float]) -> None:
    if not all(0.0 <= b < 1.0 for b in value):
        raise ValueError(f"'{attribute.name}' must both lie in [0, 1), got {list(value)}")


def _seed(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"'{attribute.name}' must lie in [0, 2**63), got {value}")


def plain_name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if len(value) > 200:  # a path component holds 255 bytes; the time stamp needs some
        raise ValueError(f"'{attribute.name}' names the run directory: at most 200 "
                         f"characters, got {len(value)}")  # fmt: skip
    if not RUN_NAME_RE.match(value):
        raise ValueError(
            f"'{attribute.name}' names the run directory (runs/<name>-<time>): use letters, "
            f"digits, '_', '.', '-' and no '/', got {value!r}"
        )


@attrs.frozen
class ModelConfig:
    """The model: embedding, recursion over blocks, output head and halting policy."""

    recursion: Spec = component("recursion", help="how blocks are applied in depth")
    d_model: int = attrs.field(default=128, validator=positive)
    halting: Spec = component("halting", default="fixed", help="when recursion stops")
    positions: Literal["rope", "learned", "none"] = "rope"
    rope_theta: float = attrs.field(default=10000.0, validator=[finite, positive])
    puzzle_emb_len: int = attrs.field(default=0, validator=non_negative)
    # width of a puzzle-embedding row; 0 = puzzle_emb_len * d_model. TRM stores D numbers per
    # identifier and zero-pads them to the 16-position prefix (a table 16x smaller).
    puzzle_emb_dim: int = attrs.field(default=0, validator=non_negative)

    @puzzle_emb_dim.validator
    def _fits_prefix(self, attribute: attrs.Attribute, value: int) -> None:
        if value > self.puzzle_emb_len * self.d_model:
            raise ValueError(
                f"'puzzle_emb_dim' must be at most puzzle_emb_len * d_model "
                f"= {self.puzzle_emb_len * self.d_model}, got {value}"
            )

    loss: Literal["softmax", "stablemax"] = "softmax"


#: Parameter categories an optimizer can keep out of weight decay (``no_decay``).
NoDecay = Literal["vectors", "norms", "biases", "embeddings"]


@attrs.frozen
class OptimizerConfig:
    """What every ``optimizer`` plugin's config extends: the learning rate and its schedule
    (linear warmup, then constant or cosine decay), weight decay and which parameters it
    spares, and gradient clipping. The update rule's own fields live in the plugin's subclass.

    ``no_decay``: ``vectors`` (every parameter of fewer than 2 dimensions), ``norms``
    (normalisation layers' parameters), ``biases``, ``embeddings`` (``nn.Embedding`` tables).
    The default, ``[vectors]``, is what ponderkit did before optimizers were plugins."""

    #: peak learning rate
    lr: float = attrs.field(default=1e-3, validator=[finite, positive])
    #: decoupled weight decay (not on the no_decay parameters)
    weight_decay: float = attrs.field(default=0.1, validator=[finite, non_negative])
    #: steps of linear warmup from lr/warmup_steps to lr
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    #: after warmup: constant, or cosine down to min_lr_ratio * lr at the end of the budget
    decay: Literal["constant", "cosine"] = "constant"
    #: the cosine's floor as a fraction of lr
    min_lr_ratio: float = attrs.field(default=0.1, validator=[non_negative, v.le(1.0)])
    # null turns clipping off; a negative norm would flip every gradient
    grad_clip: float | None = attrs.field(default=1.0, validator=v.optional([finite, positive]))
    #: parameters spared weight decay: vectors, norms, biases, embeddings
    no_decay: tuple[NoDecay, ...] = ("vectors",)


def betas_in_range(instance: Any, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
    """Validator for an optimizer's ``betas``: each in [0, 1)."""
    _betas(instance, attribute, value)


#: The optimizer of an ``optimizer:`` mapping written without ``name:`` (before optimizers
#: were a kind of component, AdamW was the only one).
DEFAULT_OPTIMIZER = "adamw"


@attrs.frozen
class TrainConfig:
    """Length of training, batch size, logging, evaluation and hardware settings."""

    # the length of training: optimizer steps, or epochs of fresh samples (one of the two;
    # neither: 1000 steps). An epoch is ``train_size`` fresh samples drawn: under deep
    # supervision a sample enters a batch slot only when the slot's previous sample halted,
    # so the steps an epoch takes depend on halting.
    steps: int | None = attrs.field(default=None, validator=v.optional(positive))
    epochs: int | None = attrs.field(default=None, validator=v.optional(positive))
    # or training FLOPs spent, as counted (see flops_every): a run stops once it has spent
    # them, so a step made cheaper (a sparser router, an earlier halt) buys more steps
    flops: float | None = attrs.field(default=None, validator=v.optional([finite, positive]))

    @epochs.validator
    def _one_length(self, attribute: attrs.Attribute, value: int | None) -> None:
        if value is not None and self.steps is not None:
            raise ValueError(
                f"set 'steps' or 'epochs', not both (steps={self.steps}, epochs={value})"
            )

    @flops.validator
    def _one_budget(self, attribute: attrs.Attribute, value: float | None) -> None:
        if value is None:
            return
        if self.steps is not None or self.epochs is not None:
            given = "steps" if self.steps is not None else "epochs"
            raise ValueError(f"set one of 'steps', 'epochs', 'flops', not {given} and flops")
        if not self.flops_every:
            raise ValueError("flops needs flops_every > 0 (the FLOPs spent are counted)")

    def __attrs_post_init__(self) -> None:
        if self.steps is None and self.epochs is None and self.flops is None:
            object.__setattr__(self, "steps", DEFAULT_STEPS)

    # stop early (and checkpoint) after this wall-clock time
    max_time_s: float | None = attrs.field(default=None, validator=v.optional([finite, positive]))
    batch_size: int = attrs.field(default=64, validator=[positive, v.le(MAX_BATCH)])
    log_every: int = attrs.field(default=10, validator=positive)
    eval_every: int = attrs.field(default=0, validator=non_negative)
    eval_batch_size: int = attrs.field(default=256, validator=[positive, v.le(MAX_BATCH)])
    checkpoint_every: int = attrs.field(default=0, validator=non_negative)  # steps; 0: off
    # wall-clock cadence, so that a default run is resumable without costing a long one much
    checkpoint_every_s: float = attrs.field(default=600.0, validator=[finite, non_negative])
    keep_checkpoints: int = attrs.field(default=3, validator=non_negative)  # step_*; 0: all
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    # true: the whole recursion through torch.compile (one graph of every step, the longest
    # warm-up); block: each block once (small graphs reused by every step, a short warm-up)
    compile: bool | Literal["block"] = False
    # torch.compile's mode for what ``compile`` compiles: ``reduce-overhead`` replays CUDA
    # graphs (fewer launches), ``max-autotune`` also searches GEMM kernels (longer warm-up)
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
    # torch.set_num_threads takes a C int; more threads than this is a typo, not a machine
    threads: int | None = attrs.field(default=None, validator=v.optional([positive, v.le(4096)]))
    # a step whose loss or gradient norm is nan or inf: ``stop`` the run there (exit 3, the
    # checkpoints written before it kept), or ``skip`` its update and count it
    # (``nonfinite_skipped`` in the metrics)
    nonfinite: Literal["stop", "skip"] = "stop"
    # FLOPs of an optimizer step are counted (torch FlopCounterMode) at the first step and
    # every ``flops_every`` steps; the steps between count the latest measurement; 0: never
    # (no ``flops`` logged)
    flops_every: int = attrs.field(default=100, validator=non_negative)


@attrs.frozen
class ExperimentConfig:
    """One training run: a task, a model, how to train it, and callbacks."""

    task: Spec = component("task", help="data, vocabulary, augmentation and metrics")
    model: ModelConfig = attrs.field(factory=ModelConfig)
    schedule: Spec = component("schedule", default="supervised")
    optimizer: Spec = component(
        "optimizer", default=DEFAULT_OPTIMIZER, help="parameter groups and the update rule"
    )
    train: TrainConfig = attrs.field(factory=TrainConfig)
    callbacks: tuple[Spec, ...] = components("callback")
    seed: int = attrs.field(default=0, validator=_seed)
    name: str = attrs.field(default="", validator=plain_name)
    description: str = ""


@attrs.frozen
class CheckEnv:
    """What a component's ``check`` sees: the whole experiment and the live registry."""

    experiment: ExperimentConfig
    registry: Registry
    capabilities: frozenset[str]

    def component_of(self, spec: Spec) -> Any:
        return self.registry.get(spec.kind, spec.name)


def check_experiment(exp: ExperimentConfig, registry: Registry) -> list[Issue]:
    """Cross-component checks: capability requirements and each component's ``check``."""
    found = [(path, spec, registry.get(spec.kind, spec.name)) for path, spec in iter_specs(exp)]
    capabilities = frozenset(c for _, _, comp in found for c in comp.provides)
    env = CheckEnv(exp, registry, capabilities)
    issues: list[Issue] = []
    for path, spec, comp in found:
        for need in sorted(comp.requires - capabilities):
            providers = registry.providers(need)
            have = ", ".join(s.key for _, s, _ in found if s.kind != spec.kind) or "none"
            issues.append(
                Issue(
                    path,
                    f"{comp.key} needs a component that provides {need!r}, "
                    f"and none here does (this experiment uses {have})",
                    "use one of: " + (", ".join(providers) or "none loaded"),
                )
            )
        if comp.check is not None:
            issues.extend(_check_issues(comp.check(spec.config, env), path))
    return issues


def _check_issues(results: Iterable[Any] | None, path: tuple) -> list[Issue]:
    out = []
    for r in results or ():
        if isinstance(r, Issue):
            out.append(attrs.evolve(r, path=(*path, *r.path)))
        elif isinstance(r, tuple):
            sub, message = r
            out.append(Issue((*path, *((sub,) if isinstance(sub, str) else sub)), message))
        else:
            out.append(Issue(path, str(r)))
    return out


@attrs.frozen
class Experiment:
    """A validated experiment and the document it came from."""

    config: ExperimentConfig
    document: Document


def load_experiment(
    path: str | Path, overrides: Sequence[str] = (), *, registry: Registry
) -> Experiment:
    """Load, structure and cross-check an experiment, raising one :class:`ConfigError`."""
    doc = load_document(path, list(overrides))
    return experiment_from_document(doc, registry)


def experiment_from_document(doc: Document, registry: Registry) -> Experiment:
    structurer = Structurer(registry)
    config = structurer.structure_class(ExperimentConfig, _named_optimizer(doc.data), ())
    issues = list(structurer.issues)
    if config is not None:
        issues += check_experiment(config, registry)
    if issues:
        raise ConfigError([doc.locate(i) for i in issues])
    return Experiment(config, doc)


def _named_optimizer(data: Any) -> Any:
    """``optimizer: {lr: ...}`` without ``name:`` is AdamW, as in files written before
    optimizers were plugins."""
    opt = data.get("optimizer") if isinstance(data, dict) else None
    if isinstance(opt, dict) and "name" not in opt:
        return {**data, "optimizer": {"name": DEFAULT_OPTIMIZER, **opt}}
    return data
