"""``expert_reset``: periodic dead-expert reset (seed 003), in place of load balancing."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from ponderkit import BuildContext, hookimpl
from torch import Tensor, nn


@attrs.frozen
class ExpertResetConfig:
    """Dead-expert reset: every ``interval`` steps, experts no token activated start afresh.

    A dead expert (no activation since the last check) gets a fresh router slot (a new prototype column drawn like the init, threshold
    0) and, with ``reset_weights``, fresh expert weights; with ``reset_optimizer_state`` the
    optimizer's moments (e.g. AdamW exp_avg, exp_avg_sq) of the reset slices are zeroed.
    Works on every router that counts activations (``activation_counts``), and adds the metrics
    ``experts_per_token``, ``dead_experts`` (at the last check) and ``experts_reset`` (total)."""

    interval: int = attrs.field(default=100, validator=attrs.validators.gt(0))
    reset_weights: bool = False
    reset_optimizer_state: bool = True


Touched = list[tuple[nn.Parameter, int]]


class ExpertReset:
    def __init__(self, cfg: ExpertResetConfig):
        self.cfg = cfg
        self.total_resets = 0
        self.dead_at_last_check = 0
        self._routers: list[tuple[nn.Module, nn.Module | None]] | None = None

    @staticmethod
    def routed(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
        """(router, the layer that owns it or None) for every counting router in ``model``."""
        owners = {
            id(m.router): m
            for m in model.modules()
            if isinstance(getattr(m, "router", None), nn.Module) and hasattr(m, "reset_experts")
        }
        return [
            (m, owners.get(id(m)))
            for m in model.modules()
            if isinstance(getattr(m, "activation_counts", None), Tensor)
        ]

    def on_step_end(self, trainer: Any, step: int, metrics: dict) -> None:
        if self._routers is None:
            self._routers = self.routed(trainer.model)
        routers = self._routers
        if not routers:
            return
        with torch.no_grad():  # over the current interval, before a check clears the counts
            per_token = torch.stack(
                [r.activation_counts.sum() / r.tokens_seen.clamp(min=1) for r, _ in routers]
            ).mean()
        if step % self.cfg.interval == 0:
            self.dead_at_last_check = 0
            for router, owner in routers:
                dead = self.reset_dead(router, owner, trainer.optimizer, trainer)
                self.dead_at_last_check += dead
                self.total_resets += dead
        metrics["experts_per_token"] = per_token
        metrics["dead_experts"] = self.dead_at_last_check
        metrics["experts_reset"] = self.total_resets

    @torch.no_grad()
    def reset_dead(
        self, router: nn.Module, owner: nn.Module | None, optimizer: Any, trainer: Any = None
    ) -> int:
        """Reset ``router``'s experts without activations; clear its counts. One host sync.
        The trainer (when given) tells its callbacks which slices were reset (EMA follows)."""
        dead = ((router.activation_counts == 0) & router.enabled).nonzero().squeeze(1)
        router.clear_counts()
        if not len(dead):
            return 0
        if owner is not None:
            touched = owner.reset_experts(dead, weights=self.cfg.reset_weights)
        else:
            touched = router.reset_experts(dead)
        if self.cfg.reset_optimizer_state and optimizer is not None:
            clear_optimizer_state(optimizer, touched, dead)
        if trainer is not None and hasattr(trainer, "parameters_reset"):
            trainer.parameters_reset(touched, dead)
        return len(dead)

    def state_dict(self) -> dict[str, Any]:
        return {"total_resets": self.total_resets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_resets = int(state.get("total_resets", 0))


def clear_optimizer_state(optimizer: Any, touched: Touched, experts: Tensor) -> None:
    """Zero every per-element optimizer tensor (exp_avg, exp_avg_sq, momentum) of the slices
    ``experts`` along each touched parameter's expert dimension."""
    for param, dim in touched:
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.index_fill_(dim, experts.to(value.device), 0.0)


def build_expert_reset(cfg: ExpertResetConfig, ctx: BuildContext) -> ExpertReset:
    return ExpertReset(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("callback", "expert_reset", ExpertResetConfig, build_expert_reset)
