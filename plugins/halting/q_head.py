"""``q_head`` halting (TRM and HRM): a linear head on the first position predicts whether the
current answer is right; a sample halts when it says so, or at ``max_steps``."""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Linear, hookimpl
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class QHeadConfig:
    """Q-head halting: halt when q_halt > 0 (TRM) or q_halt > q_continue (HRM), else at max_steps.

    Linear(D, 2) on y[:, 0] with weight 0 and bias -5. Training explores: with probability
    ``exploration`` a sample must run at least U{2..max_steps} steps. TRM loss: BCE(q_halt,
    exact match of the current prediction). HRM adds BCE(q_continue, bootstrapped target)."""

    #: N_sup: the most supervision steps a sample gets
    max_steps: int = attrs.field(default=16, validator=attrs.validators.gt(0))
    exploration: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )
    #: trm: q_halt only (BCE against exact match); hrm: also q_continue with a bootstrapped target
    mode: Literal["trm", "hrm"] = "trm"
    #: weight of the halting loss added to the LM loss
    loss_weight: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))


class QHead(nn.Module):
    #: HRM mode bootstraps q_continue from the next step (ponderkit.NextStepTarget)
    needs_next_step: bool = False

    def __init__(self, cfg: QHeadConfig, d_model: int):
        super().__init__()
        self.max_steps, self.exploration, self.mode = cfg.max_steps, cfg.exploration, cfg.mode
        self.loss_weight = cfg.loss_weight
        self.needs_next_step = cfg.mode == "hrm"
        self.q = Linear(d_model, 2, bias=True)
        with torch.no_grad():
            self.q.weight.zero_()
            self.q.bias.fill_(-5.0)

    def forward(self, y: Tensor, ctx: ForwardContext) -> dict[str, Tensor]:
        q = self.q(y[:, 0]).float()  # (B, 2)
        return {"q_halt": q[:, 0], "q_continue": q[:, 1]}

    def wants_halt(self, signals: dict[str, Tensor]) -> Tensor:
        if self.mode == "trm":
            return signals["q_halt"] > 0
        return signals["q_halt"] > signals["q_continue"]

    def should_halt(self, signals: dict[str, Tensor], steps: Tensor, training: bool) -> Tensor:
        last = steps >= self.max_steps
        if self.max_steps == 1:
            return last
        halted = last | self.wants_halt(signals)
        if training and self.exploration > 0:
            explore = torch.rand_like(signals["q_halt"]) < self.exploration
            min_steps = torch.randint_like(steps, 2, self.max_steps + 1) * explore
            halted = last | (halted & (steps >= min_steps))
        return halted

    def loss(
        self,
        signals: dict[str, Tensor],
        correct: Tensor,
        next_signals: dict[str, Tensor] | None = None,
        steps: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted halting loss and metrics. HRM mode needs the next step's signals."""
        q_halt = signals["q_halt"]
        loss = F.binary_cross_entropy_with_logits(q_halt, correct.to(q_halt.dtype))
        metrics = {
            "q_halt_loss": loss.detach(),
            "q_halt_acc": ((q_halt > 0) == correct).float().mean(),
        }
        if self.mode == "hrm" and next_signals is not None and steps is not None:
            nxt_halt, nxt_cont = next_signals["q_halt"], next_signals["q_continue"]
            target = torch.sigmoid(
                torch.where(steps >= self.max_steps, nxt_halt, torch.maximum(nxt_halt, nxt_cont))
            )
            q_cont_loss = F.binary_cross_entropy_with_logits(signals["q_continue"], target)
            metrics["q_continue_loss"] = q_cont_loss.detach()
            loss = loss + q_cont_loss
        return self.loss_weight * loss, metrics


def build_q_head(cfg: QHeadConfig, ctx: BuildContext) -> QHead:
    return QHead(cfg, ctx.d_model)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("halting", "q_head", QHeadConfig, build_q_head, requires={"carry"})
