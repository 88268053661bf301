"""Building an experiment's components, checked, with one build context.

``build_components`` is what training uses; ``check_buildable`` builds the model on the meta
device (no memory, no initialisation cost) so that ``validate``, ``run`` and ``ablate`` refuse
a builder mistake (an exception, None, a wrong type, a missing method) with the component,
its plugin and the config path at file:line, before any run directory exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from ..contract.config import iter_specs
from ..contract.errors import ConfigError, InputError, Issue
from ..contract.experiment import Experiment, ExperimentConfig
from ..contract.interfaces import FixedTrainingSet, Task
from .context import BuildContext
from .model import ReasoningModel
from .nn import parameter_count


@attrs.frozen
class Components:
    """Everything an experiment builds: task, model, schedule and callbacks."""

    task: Task
    model: ReasoningModel
    schedule: Any
    callbacks: list[Any]
    blocks: list[Any] = attrs.field(factory=list)  # every block of the model, as built
    #: every component, as built: (object, kind, key, plugin, config path)
    built: list[tuple] = attrs.field(factory=list)


def build_context(config: ExperimentConfig, registry: Any) -> BuildContext:
    """The one build context of an experiment: seed, and every component's config path."""
    paths = {id(spec): path for path, spec in iter_specs(config)}
    return BuildContext(registry, seed=config.seed, paths=paths)


def build_model(config: ExperimentConfig, task: Task, ctx: BuildContext) -> ReasoningModel:
    """The model for ``task``, its components built through ``ctx`` (shapes filled in)."""
    return ReasoningModel(config.model, task, ctx)


def build_components(
    config: ExperimentConfig, registry: Any, *, training: bool = True
) -> Components:
    """Task, model (on the CPU, initialised from ``config.seed``'s RNG state) and, when
    ``training``, the schedule and callbacks."""
    ctx = build_context(config, registry)
    task = ctx.build(config.task)
    model = build_model(config, task, ctx)
    if not training:
        return Components(task, model, None, [], ctx.blocks, ctx.built)
    schedule = ctx.build(config.schedule)
    callbacks = [ctx.build(spec) for spec in config.callbacks]
    return Components(task, model, schedule, callbacks, ctx.blocks, ctx.built)


def check_buildable(exp: Experiment, registry: Any) -> tuple[int, int]:
    """Build every component of ``exp`` (the model on the meta device) and check each against
    its kind's contract; returns (parameters, of which the puzzle-embedding table). Raises a
    :class:`~ponderkit.ConfigError` located in the experiment's file."""
    config = exp.config
    try:
        ctx = build_context(config, registry)
        task = ctx.build(config.task)
        # isinstance looks train_size up without evaluating it (a property may load the data)
        if config.train.epochs is not None and not isinstance(task, FixedTrainingSet):
            raise ConfigError(
                [
                    Issue(
                        ("train", "epochs"),
                        f"task {config.task.name!r} has no fixed training set (no train_size) "
                        "to count epochs of",
                        "set train.steps instead",
                    )
                ]
            )
        with torch.device("meta"), module_limit():
            model = build_model(config, task, ctx)
        ctx.build(config.schedule)
        for spec in config.callbacks:
            ctx.build(spec)
    except ConfigError as exc:
        raise ConfigError([exp.document.locate(issue) for issue in exc.issues]) from None
    return count_parameters(model)


def count_parameters(model: ReasoningModel) -> tuple[int, int]:
    """(parameters, of which the puzzle-embedding table) of ``model``."""
    table = model.puzzle_emb.weight.numel() if model.puzzle_emb is not None else 0
    return parameter_count(model), table


def experiment_parameters(config: ExperimentConfig, registry: Any) -> int:
    """Parameters of ``config``'s model, built on the meta device."""
    ctx = build_context(config, registry)
    task = ctx.build(config.task)
    with torch.device("meta"):
        return count_parameters(build_model(config, task, ctx))[0]


MAX_MODULES = 20_000  # real models have thousands at most; `layers: 100000000` would hang


@contextlib.contextmanager
def module_limit() -> Iterator[None]:
    """Stop a build that registers absurdly many submodules: meta tensors cost nothing, but
    a hundred million Python module objects still take hours and all memory."""
    from torch.nn.modules.module import register_module_module_registration_hook

    count = 0

    def hook(module: Any, name: str, submodule: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_MODULES:
            raise InputError(
                f"model: building it registers more than {MAX_MODULES} modules; a layer, "
                "step or expert count is far too large"
            )

    handle = register_module_module_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()
