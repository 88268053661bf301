"""``staged``: several schedules one after another in one run (seed 003: teacher forcing, then
EAVI), one metrics stream, resumable at any step."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import attrs
from ponderkit import Batch, BuildContext, Spec, components, hookimpl


@attrs.frozen
class StagedConfig:
    """Run ``stages`` (schedules) one after another; ``steps`` or ``fractions`` give each a budget.

    ``steps: [300]`` with two stages runs the first for optimizer steps 0..299 and the second
    from step 300 to the end of training; give one entry per stage, or one fewer (the last
    stage then takes what is left). ``fractions: [0.75]`` does the same in shares of
    ``train.steps``, or, under ``train.epochs`` or ``train.flops``, of that budget as spent
    (so an ablation's budget splits the same way in every variant).
    The stage follows from the optimizer step or the budget spent, both checkpointed, so a
    resumed run continues in the right stage; every logged record carries ``stage`` (its
    index). Each stage keeps its own state."""

    stages: tuple[Spec, ...] = components("schedule", help="the schedules, in order")
    steps: tuple[int, ...] = ()
    fractions: tuple[float, ...] = ()


class Staged:
    def __init__(self, stages: list[Any], cfg: StagedConfig):
        self.stages = stages
        self.cfg = cfg

    def boundaries(self, total: int) -> list[int]:
        """The first step after each stage but the last."""
        if self.cfg.fractions:
            ends = [round(f * total) for f in itertools.accumulate(self.cfg.fractions)]
        else:
            ends = list(itertools.accumulate(self.cfg.steps))
        return ends[: len(self.stages) - 1]

    def shares(self, total: int) -> list[float]:
        """Each stage's share of ``total`` steps (a FLOPs budget weighs its stages by these)."""
        edges = [0, *(min(e, total) for e in self.boundaries(total)), total]
        return [(b - a) / total for a, b in itertools.pairwise(edges)]

    def stage_at(self, step: int, total: int) -> int:
        return sum(step >= end for end in self.boundaries(total))

    def stage_at_progress(self, done: float) -> int:
        """The stage at ``done``, the fraction of an epochs or FLOPs budget spent."""
        ends = list(itertools.accumulate(self.cfg.fractions))[: len(self.stages) - 1]
        return sum(done >= end for end in ends)

    def train_step(self, model: Any, batches: Iterator[Batch], trainer: Any) -> dict[str, Any]:
        total = trainer.config.train.steps
        if total is None and self.cfg.fractions:  # shares of an epochs or FLOPs budget
            index = self.stage_at_progress(trainer.progress())
        else:
            index = self.stage_at(trainer.step, total)
        metrics = self.stages[index].train_step(model, batches, trainer)
        return {**metrics, "stage": float(index)}

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [stage.state_dict() for stage in self.stages]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stage, sub in zip(self.stages, state.get("stages", []), strict=False):
            stage.load_state_dict(sub)


def build_staged(cfg: StagedConfig, ctx: BuildContext) -> Staged:
    return Staged([ctx.build(spec) for spec in cfg.stages], cfg)


def check_staged(cfg: StagedConfig, env) -> list:
    problems: list = []
    n = len(cfg.stages)
    if n == 0:
        return [("stages", "give at least one schedule")]
    if bool(cfg.steps) == bool(cfg.fractions) and n > 1:
        problems.append(("steps", "give either steps or fractions (one per stage, or one fewer)"))
    budget = cfg.steps or cfg.fractions
    key = "steps" if cfg.steps else "fractions"
    if budget and len(budget) not in (n - 1, n):
        problems.append((key, f"{len(budget)} entries for {n} stages; give {n - 1} or {n}"))
    if any(b <= 0 for b in budget):
        problems.append((key, "every budget must be > 0"))
    total = env.experiment.train.steps  # None: an epochs or FLOPs budget (fractions of it)
    if cfg.steps and total is not None and sum(cfg.steps[: n - 1]) >= total:
        problems.append(("steps", f"the stages before the last use all train.steps={total}"))
    if cfg.fractions and sum(cfg.fractions[: n - 1]) >= 1.0:
        problems.append(("fractions", "the stages before the last leave no share for it"))
    # each stage's own requirements and check run with the experiment's (it is a nested spec)
    for i, spec in enumerate(cfg.stages):
        if spec.name == "staged":
            problems.append((("stages", i), "a staged schedule cannot contain another"))
    return problems


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("schedule", "staged", StagedConfig, build_staged, check=check_staged)
