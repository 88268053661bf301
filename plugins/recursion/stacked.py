"""``stacked``: N distinct blocks applied once each, in order (an ordinary deep network)."""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, Carry, ForwardContext, Spec, component, hookimpl
from torch import Tensor, nn


@attrs.frozen
class StackedConfig:
    """N distinct layers applied in order; one step is one pass through all of them.

    Keeps no state between steps (provides no carry)."""

    #: the block each layer is built from
    block: Spec = component("block", default="post_norm")
    #: distinct blocks applied in order
    layers: int = attrs.field(default=2, validator=attrs.validators.gt(0))


class Stacked(nn.Module):
    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def initial_carry(self, x: Tensor) -> Carry:
        return {}

    def forward(self, carry: Carry, x: Tensor, ctx: ForwardContext) -> tuple[Carry, Tensor]:
        h = x
        for block in self.blocks:
            h = block(h, ctx)
        return carry, h


def build_stacked(cfg: StackedConfig, ctx: BuildContext) -> Stacked:
    return Stacked([ctx.build(cfg.block) for _ in range(cfg.layers)])


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("recursion", "stacked", StackedConfig, build_stacked)
