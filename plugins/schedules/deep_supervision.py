"""``deep_supervision`` (TRM): one supervision step per optimizer step, with a carried batch.

Each batch slot keeps its sample and recursion state across optimizer steps until its halting
policy stops it; a halted slot is then refilled with a new sample and a fresh state. The
carry is detached between steps, so each optimizer step back-propagates through one
supervision step only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from ponderkit import (
    Batch,
    BuildContext,
    NextStepTarget,
    TrainerServices,
    accuracy,
    hookimpl,
    sequence_loss,
    step_metrics,
)
from torch import Tensor


@attrs.frozen
class DeepSupervisionConfig:
    """TRM deep supervision: a persistent batch whose halted slots are refilled every step.

    Loss per step: lm (per-sequence token mean) + the halting policy's weighted loss + aux."""


def _where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(mask.view(-1, *([1] * (new.ndim - 1))), new, old)


class DeepSupervision:
    def __init__(self) -> None:
        self.batch: Batch | None = None
        self.carry: dict[str, Tensor] | None = None
        self.steps: Tensor | None = None
        self.halted: Tensor | None = None

    def refill(self, fresh: Batch) -> Batch:
        """The batch of this step: halted slots take ``fresh`` samples, the others keep theirs."""
        if self.batch is None:
            self.steps = torch.zeros(
                len(fresh["inputs"]), dtype=torch.long, device=fresh["inputs"].device
            )
            return fresh
        h = self.halted
        self.steps = torch.where(h, torch.zeros_like(self.steps), self.steps)
        return {k: _where(h, fresh[k], self.batch[k]) for k in fresh}

    def carry_for(self, model: Any, x: Tensor) -> dict[str, Tensor]:
        """The recursion state: fresh for new samples, carried for the others."""
        init = model.initial_carry(x)
        if self.carry is None:
            return init
        return {k: _where(self.halted, init[k], self.carry[k]) for k in init}

    def train_step(
        self, model: Any, batches: Iterator[Batch], trainer: TrainerServices
    ) -> dict[str, Any]:
        halting = model.halting
        first = self.batch is None
        batch = self.refill(next(batches))
        # fresh samples entering the batch: all at the first step, then the halted slots
        fresh = len(batch["inputs"]) if first else int(self.halted.sum())
        with trainer.autocast():
            ctx = model.context()
            x = model.embed(batch)  # once per step: kept samples re-embed their own inputs
            carry, logits, signals = model.step(self.carry_for(model, x), x, ctx)
            self.steps = self.steps + 1
            labels = batch["labels"]
            lm_loss = sequence_loss(logits, labels, model.loss_kind).mean()
            _, exact, _ = accuracy(logits.detach(), labels)
            next_signals = None
            if isinstance(halting, NextStepTarget) and halting.needs_next_step:
                with torch.no_grad():
                    _, _, next_signals = model.step(carry, x, ctx)
            halt_loss, halt_metrics = halting.loss(
                signals, exact, next_signals=next_signals, steps=self.steps
            )
            aux = sum(ctx.losses.values(), torch.zeros((), device=lm_loss.device))
            loss = lm_loss + halt_loss + aux
        grad_norm = trainer.optimize(loss)
        with torch.no_grad():
            halted = halting.should_halt(
                {k: v.detach() for k, v in signals.items()}, self.steps, True
            )
        done = halted.float()
        metrics = {
            **step_metrics(loss, lm_loss, logits, labels, grad_norm),
            "halted_frac": done.mean(),
            "fresh_samples": fresh,
            # mean supervision steps of the samples that finished at this step
            "sup_steps": (self.steps.float() * done).sum() / done.sum().clamp(min=1),
            **ctx.metrics(),
            **halt_metrics,
        }
        self.batch, self.halted = batch, halted
        self.carry = {k: v.detach() for k, v in carry.items()}
        return metrics

    def state_dict(self) -> dict[str, Any]:
        if self.batch is None:
            return {}
        return {
            "batch": self.batch,
            "carry": self.carry,
            "steps": self.steps,
            "halted": self.halted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.batch, self.carry = state["batch"], state["carry"]
            self.steps, self.halted = state["steps"], state["halted"]


def build_deep_supervision(cfg: DeepSupervisionConfig, ctx: BuildContext) -> DeepSupervision:
    return DeepSupervision()


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "schedule",
        "deep_supervision",
        DeepSupervisionConfig,
        build_deep_supervision,
        requires={"carry"},
    )
