"""The loop every hand-written optimizer here shares: ``step`` takes the closure, visits each
parameter with a gradient, applies decoupled weight decay (``p *= 1 - lr * weight_decay``, before
the update, as AdamW does) and hands the parameter to the rule's :meth:`update`; and Adam's two
bias-corrected moments, which AdamATan2 and Muon's AdamW part both keep."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ElementwiseOptimizer(torch.optim.Optimizer):
    """An optimizer whose rule updates each parameter on its own (:meth:`update`)."""

    def update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - group["lr"] * group["weight_decay"])
                self.update(p, group, self.state[p])
        return loss


def adam_moments(
    state: dict[str, Any], g: Tensor, betas: tuple[float, float]
) -> tuple[Tensor, Tensor, float]:
    """Adam's first and second moments of ``g`` updated in ``state``: (m, v, step t)."""
    b1, b2 = betas
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(g)
        state["exp_avg_sq"] = torch.zeros_like(g)
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    return m, v, float(state["step"])
