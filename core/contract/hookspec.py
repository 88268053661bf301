"""The whole plugin contract, as pluggy hooks.

A plugin is any module (or object) with a function marked ``@hookimpl`` named
``ponderkit_register``. It is called once with the live :class:`~ponderkit.contract.registry.Registry`
and adds components to it::

    from ponderkit import hookimpl

    @hookimpl
    def ponderkit_register(registry):
        registry.add("router", "my_router", MyRouterConfig, build_my_router)

The hook is *historic*: a plugin registered after the first call still receives it.

A plugin may also add command-line options (``ponderkit_add_options``, as pytest's
``pytest_addoption``): the options of a command (``eval``) that its components read.

A *callback* (work between training steps) is a second set of hooks under its own project
name, ``ponderkit_callback``: :class:`CallbackSpec`. Every built callback instance is registered
with a ``PluginManager`` of that project, so pluggy checks each ``@callback_hook`` method's name
and argument names against the spec when the callback is built (a misspelt hook or argument is
refused then, not silently never called), and the trainer dispatches through the hook relay.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse

    from .registry import Registry

PROJECT = "ponderkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def ponderkit_register(registry: Registry) -> None:
    """Add this plugin's components to ``registry`` with ``registry.add(kind, name, ...)``."""


@hookspec
def ponderkit_add_options(command: str, parser: argparse.ArgumentParser) -> None:
    """Add this plugin's options to ``command``'s ``parser`` (``parser.add_argument_group``
    keeps them together in ``--help``). Called once per command that takes plugin options
    (today ``eval``); the parsed values reach the plugin's component as a dict of the
    options it added (``dest`` names), only those given."""


# -- callbacks ---------------------------------------------------------------------------------

CALLBACK_PROJECT = "ponderkit_callback"
callback_hookspec = pluggy.HookspecMarker(CALLBACK_PROJECT)
#: marks a callback's method as an implementation of one of :class:`CallbackSpec`'s hooks
callback_hook = pluggy.HookimplMarker(CALLBACK_PROJECT)


class CallbackSpec:
    """The hooks a callback may implement (any, at least one), each a method marked
    ``@ponderkit.callback_hook``. A hook implementation may take any subset of the spec's
    arguments, by name. Hooks run in the order the callbacks are listed in the experiment.

    A callback that keeps state across a resume also has ``state_dict()`` and
    ``load_state_dict(state)`` (plain methods: :class:`~ponderkit.Stateful`)."""

    @callback_hookspec
    def on_train_start(self, trainer: Any) -> None:
        """Training (or a resumed segment of it) starts; the model is built and on its device."""

    @callback_hookspec
    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        """An optimizer step finished (``step`` counts them from 1); may add to ``metrics``."""

    @callback_hookspec
    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        """``record`` was written to ``metrics.jsonl`` (the source of truth): a logging backend
        such as ``callback/tensorboard`` mirrors it elsewhere."""

    @callback_hookspec
    def on_parameters_reset(self, trainer: Any, touched: list[tuple[Any, int]], index: Any) -> None:
        """Slices of parameters were re-initialised: ``touched`` lists (parameter, dim) pairs,
        ``index`` the positions along ``dim`` (announced with ``trainer.parameters_reset``, e.g.
        by an expert reset), so that copies of the weights such as EMA's follow."""

    @callback_hookspec
    def owned_parameters(self, trainer: Any) -> list[Any]:
        """Called once the model is built, before the optimizer: parameters this callback
        updates itself (a sparse puzzle-embedding table); the optimizer leaves them out and
        gradient clipping ignores them."""

    @callback_hookspec
    def eval_weights(self, trainer: Any) -> AbstractContextManager[None]:
        """A context manager swapping in the weights evaluation and checkpoints use (EMA)."""

    @callback_hookspec(firstresult=True)
    def swaps_weights(self) -> bool:
        """Whether ``eval_weights`` swaps any weights in now (without this hook: always);
        evaluation then also reports the raw weights' metrics."""


def _signature(fn: Any) -> str:
    """``name(arg, ...) -> returns``, without ``self`` and argument annotations."""
    names = [p for p in inspect.signature(fn).parameters if p != "self"]
    returns = fn.__annotations__.get("return", "None")
    return f"{fn.__name__}({', '.join(names)}) -> {returns}"


#: Callback hooks by name, with their signatures (for ``ponderkit show callback``).
CALLBACK_HOOKS: dict[str, str] = {
    name: _signature(fn)
    for name, fn in vars(CallbackSpec).items()
    if hasattr(fn, f"{CALLBACK_PROJECT}_spec")  # pluggy's marker attribute
}


def callback_manager() -> pluggy.PluginManager:
    """A fresh ``PluginManager`` for callbacks, holding :class:`CallbackSpec`."""
    pm = pluggy.PluginManager(CALLBACK_PROJECT)
    pm.add_hookspecs(CallbackSpec)
    return pm


def register_callback(pm: pluggy.PluginManager, callback: Any, name: str) -> None:
    """Register ``callback`` with ``pm`` as ``name``, or raise ``ValueError`` saying in one
    line which of its hooks is wrong: a hook name or argument the spec does not have, a
    method named like a hook but not marked ``@callback_hook``, or no hook at all."""
    from .errors import suggestion

    cls = type(callback).__name__
    for attr in dir(type(callback)):  # the contract checker: reads the class's members
        method = getattr(type(callback), attr, None)
        if attr.startswith("_") or not callable(method):
            continue
        marked = pm.parse_hookimpl_opts(callback, attr) is not None
        # an ``on_*`` method or one named like a hook, left unmarked, would never be called
        if not marked and (attr in CALLBACK_HOOKS or attr.startswith("on_")):
            raise ValueError(
                f"a {cls} whose method {attr!r} is not marked @ponderkit.callback_hook "
                "(it would never be called)"
            )
        spec = vars(CallbackSpec).get(attr)
        if marked and spec is not None:
            takes = [p for p in inspect.signature(method).parameters if p != "self"]
            passed = [p for p in inspect.signature(spec).parameters if p != "self"]
            extra = [p for p in takes if p not in passed]
            if extra:
                raise ValueError(
                    f"a {cls} whose hook {attr}({', '.join(takes)}) takes {extra[0]!r}, "
                    f"which the hook does not pass: {CALLBACK_HOOKS[attr]}"
                )
    try:
        pm.register(callback, name=name)
    except pluggy.PluginValidationError as exc:
        raise ValueError(f"a {cls} with a wrong hook: {_one_line(str(exc))}") from None
    unknown = [c.name for c in pm.get_hookcallers(callback) or () if c.spec is None]
    if unknown:
        pm.unregister(callback)
        hint = suggestion(unknown[0], CALLBACK_HOOKS)
        raise ValueError(
            f"a {cls} with an unknown hook {unknown[0]!r}"
            + (f" ({hint})" if hint else f" (hooks: {', '.join(CALLBACK_HOOKS)})")
        )
    if not pm.get_hookcallers(callback):
        pm.unregister(callback)
        raise ValueError(
            f"a {cls} with none of the hooks {', '.join(CALLBACK_HOOKS)} marked "
            "@ponderkit.callback_hook"
        )


def callback_problem(callback: Any) -> str | None:
    """Why ``callback`` is not a valid callback (see :func:`register_callback`), or None."""
    try:
        register_callback(callback_manager(), callback, "callback")
    except ValueError as exc:
        return str(exc)
    return None


def _one_line(message: str) -> str:
    """pluggy's multi-line validation message (plugin, hook, definition, the argument it
    cannot find) as one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(lines)
