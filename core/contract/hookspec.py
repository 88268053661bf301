"""The whole plugin contract: one hook.

A plugin is any module (or object) with a function marked ``@hookimpl`` named
``ponderkit_register``. It is called once with the live :class:`~ponderkit.contract.registry.Registry`
and adds components to it::

    from ponderkit import hookimpl

    @hookimpl
    def ponderkit_register(registry):
        registry.add("router", "my_router", MyRouterConfig, build_my_router)

The hook is *historic*: a plugin registered after the first call still receives it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import Registry

PROJECT = "ponderkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def ponderkit_register(registry: Registry) -> None:
    """Add this plugin's components to ``registry`` with ``registry.add(kind, name, ...)``."""
