"""``ema``: an exponential moving average of the weights, used for evaluation and checkpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from ponderkit import BuildContext, callback_hook, hookimpl


@attrs.frozen
class EMAConfig:
    """Exponential moving average of the weights: ema = decay * ema + (1 - decay) * w.

    Evaluation and checkpoints (model.safetensors) use the averaged weights; training goes on
    with the raw ones. Slices re-initialised during training (an expert reset) restart their
    average at the new values."""

    #: ema = decay * ema + (1 - decay) * w after every step
    decay: float = attrs.field(
        default=0.999, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )


class EMA:
    def __init__(self, decay: float):
        self.decay = decay
        self.shadow: list[torch.Tensor] = []

    def _params(self, trainer: Any) -> list[torch.Tensor]:
        return [p for p in trainer.model.parameters() if p.is_floating_point()]

    @callback_hook
    def on_train_start(self, trainer: Any) -> None:
        if not self.shadow:
            self.shadow = [p.detach().clone() for p in self._params(trainer)]

    @callback_hook
    @torch.no_grad()
    def on_step_end(self, trainer: Any, step: int, metrics: dict) -> None:
        torch._foreach_lerp_(
            self.shadow, [p.detach() for p in self._params(trainer)], 1.0 - self.decay
        )

    @callback_hook
    @torch.no_grad()
    def on_parameters_reset(self, trainer: Any, touched: list, index: torch.Tensor) -> None:
        """Re-initialised slices start their average afresh at the new values (an average
        of the dead expert's old weights would otherwise be evaluated for ~1/(1-decay) steps)."""
        if not self.shadow:
            return
        slot = {id(p): i for i, p in enumerate(self._params(trainer))}
        for param, dim in touched:
            if id(param) in slot:
                shadow = self.shadow[slot[id(param)]]
                idx = index.to(shadow.device)
                shadow.index_copy_(dim, idx, param.detach().index_select(dim, idx))

    @callback_hook
    def swaps_weights(self) -> bool:
        """Whether :meth:`eval_weights` swaps anything in (an average exists)."""
        return bool(self.shadow)

    @callback_hook
    @contextlib.contextmanager
    def eval_weights(self, trainer: Any) -> Iterator[None]:
        if not self.shadow:
            yield
            return
        params = self._params(trainer)
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_copy_(params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": [t.cpu() for t in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = list(state["shadow"])


def build_ema(cfg: EMAConfig, ctx: BuildContext) -> EMA:
    return EMA(cfg.decay)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("callback", "ema", EMAConfig, build_ema)
