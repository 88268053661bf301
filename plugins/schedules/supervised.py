"""``supervised``: one batch, all recursion steps with gradients, one optimizer step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
from ponderkit import Batch, BuildContext, hookimpl, sequence_loss, step_metrics


@attrs.frozen
class SupervisedConfig:
    """Plain supervised training: all recursion steps with gradients, one optimizer step a batch.

    Runs the halting policy's ``max_steps`` steps, takes the loss on the final output (plus
    auxiliary losses) and makes one optimizer step."""


class Supervised:
    def train_step(self, model: Any, batches: Iterator[Batch], trainer: Any) -> dict[str, Any]:
        batch = next(batches)
        with trainer.autocast():
            ctx = model.context()
            x = model.embed(batch)
            carry = model.initial_carry(x)
            for _ in range(model.halting.max_steps):
                carry, logits, _ = model.step(carry, x, ctx)
            lm_loss = sequence_loss(logits, batch["labels"], model.loss_kind).mean()
            aux = sum(ctx.losses.values(), torch.zeros((), device=lm_loss.device))
            loss = lm_loss + aux
        grad_norm = trainer.optimize(loss)
        return {
            **step_metrics(loss, lm_loss, logits, batch["labels"], grad_norm),
            **ctx.stat_means(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build_supervised(cfg: SupervisedConfig, ctx: BuildContext) -> Supervised:
    return Supervised()


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("schedule", "supervised", SupervisedConfig, build_supervised)
