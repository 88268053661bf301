"""``supervised``: one batch, all recursion steps with gradients, one optimizer step."""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, hookimpl
from ponderkit.plugins.schedules.full_unroll import FullUnroll, FullUnrollConfig


@attrs.frozen
class SupervisedConfig:
    """Plain supervised training: all recursion steps with gradients, one optimizer step a batch.

    Runs the halting policy's ``max_steps`` steps, takes the loss on the final output (plus
    auxiliary losses) and makes one optimizer step."""


class Supervised(FullUnroll):
    """A full unroll whose loss is always on the last step, whatever the halting policy."""

    weigh_steps = False


def build_supervised(cfg: SupervisedConfig, ctx: BuildContext) -> Supervised:
    return Supervised(FullUnrollConfig())


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("schedule", "supervised", SupervisedConfig, build_supervised)
