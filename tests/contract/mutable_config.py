"""A plugin whose config class is mutable (@attrs.define): refused at registration."""

import attrs
from ponderkit import hookimpl


@attrs.define
class Mutable:
    """A mutable config."""

    width: int = 4


@hookimpl
def ponderkit_register(registry):
    registry.add("ffn", "mutable", Mutable, lambda cfg, ctx: None)
