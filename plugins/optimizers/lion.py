"""``lion``: sign of an interpolated momentum (Chen et al. 2023, "Symbolic Discovery of
Optimization Algorithms")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch
from ponderkit import BuildContext, OptimizerConfig, betas_in_range, hookimpl
from torch import nn

from .elementwise import ElementwiseOptimizer
from .groups import decay_groups


@attrs.frozen
class LionConfig(OptimizerConfig):
    """Lion: c = b1 m + (1-b1) g; p = p (1 - lr wd) - lr sign(c); m = b2 m + (1-b2) g.
    Every coordinate moves by lr, so the paper takes lr 3-10x smaller than AdamW's and
    weight decay as many times larger."""

    #: (b1, b2): b1 interpolates the update's sign, b2 the momentum
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.99), validator=betas_in_range)


class Lion(ElementwiseOptimizer):
    def __init__(self, params: Any, lr: float, betas: tuple[float, float], weight_decay: float):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    def update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        b1, b2 = group["betas"]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
        m, g = state["exp_avg"], p.grad
        p.add_(torch.sign(m * b1 + g * (1 - b1)), alpha=-group["lr"])
        m.lerp_(g, 1 - b2)


def build_lion(
    cfg: LionConfig, ctx: BuildContext, *, model: nn.Module, exclude: Iterable[int] = ()
) -> Lion:
    return Lion(decay_groups(model, cfg, exclude), cfg.lr, tuple(cfg.betas), cfg.weight_decay)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("optimizer", "lion", LionConfig, build_lion)
