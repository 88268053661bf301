"""``universal``: one block (or a short stack) re-applied at every step with the same weights."""

from __future__ import annotations

import attrs
import torch
from ponderkit import BuildContext, Carry, ForwardContext, Spec, component, hookimpl
from torch import Tensor, nn


@attrs.frozen
class UniversalConfig:
    """One re-entrant block applied once per step, up to the halting policy's max_steps.

    With ``inject_input`` the state h starts at 0 and each step is h = block(h + x), so the
    first step sees x itself; without it h starts at x and each step is h = block(h). With ``blocks > 1`` a short stack is applied per step. Parameters do not
    depend on the number of steps; routed modules built with ``library: global`` share one
    expert library across all blocks and steps."""

    #: the block applied at every iteration
    block: Spec = component("block", default="post_norm")
    #: distinct blocks applied in order within one iteration
    blocks: int = attrs.field(default=1, validator=attrs.validators.gt(0))
    inject_input: bool = True


class Universal(nn.Module):
    def __init__(self, blocks: list[nn.Module], inject_input: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.inject_input = inject_input

    def initial_carry(self, x: Tensor) -> Carry:
        # h0 = 0 when x is injected every step: starting at x would feed 2x to the first step
        return {"h": torch.zeros_like(x) if self.inject_input else x}

    def forward(self, carry: Carry, x: Tensor, ctx: ForwardContext) -> tuple[Carry, Tensor]:
        h = carry["h"] + x if self.inject_input else carry["h"]
        for block in self.blocks:
            h = block(h, ctx)
        return {"h": h}, h


def build_universal(cfg: UniversalConfig, ctx: BuildContext) -> Universal:
    return Universal([ctx.build(cfg.block) for _ in range(cfg.blocks)], cfg.inject_input)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("recursion", "universal", UniversalConfig, build_universal, provides={"carry"})
