"""FLOP counting: formulas torch's FlopCounterMode lacks (CPU attention, grouped GEMMs)."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterator
from typing import Any


def extra_flop_formulas() -> dict[Any, Any]:
    """Custom ``FlopCounterMode`` formulas for ops it does not count."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *_, out_shape=None, **__: fc.sdpa_flop_count(q, k, v)
        )
        extra[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *_, out_shape=None, **__: fc.sdpa_backward_flop_count(g, q, k, v)
        )
    if hasattr(aten, "_grouped_mm"):
        extra[aten._grouped_mm] = _grouped_mm_flop
    return extra


def _grouped_mm_flop(a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Rows of ``a`` meet one group's matrix each: (N, K) x (E, K, M) costs 2*N*K*M; the
    weight gradient (K, N) x (N, M) -> (E, K, M) costs 2*K*N*M; batched 3-D x 3-D as bmm."""
    if len(a) == 2 and len(b) == 3:
        return 2 * a[0] * a[1] * b[2]
    if len(a) == 2 and len(b) == 2:
        return 2 * a[0] * a[1] * b[1]
    if len(a) == 3 and len(b) == 3:
        return 2 * a[0] * a[1] * a[2] * b[2]
    return 2 * a[-2] * a[-1] * b[-1]


class Replica:
    """The trainer services a schedule sees while its step is counted: everything the real
    trainer offers, except that ``model`` is the replica being counted, ``optimize`` only
    back-propagates (no clipping, no update) and re-initialisations are not announced."""

    def __init__(self, trainer: Any, model: Any):
        self._trainer = trainer
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)  # a proxy: every other service is the trainer's

    def optimize(self, loss: Any) -> Any:
        loss.backward()
        return loss.detach() * 0

    def parameters_reset(self, touched: list, index: Any) -> None:
        pass


def replica(model: Any) -> Any:
    """A deep copy of ``model`` to count a step on: its parameters, buffers and every Python
    attribute of every module (a plugin's counters, caches, lists) are its own, so the replay
    changes nothing of the model that trains. Compiled calls and forward hooks are dropped:
    the count runs eagerly, and a hook attached from outside (a callback's) would otherwise
    observe a step that is never taken."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        module._compiled_call_impl = None  # nn.Module.compile's: it calls the original module
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return twin


def eagerly() -> Any:
    """A context in which compiled code runs eagerly, for counting FLOPs: FlopCounterMode sees
    its aten ops, and dynamo never meets a frame under the counting mode. A frame it first
    meets there is never compiled afterwards: a block compiled by ``train.compile: block``
    trained at the eager rate (270 vs 540 samples/s on seed 002's mazes, H100) because its
    first call was the first step's count."""
    import torch

    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance else contextlib.nullcontext()


def count_step_flops(trainer: Any, batches: Iterator[Any]) -> tuple[float, Iterator[Any]]:
    """FLOPs (forward + backward, FlopCounterMode) of the optimizer step ``trainer`` is about
    to take, and the batch stream to take it from.

    The step is replayed on a deep copy of the model and schedule (:func:`replica`) and
    thrown away: the next batch is peeked and handed back and the random number generators are
    restored, so that counting leaves training, every plugin's state included, bit for bit as
    it was. The optimizer update is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    peeked = next(batches)
    rng = _rng_state()
    model = replica(trainer.model)
    schedule = copy.deepcopy(trainer.schedule)
    try:
        with (
            eagerly(),
            FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter,
        ):
            schedule.train_step(model, itertools.repeat(peeked), Replica(trainer, model))
        flops = float(counter.get_total_flops())
    finally:
        del model, schedule
        _set_rng_state(rng)
    return flops, itertools.chain([peeked], batches)


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    state["python"] = random.getstate()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
