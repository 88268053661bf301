"""Components with the builder mistakes plugin authors make (tests/contract)."""

from __future__ import annotations

import attrs
from ponderkit import callback_hook, hookimpl
from torch import nn


@attrs.frozen
class Empty:
    """No fields."""


class NoShouldHalt(nn.Module):
    max_steps = 1

    def forward(self, y, ctx):
        return {}

    def loss(self, signals, correct, **_):
        raise NotImplementedError


class Misspelt:
    @callback_hook
    def on_step_ends(self, trainer, step, metrics):  # sic: the hook is on_step_end
        pass


def returns_none(cfg, ctx):
    return None


def returns_dict(cfg, ctx):
    return {"not": "a module"}


def raises(cfg, ctx):
    raise ValueError("hidden width must be even")


def no_should_halt(cfg, ctx):
    return NoShouldHalt()


def misspelt_hook(cfg, ctx):
    return Misspelt()


@hookimpl
def ponderkit_register(registry):
    registry.add("ffn", "returns_none", Empty, returns_none)
    registry.add("mixer", "returns_dict", Empty, returns_dict)
    registry.add("ffn", "raises", Empty, raises)
    registry.add("halting", "no_should_halt", Empty, no_should_halt)
    registry.add("callback", "misspelt_hook", Empty, misspelt_hook)
