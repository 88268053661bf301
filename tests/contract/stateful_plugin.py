"""An ffn whose behaviour depends on Python state kept between calls (tests/contract): the
kind of plugin a FLOPs replay must not disturb."""

from __future__ import annotations

import attrs
from ponderkit import hookimpl
from torch import nn


@attrs.frozen
class CountingConfig:
    """A linear map scaled by a factor that cycles with the number of training calls."""


class Counting(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.calls = 0  # plain Python state: not a buffer, not in state_dict

    def forward(self, h, ctx):
        if self.training:
            self.calls += 1
        return self.proj(h) * (1.0 + 0.5 * (self.calls % 3))


@hookimpl
def ponderkit_register(registry):
    registry.add("ffn", "counting", CountingConfig, lambda cfg, ctx: Counting(ctx.d_model))
