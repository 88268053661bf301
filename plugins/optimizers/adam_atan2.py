"""``adam_atan2``: Adam without epsilon, the division replaced by atan2 (Everett et al. 2024,
"Scaling Exponents Across Parameterizations and Optimizers"), in the form of the
``adam-atan2`` package the TRM and HRM authors train with."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs
import torch
from ponderkit import BuildContext, OptimizerConfig, betas_in_range, hookimpl
from torch import nn

from .elementwise import ElementwiseOptimizer, adam_moments
from .groups import decay_groups


@attrs.frozen
class AdamATan2Config(OptimizerConfig):
    """AdamATan2: Adam with atan2 in place of the division and epsilon (the TRM authors').

    Per parameter at step t, as the TRM/HRM authors' ``adam-atan2`` kernel computes it:
    p = p (1 - lr wd); m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p = p - a lr / (1-b1^t) * atan2(m, b sqrt(v) / sqrt(1-b2^t)).

    The first moment's bias correction stands outside the atan2 (the kernel's form; the
    paper's puts it inside, which differs while 1-b1^t is far from 1). No epsilon: atan2 is
    bounded and defined at v = 0. The authors' kernel has a = b = 1; the paper suggests
    a = 1.27."""

    #: (b1, b2): decay rates of the first and second moments
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.95), validator=betas_in_range)
    #: scale of the atan2 update (the authors' kernel: 1; the paper: 1.27)
    a: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    #: scale of sqrt(v_hat) inside the atan2
    b: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


class AdamATan2(ElementwiseOptimizer):
    """The update rule of :class:`AdamATan2Config` (decoupled weight decay first)."""

    def __init__(
        self,
        params: Any,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        a: float = 1.0,
        b: float = 1.0,
    ):
        defaults = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "a": a, "b": b}
        super().__init__(params, defaults)

    def update(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        b1, b2 = group["betas"]
        m, v, t = adam_moments(state, p.grad, (b1, b2))
        denom = v.sqrt().mul_(group["b"] / math.sqrt(1 - b2**t))
        p.add_(torch.atan2(m, denom), alpha=-group["a"] * group["lr"] / (1 - b1**t))


def build_adam_atan2(
    cfg: AdamATan2Config, ctx: BuildContext, *, model: nn.Module, exclude: Iterable[int] = ()
) -> AdamATan2:
    return AdamATan2(
        decay_groups(model, cfg, exclude), cfg.lr, tuple(cfg.betas), cfg.weight_decay, cfg.a, cfg.b
    )


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("optimizer", "adam_atan2", AdamATan2Config, build_adam_atan2)
