"""``fixed`` halting: every sample runs the same number of steps; no parameters, no loss."""

from __future__ import annotations

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, hookimpl
from torch import Tensor, nn


@attrs.frozen
class FixedConfig:
    """Run exactly ``steps`` recursion steps for every sample (no halting head, no loss)."""

    steps: int = attrs.field(default=1, validator=attrs.validators.gt(0))


class FixedHalting(nn.Module):
    def __init__(self, steps: int):
        super().__init__()
        self.max_steps = steps

    def forward(self, y: Tensor, ctx: ForwardContext) -> dict[str, Tensor]:
        return {}

    def should_halt(self, signals: dict[str, Tensor], steps: Tensor, training: bool) -> Tensor:
        return steps >= self.max_steps

    def loss(self, signals: dict[str, Tensor], correct: Tensor, **_: object) -> tuple[Tensor, dict]:
        return correct.new_zeros((), dtype=torch.float32), {}


def build_fixed(cfg: FixedConfig, ctx: BuildContext) -> FixedHalting:
    return FixedHalting(cfg.steps)


def check_fixed(cfg: FixedConfig, env) -> list:
    if cfg.steps > 1 and "carry" not in env.capabilities:
        recursion = env.experiment.model.recursion
        return [
            (
                "steps",
                f"steps={cfg.steps} repeats recursion/{recursion.name}, which keeps "
                "no state between steps, so every step would compute the same output; "
                "use steps=1 or a recursion that provides 'carry'",
            )
        ]
    return []


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("halting", "fixed", FixedConfig, build_fixed, check=check_fixed)
