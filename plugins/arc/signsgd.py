"""``puzzle_emb_signsgd``: TRM's sparse optimizer for the puzzle-embedding table."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from ponderkit import BuildContext, callback_hook, hookimpl
from torch import nn


@attrs.frozen
class SignSGDConfig:
    """Sign-SGD on the puzzle-embedding rows of each batch (TRM's puzzle-embedding optimizer).

    The callback takes the table out of AdamW and makes its gradient sparse (the batch's rows
    only). After each optimizer step, for every identifier in the batch (gradients of repeated
    identifiers summed): row = row * (1 - lr * weight_decay) - lr * sign(grad). Rows of
    identifiers not in the batch are untouched (no decay either). ``lr`` follows the main
    schedule (warmup, decay) when ``follow_schedule``. TRM: lr 1e-2, weight decay 0.1."""

    lr: float = attrs.field(default=1e-2, validator=attrs.validators.gt(0))
    #: decoupled weight decay of the rows updated
    weight_decay: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    follow_schedule: bool = True


class PuzzleEmbSignSGD:
    def __init__(self, cfg: SignSGDConfig):
        self.cfg = cfg
        self.table: nn.Embedding | None = None

    @callback_hook
    def owned_parameters(self, trainer: Any) -> list[nn.Parameter]:
        table = getattr(trainer.model, "puzzle_emb", None)
        if table is None:
            return []
        table.sparse = True  # the gradient holds the batch's rows only
        self.table = table
        return [table.weight]

    @callback_hook
    @torch.no_grad()
    def on_step_end(self, trainer: Any, step: int, metrics: dict) -> None:
        if self.table is None or self.table.weight.grad is None:
            return
        weight = self.table.weight
        grad = weight.grad.coalesce()  # sums the gradients of repeated identifiers
        weight.grad = None
        rows, values = grad.indices()[0], grad.values()  # (R,), (R, width)
        lr = self.cfg.lr
        if self.cfg.follow_schedule:
            base = trainer.config.optimizer.config.lr
            lr *= trainer.optimizer.param_groups[0]["lr"] / base
        updated = weight[rows] * (1 - lr * self.cfg.weight_decay) - lr * torch.sign(values)
        weight.index_copy_(0, rows, updated.to(weight.dtype))
        metrics["puzzle_emb_lr"] = lr


def build_signsgd(cfg: SignSGDConfig, ctx: BuildContext) -> PuzzleEmbSignSGD:
    return PuzzleEmbSignSGD(cfg)


def check_signsgd(cfg: SignSGDConfig, env: Any) -> list[str]:
    if env.experiment.model.puzzle_emb_len == 0:
        return ["there is no puzzle-embedding table to update: set model.puzzle_emb_len > 0"]
    return []


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "callback", "puzzle_emb_signsgd", SignSGDConfig, build_signsgd, check=check_signsgd
    )
