"""Components with the builder mistakes plugin authors make (tests/contract)."""

from __future__ import annotations

import attrs
import torch
from ponderkit import Routing, callback_hook, hookimpl
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


class MisspeltArgument:
    @callback_hook
    def on_step_end(self, trainer, steps, metrics):  # sic: the argument is step
        pass


class Unmarked:
    def on_step_end(self, trainer, step, metrics):  # sic: no @callback_hook
        pass


def misspelt_argument(cfg, ctx):
    return MisspeltArgument()


def unmarked_hook(cfg, ctx):
    return Unmarked()


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


# -- runtime mistakes: built fine, wrong at the first forward (refused by validate's step) --


class _Top1(nn.Module):
    """A top-1 router over E experts (as a third party would write one)."""

    def __init__(self, d_model, num_experts):
        super().__init__()
        self.num_experts, self.max_active = num_experts, 1
        self.proj = nn.Linear(d_model, num_experts, bias=False)

    def route(self, logits):
        mask = nn.functional.one_hot(logits.argmax(-1), self.num_experts).bool()
        return Routing(weights=mask.float(), mask=mask, logits=logits)

    def forward(self, x, ctx):
        return self.route(self.proj(x))


class RouterWrongShape(_Top1):
    def forward(self, x, ctx):
        logits = self.proj(x)[:, :-1]  # sic: one expert short
        return Routing(weights=torch.zeros_like(logits), mask=logits > 0, logits=logits)


class RouterWrongType(_Top1):
    def forward(self, x, ctx):
        return self.route(self.proj(x)).weights  # sic: the weights, not the Routing


class RouterMissingMethod(_Top1):
    def forward(self, x, ctx):
        return self.rout(self.proj(x))  # sic: the method is route


class _QHalt(nn.Module):
    """Halt after max_steps; a q head learns whether the current answer is right."""

    def __init__(self, d_model):
        super().__init__()
        self.max_steps = 2
        self.q = nn.Linear(d_model, 1)

    def forward(self, y, ctx):
        return {"q_halt": self.q(y[:, 0]).squeeze(-1)}  # (B,)

    def should_halt(self, signals, steps, training):
        return steps >= self.max_steps

    def loss(self, signals, correct, **_):
        bce = nn.functional.binary_cross_entropy_with_logits
        loss = bce(signals["q_halt"], correct.float())
        return loss, {"q_loss": loss.detach()}


class HaltingWrongShape(_QHalt):
    def should_halt(self, signals, steps, training):
        return (steps >= self.max_steps)[:, None]  # sic: (B, 1), not (B,)


class HaltingWrongType(_QHalt):
    def forward(self, y, ctx):
        return self.q(y[:, 0]).squeeze(-1)  # sic: the tensor, not a dict of signals


class HaltingMissingMethod(_QHalt):
    def loss(self, signals, correct, **_):
        return self.bce(signals["q_halt"], correct.float())  # sic: no such method


def _router(cls):
    return lambda cfg, ctx, num_experts: cls(ctx.d_model, num_experts)


def _halting(cls):
    return lambda cfg, ctx: cls(ctx.d_model)


RUNTIME = {
    ("router", "wrong_shape"): _router(RouterWrongShape),
    ("router", "wrong_type"): _router(RouterWrongType),
    ("router", "missing_method"): _router(RouterMissingMethod),
    ("router", "top1"): _router(_Top1),
    ("halting", "wrong_shape"): _halting(HaltingWrongShape),
    ("halting", "wrong_type"): _halting(HaltingWrongType),
    ("halting", "missing_method"): _halting(HaltingMissingMethod),
    ("halting", "q_ok"): _halting(_QHalt),
}


@hookimpl
def ponderkit_register(registry):
    registry.add("ffn", "returns_none", Empty, returns_none)
    registry.add("mixer", "returns_dict", Empty, returns_dict)
    registry.add("ffn", "raises", Empty, raises)
    registry.add("halting", "no_should_halt", Empty, no_should_halt)
    registry.add("callback", "misspelt_hook", Empty, misspelt_hook)
    registry.add("callback", "misspelt_argument", Empty, misspelt_argument)
    registry.add("callback", "unmarked_hook", Empty, unmarked_hook)
    for (kind, name), builder in RUNTIME.items():
        registry.add(kind, name, Empty, builder)
