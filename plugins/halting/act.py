"""``act``: Adaptive Computation Time (Graves 2016) over recursion steps.

After step n a halting unit gives h_n = sigmoid(w . s_n + b), per position or per sequence
(mean-pooled state). The recursion halts at the first N with sum_{n<=N} h_n >= 1 - eps (or at
``max_steps``); step weights are p_n = h_n for n < N and the remainder R = 1 - sum_{n<N} h_n
at N; the output is sum_n p_n * logits_n (= the head of the weighted state, the head being
linear without bias), and the ponder cost N + R is added with weight ``ponder_weight``.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Linear, hookimpl, sequence_loss
from torch import Tensor, nn


@attrs.frozen
class ACTConfig:
    """Adaptive Computation Time (Graves): halting unit, remainder, weighted output, ponder cost.

    ``per: sequence`` pools the state over positions (one halting time per sample);
    ``per: position`` halts each position separately (a sample runs until its last position
    halts). ``init_bias`` sets the initial halting probability sigmoid(init_bias)."""

    #: N: the most recursion steps a sample runs
    max_steps: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    per: Literal["sequence", "position"] = "sequence"
    eps: float = attrs.field(
        default=0.01, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )
    ponder_weight: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))
    init_bias: float = -1.0


def act_weights(h: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Halting distribution from per-step probabilities ``h`` (S, ...) -> (p, N, R).

    ``p`` (S, ...) sums to 1 over steps; ``N`` (...) is the 1-based halting step; ``R`` (...) the
    remainder. Only R carries gradient to the h of steps before N (N is a count)."""
    steps = h.shape[0]
    cum = h.cumsum(0)
    reached = cum >= 1 - eps
    reached[-1] = True  # the last step always halts
    n_idx = reached.float().argmax(0)  # first step that reaches the threshold, 0-based
    order = torch.arange(steps, device=h.device).view(-1, *([1] * (h.ndim - 1)))
    before = order < n_idx
    remainder = 1 - (h * before).sum(0)
    p = torch.where(before, h, torch.zeros_like(h)) + torch.where(order == n_idx, remainder, 0.0)
    return p, n_idx + 1, remainder


class ACT(nn.Module):
    def __init__(self, cfg: ACTConfig, d_model: int):
        super().__init__()
        self.max_steps, self.per, self.eps = cfg.max_steps, cfg.per, cfg.eps
        self.ponder_weight = cfg.ponder_weight
        self.unit = Linear(d_model, 1, bias=True)
        with torch.no_grad():
            self.unit.weight.zero_()
            self.unit.bias.fill_(cfg.init_bias)

    def forward(self, y: Tensor, ctx: ForwardContext) -> dict[str, Tensor]:
        state = y.mean(1) if self.per == "sequence" else y  # (B, D) or (B, T, D)
        return {"h": torch.sigmoid(self.unit(state).float().squeeze(-1))}  # (B,) or (B, T)

    def distribution(self, signals_steps: list[dict[str, Tensor]]):
        return act_weights(torch.stack([s["h"] for s in signals_steps]), self.eps)

    def _weights_for(self, p: Tensor, logits: Tensor) -> Tensor:
        # p (S, B) or (S, B, T+prefix); logits (S, B, T, V): align positions to the task tokens
        if p.ndim == 2:
            return p[:, :, None, None]
        return p[:, :, p.shape[-1] - logits.shape[2] :, None]

    def combine(self, logits_steps: list[Tensor], signals_steps: list[dict[str, Tensor]]):
        """Output sum_n p_n logits_n and the steps run per sample (B,)."""
        p, n, _ = self.distribution(signals_steps)
        logits = torch.stack(logits_steps)  # (S, B, T, V)
        out = (self._weights_for(p, logits).to(logits.dtype) * logits).sum(0)
        steps = n if n.ndim == 1 else n.max(-1).values
        return out, steps

    def halted_after(self, signals_steps: list[dict[str, Tensor]]) -> Tensor:
        cum = torch.stack([s["h"] for s in signals_steps]).sum(0)
        done = cum >= 1 - self.eps
        if len(signals_steps) >= self.max_steps:
            done = torch.ones_like(done)
        return done if done.ndim == 1 else done.all(-1)

    def should_halt(self, signals: dict[str, Tensor], steps: Tensor, training: bool) -> Tensor:
        return steps >= self.max_steps  # ACT decides over the whole history (halted_after)

    def unrolled_loss(self, logits_steps, signals_steps, labels, loss_kind):
        """(task loss, weighted ponder cost, metrics, combined logits) for a full unroll."""
        p, n, remainder = self.distribution(signals_steps)
        logits, steps = self.combine(logits_steps, signals_steps)
        task = sequence_loss(logits, labels, loss_kind).mean()
        ponder = (n.to(remainder.dtype) + remainder).mean()
        metrics = {"ponder_cost": ponder.detach(), "halt_steps": steps.float().mean()}
        return task, self.ponder_weight * ponder, metrics, logits

    def loss(self, signals, correct, **_):
        return correct.new_zeros((), dtype=torch.float32), {}


def build_act(cfg: ACTConfig, ctx: BuildContext) -> ACT:
    return ACT(cfg, ctx.d_model)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("halting", "act", ACTConfig, build_act, requires={"carry"})
