"""``full_unroll`` (ADR-0005): unroll every step with gradients, one optimizer step a batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from ponderkit import (
    Batch,
    BuildContext,
    TrainerServices,
    WeighsSteps,
    hookimpl,
    sequence_loss,
    step_metrics,
)
from torch.utils.checkpoint import checkpoint


@attrs.frozen
class FullUnrollConfig:
    """Fixed-step unroll to max_steps with gradients through every step (ADR-0005 training).

    The halting policy weighs the steps (ACT: weighted output and ponder cost; PonderNet:
    expected loss and KL to its prior; fixed: the last step). Every step runs for every
    sample, but a routed layer's token-dependent aux losses count only the steps a sample ran
    before its policy halted it (``ForwardContext.running``), and parameter-only terms (SDL)
    count once, however many steps unroll. ``checkpoint: true`` recomputes
    each step in the backward pass to bound activation memory (stats are then recorded twice)."""

    checkpoint: bool = False


class FullUnroll:
    #: let the halting policy weigh the steps (ACT, PonderNet); else the loss is on the last step
    weigh_steps = True

    def __init__(self, cfg: FullUnrollConfig):
        self.checkpoint = cfg.checkpoint

    def train_step(
        self, model: Any, batches: Iterator[Batch], trainer: TrainerServices
    ) -> dict[str, Any]:
        batch = next(batches)
        labels = batch["labels"]
        halting = model.halting
        with trainer.autocast():
            ctx = model.context()
            x = model.embed(batch)
            carry = model.initial_carry(x)
            step = None
            if self.checkpoint:

                def step(carry, x, ctx):
                    return checkpoint(model.step, carry, x, ctx, use_reentrant=False)

            logits_steps, signals_steps = [], []
            weighs = self.weigh_steps and isinstance(halting, WeighsSteps)
            for _, logits, signals in model.unroll(carry, x, ctx, halting.max_steps, step):
                logits_steps.append(logits)
                signals_steps.append(signals)
                if weighs:  # the next step counts for the samples not yet halted
                    with torch.no_grad():
                        ctx.running = ~halting.halted_after(signals_steps)
            ctx.running = None
            if weighs:
                task, halt_loss, metrics, logits = halting.unrolled_loss(
                    logits_steps, signals_steps, labels, model.loss_kind
                )
            else:
                logits = logits_steps[-1]
                task = sequence_loss(logits, labels, model.loss_kind).mean()
                halt_loss, metrics = torch.zeros((), device=task.device), {}
            aux = sum(ctx.losses.values(), torch.zeros((), device=task.device))
            loss = task + halt_loss + aux
        grad_norm = trainer.optimize(loss)
        return {
            **step_metrics(loss, task, logits, labels, grad_norm),
            **ctx.metrics(),
            **metrics,
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build_full_unroll(cfg: FullUnrollConfig, ctx: BuildContext) -> FullUnroll:
    return FullUnroll(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("schedule", "full_unroll", FullUnrollConfig, build_full_unroll)
