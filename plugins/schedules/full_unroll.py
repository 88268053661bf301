"""``full_unroll`` (ADR-0005): unroll the steps with gradients, one optimizer step a batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from ponderkit import (
    Batch,
    BuildContext,
    NextStepTarget,
    TrainerServices,
    WeighsSteps,
    accuracy,
    hookimpl,
    sequence_loss,
    step_metrics,
)
from torch.utils.checkpoint import checkpoint


@runtime_checkable
class WeightlessAfterHalt(Protocol):
    """A :class:`~ponderkit.WeighsSteps` policy that may say its ``unrolled_loss`` gives the
    steps after every sample halted weight 0 (ACT under ``training: act``): those steps then
    need not run. (A class or instance attribute: a runtime check sees it.)"""

    weightless_after_halt: bool


@attrs.frozen
class FullUnrollConfig:
    """Unroll with gradients through every step (ADR-0005 training), one optimizer step a batch.

    The halting policy weighs the steps (ACT: weighted output and ponder cost, or its fixed-depth
    training; PonderNet: expected loss and KL to its prior). Any other policy gets the loss of
    the last step, and its own ``loss`` at every step (whether that step's prediction is exactly
    right; the next step's signals where it needs them), averaged over the steps: a trainable
    policy (``q_head``) learns under a full unroll too. With ``truncate`` (default) the unroll
    stops once every sample of the batch has halted when the policy says later steps weigh 0
    (:class:`WeightlessAfterHalt`): the loss and gradients are those of the full unroll,
    without the FLOPs of steps nobody pays for. A routed layer's token-dependent aux losses
    count only the steps a sample ran before its policy halted it (``ForwardContext.running``),
    and parameter-only terms (SDL) count once, however many steps unroll. ``checkpoint: true``
    recomputes each step in the backward pass to bound activation memory (stats are then
    recorded twice)."""

    checkpoint: bool = False
    truncate: bool = True


class FullUnroll:
    #: let the halting policy weigh the steps (ACT, PonderNet); else the loss is on the last step
    weigh_steps = True

    def __init__(self, cfg: FullUnrollConfig):
        self.checkpoint = cfg.checkpoint
        self.truncate = cfg.truncate

    def _checkpointed(self, model: Any):
        def step(carry, x, ctx):
            previous = ctx.previous_logits  # as it was for this step, also when recomputed

            def run(carry, x):
                ctx.previous_logits = previous
                return model.step(carry, x, ctx)

            return checkpoint(run, carry, x, use_reentrant=False)

        return step

    def train_step(
        self, model: Any, batches: Iterator[Batch], trainer: TrainerServices
    ) -> dict[str, Any]:
        batch = next(batches)
        labels = batch["labels"]
        halting = model.halting
        weighs = self.weigh_steps and isinstance(halting, WeighsSteps)
        stop_early = (
            weighs
            and self.truncate
            and isinstance(halting, WeightlessAfterHalt)
            and halting.weightless_after_halt
        )
        with trainer.autocast():
            ctx = model.context()
            x = model.embed(batch)
            carry = model.initial_carry(x)
            step = self._checkpointed(model) if self.checkpoint else None
            logits_steps, signals_steps = [], []
            for _, logits, signals in model.unroll(carry, x, ctx, halting.max_steps, step):
                logits_steps.append(logits)
                signals_steps.append(signals)
                if weighs:  # the next step counts for the samples not yet halted
                    with torch.no_grad():
                        ctx.running = ~halting.halted_after(signals_steps)
                    # one host sync a step; the steps after this weigh 0 in the loss
                    if stop_early and not bool(ctx.running.any()):
                        break
            ctx.running = None
            if weighs:
                task, halt_loss, metrics, logits = halting.unrolled_loss(
                    logits_steps, signals_steps, labels, model.loss_kind
                )
            else:
                logits = logits_steps[-1]
                task = sequence_loss(logits, labels, model.loss_kind).mean()
                halt_loss, metrics = self._policy_loss(halting, logits_steps, signals_steps, labels)
            aux = sum(ctx.losses.values(), torch.zeros((), device=task.device))
            loss = task + halt_loss + aux
        grad_norm = trainer.optimize(loss)
        return {
            **step_metrics(loss, task, logits, labels, grad_norm),
            **ctx.metrics(),
            **metrics,
            "unrolled_steps": float(len(logits_steps)),
        }

    @staticmethod
    def _policy_loss(
        halting: Any, logits_steps: list, signals_steps: list, labels: Any
    ) -> tuple[Any, dict[str, Any]]:
        """The mean over steps of the policy's own loss (q_head: BCE(q_halt, step right));
        the next step's signals, detached, where it asks for them (HRM's q_continue)."""
        needs_next = isinstance(halting, NextStepTarget) and halting.needs_next_step
        losses, sums = [], {}
        for n, (logits, signals) in enumerate(zip(logits_steps, signals_steps, strict=True)):
            exact = accuracy(logits.detach(), labels)[1]
            nxt = signals_steps[n + 1] if n + 1 < len(signals_steps) else None
            steps = torch.full_like(exact, n + 1, dtype=torch.long)
            loss, metrics = halting.loss(
                signals,
                exact,
                next_signals={k: v.detach() for k, v in nxt.items()}
                if needs_next and nxt
                else None,
                steps=steps,
            )
            losses.append(loss)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v
        mean = {k: v / len(losses) for k, v in sums.items()}
        return torch.stack([v.float() for v in losses]).mean(), mean

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build_full_unroll(cfg: FullUnrollConfig, ctx: BuildContext) -> FullUnroll:
    return FullUnroll(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("schedule", "full_unroll", FullUnrollConfig, build_full_unroll)
