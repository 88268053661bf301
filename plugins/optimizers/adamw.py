"""``adamw``: torch's AdamW over the decay / no-decay groups (ponderkit's default)."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import torch
from ponderkit import BuildContext, OptimizerConfig, betas_in_range, hookimpl
from torch import nn

from .groups import decay_groups


@attrs.frozen
class AdamWConfig(OptimizerConfig):
    """AdamW over the decay and no-decay groups (torch's; fused on CUDA).

    Loshchilov & Hutter: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p = p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps), m_hat = m / (1-b1^t),
    v_hat = v / (1-b2^t)."""

    #: (b1, b2): decay rates of the first and second moments
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.95), validator=betas_in_range)
    #: added to sqrt(v_hat) in the denominator
    eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0))


def fused_kernel(params: list[nn.Parameter]) -> bool:
    """Whether AdamW takes torch's fused kernel over ``params``: on CUDA (one launch for every
    tensor; it also skips a step on device when a non-finite one is flagged, so the trainer
    checks for those without a host sync each step, see ``ponderkit.engine.train``). On CPU
    the default, whose results the CPU tests pin bit for bit."""
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_adamw(
    cfg: AdamWConfig, ctx: BuildContext, *, model: nn.Module, exclude: Iterable[int] = ()
) -> torch.optim.AdamW:
    groups = decay_groups(model, cfg, exclude)
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        fused=True if fused_kernel(params) else None,
    )


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("optimizer", "adamw", AdamWConfig, build_adamw)
