"""The experiment's callbacks behind one pluggy hook relay.

Every built callback is registered with a ``PluginManager`` of project ``ponderkit_callback``
(:mod:`ponderkit.contract.hookspec`), in reverse so that pluggy, which calls the last
registered first, runs the hooks in the order the experiment lists the callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ..contract.hookspec import callback_manager, register_callback
from ..contract.interfaces import Stateful


class CallbackRelay:
    """``hook.<name>(**kwargs)`` calls that hook on every callback that implements it;
    :meth:`swapping` and the state methods look at callbacks one by one."""

    def __init__(self, callbacks: Sequence[Any], names: Sequence[str]):
        self.callbacks = list(callbacks)
        self.names = list(names)
        self.pm = callback_manager()
        for i in reversed(range(len(self.callbacks))):
            register_callback(self.pm, self.callbacks[i], f"callbacks.{i}")
        self.hook = self.pm.hook

    def _only(self, hook: str, index: int) -> Any:
        """``hook`` as implemented by callback ``index`` alone."""
        others = [cb for i, cb in enumerate(self.callbacks) if i != index]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def swapping(self) -> list[str]:
        """Names of the callbacks that evaluate weights of their own and hold some now."""
        names = []
        for i, name in enumerate(self.names):
            if not self._only("eval_weights", i).get_hookimpls():
                continue
            swaps = self._only("swaps_weights", i)
            if not swaps.get_hookimpls() or swaps():
                names.append(name)
        return names

    def eval_weights(self, trainer: Any) -> contextlib.AbstractContextManager:
        """Every callback's evaluation weights swapped in, in the experiment's order."""
        stack = contextlib.ExitStack()
        for manager in self.hook.eval_weights(trainer=trainer):
            stack.enter_context(manager)
        return stack

    def owned_parameters(self, trainer: Any) -> list[Any]:
        return [p for owned in self.hook.owned_parameters(trainer=trainer) for p in owned or ()]

    def state_dicts(self) -> list[dict[str, Any] | None]:
        """Each callback's state (None for one without: not :class:`Stateful`)."""
        return [cb.state_dict() if isinstance(cb, Stateful) else None for cb in self.callbacks]

    def load_state_dicts(self, states: Sequence[dict[str, Any] | None]) -> None:
        for cb, state in zip(self.callbacks, states, strict=False):
            if state and isinstance(cb, Stateful):
                cb.load_state_dict(state)
