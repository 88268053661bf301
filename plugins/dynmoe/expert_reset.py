"""``expert_reset``: periodic dead-expert reset (seed 003), in place of load balancing."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from ponderkit import BuildContext, ResettableRouter, RoutedLayer, callback_hook, hookimpl
from torch import Tensor, nn


@attrs.frozen
class ExpertResetConfig:
    """Dead-expert reset: every ``interval`` steps, experts no token activated start afresh.

    An expert is dead when no token activated it since the last check in *any* router that
    draws from it: a library shared across blocks (``library: global``) or across attention
    and FFN (``library: shared``) is one group, and an expert one router finds idle while
    another still uses it is left alone. A dead expert gets a fresh slot in every router of
    its group (a new prototype column drawn like the init, threshold 0) and, with
    ``reset_weights`` (default, seed 003: dead experts are re-initialised), fresh weights
    (once per library). With ``reset_optimizer_state`` the optimizer's per-element moments
    of the reset slices (AdamW exp_avg, exp_avg_sq, ...) are zeroed (the step count is per
    parameter tensor and stays); callbacks that copy the weights (EMA) restart those slices
    at the new values. Works on every router that counts activations
    (``activation_counts``); adds the metrics ``experts_per_token``, ``dead_experts`` (at
    the last check) and ``experts_reset`` (total)."""

    interval: int = attrs.field(default=100, validator=attrs.validators.gt(0))
    reset_weights: bool = True
    reset_optimizer_state: bool = True


Touched = list[tuple[nn.Parameter, int]]
Routed = tuple[nn.Module, nn.Module | None]


class ExpertReset:
    def __init__(self, cfg: ExpertResetConfig):
        self.cfg = cfg
        self.total_resets = 0
        self.dead_at_last_check = 0
        self._groups: list[list[Routed]] | None = None

    @staticmethod
    def routed(model: nn.Module) -> list[Routed]:
        """(router, the layer that owns it or None) for every counting router in ``model``.
        The capability checks find an ``nn.Module``'s buffers and submodules on every Python:
        a plain runtime Protocol on Python 3.12 looks members up statically and missed them,
        so on the GPU machines (3.12) this callback found no router, reset nothing and
        logged no ``dead_experts`` / ``experts_reset`` (the ADR grid of 2026-12-07)."""
        owners = {
            id(m.router): m
            for m in model.modules()
            if isinstance(m, RoutedLayer) and isinstance(m.router, nn.Module)
        }
        return [
            (m, owners.get(id(m)))
            for m in model.modules()
            if isinstance(m, ResettableRouter) and isinstance(m.activation_counts, Tensor)
        ]

    @staticmethod
    def groups(routed: list[Routed]) -> list[list[Routed]]:
        """Routers grouped by the expert weights they draw from: routers whose owners share
        an expert parameter (a global or shared library) form one group."""
        groups: list[list[Routed]] = []
        keys: list[set[int]] = []
        for router, owner in routed:
            params = getattr(owner, "expert_parameters", None)
            key = {id(p) for p in params()} if params is not None else {id(router)}
            for i, other in enumerate(keys):
                if key & other:
                    groups[i].append((router, owner))
                    other |= key
                    break
            else:
                groups.append([(router, owner)])
                keys.append(key)
        return groups

    @callback_hook
    def on_step_end(self, trainer: Any, step: int, metrics: dict) -> None:
        if self._groups is None:
            self._groups = self.groups(self.routed(trainer.model))
        routers = [r for group in self._groups for r, _ in group]
        if not routers:
            return
        with torch.no_grad():  # over the current interval, before a check clears the counts
            per_token = torch.stack(
                [r.activation_counts.sum() / r.tokens_seen.clamp(min=1) for r in routers]
            ).mean()
        if step % self.cfg.interval == 0:
            self.dead_at_last_check = 0
            for group in self._groups:
                dead = self.reset_dead(group, trainer.optimizer, trainer)
                self.dead_at_last_check += dead
                self.total_resets += dead
        metrics["experts_per_token"] = per_token
        metrics["dead_experts"] = self.dead_at_last_check
        metrics["experts_reset"] = self.total_resets

    @torch.no_grad()
    def reset_dead(self, group: list[Routed], optimizer: Any, trainer: Any = None) -> int:
        """Reset the experts that no router of ``group`` activated (and that some router may
        select); clear the group's counts. One host sync. The trainer (when given) tells its
        callbacks which slices were reset (EMA follows)."""
        idle = torch.stack([r.activation_counts == 0 for r, _ in group]).all(0)
        enabled = torch.stack([r.enabled for r, _ in group]).any(0)
        dead = (idle & enabled).nonzero().squeeze(1)
        for router, _ in group:
            router.clear_counts()
        if not len(dead):
            return 0
        touched: Touched = []
        weights = self.cfg.reset_weights
        for router, owner in group:
            if owner is not None:
                # the shared weights once; every router of the group gets a fresh slot
                touched += owner.reset_experts(dead, weights=weights)
                weights = False
            else:
                touched += router.reset_experts(dead)
        if self.cfg.reset_optimizer_state and optimizer is not None:
            clear_optimizer_state(optimizer, touched, dead)
        if trainer is not None:
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
