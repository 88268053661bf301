"""``pi_score``: the PI-Score (predictive integrity) that ADR-0001 IMP-003 asks to watch.

The seeds name the PI-Score ("PI", predictive integrity: a proxy for how well the model
integrates information) without a formula. The working hypothesis behind the name is that a
system which integrates information well predicts well (low error), is sure of what it
predicts (low uncertainty) and is not disturbed by what it sees (low surprise). We score the
three on one scale, in nats, and exponentiate:

    PI = exp(-(eps + tau + gamma * S))  in (0, 1]

- eps: the task cross-entropy of the step (``lm_loss``, nats per token). exp(-eps) is the
  geometric-mean probability the model gives the right token.
- tau: the mean entropy of the model's own predictive distribution over the task positions
  (nats; softmax or stablemax as the model's loss). exp(-tau) is 1 / the effective number of
  answers the model hesitates between.
- S: the surprise of the step, the global gradient norm before clipping (``grad_norm``): how
  far the batch pushes the weights. gamma (``surprise_weight``) puts it on the nats scale.

PI is 1 only for a model that is right, certain and at rest; a confidently wrong model loses
through eps, an unsure right one through tau, one still being reshaped through S. It is a
product of three factors, so a change in any one shows; unlike the loss it also falls when a
model becomes uncertain while still right. Logged as ``pi_score`` with its parts ``pi/eps``,
``pi/tau`` and ``pi/surprise``, each step the trainer logs.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from ponderkit import BuildContext, callback_hook, hookimpl, stablemax_log_probs
from torch import Tensor


@attrs.frozen
class PIScoreConfig:
    """PI-Score (predictive integrity): PI = exp(-(eps + tau + surprise_weight * S)).

    eps: task cross-entropy; tau: mean predictive entropy over task positions (both nats per
    token); S: pre-clip gradient norm. In (0, 1]; 1 = right, certain and at rest. Adds the
    metrics ``pi_score``, ``pi/eps``, ``pi/tau``, ``pi/surprise`` every step."""

    #: weight of the surprise S in PI = exp(-(eps + tau + surprise_weight * S))
    surprise_weight: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))


def predictive_entropy(logits: Tensor, loss: str = "softmax") -> Tensor:
    """Mean entropy (nats) of the distributions ``logits`` (..., V) stand for."""
    if loss == "stablemax":
        logp = stablemax_log_probs(logits)
    else:
        logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def pi_score(eps: Tensor, tau: Tensor, surprise: Tensor, surprise_weight: float) -> Tensor:
    return torch.exp(-(eps + tau + surprise_weight * surprise))


class PIScore:
    def __init__(self, cfg: PIScoreConfig):
        self.cfg = cfg
        self._entropies: list[Tensor] = []

    @callback_hook
    def on_train_start(self, trainer: Any) -> None:
        # the output head's logits are the model's predictions; a hook sees them in every
        # schedule and recursion without the schedules knowing about the score
        model = trainer.model
        loss = getattr(model, "loss_kind", "softmax")

        def record(module: Any, inputs: Any, logits: Tensor) -> None:
            if module.training:
                with torch.no_grad():
                    self._entropies.append(predictive_entropy(logits.detach(), loss))

        model.head.register_forward_hook(record)

    @callback_hook
    def on_step_end(self, trainer: Any, step: int, metrics: dict) -> None:
        if not self._entropies or "lm_loss" not in metrics or "grad_norm" not in metrics:
            self._entropies.clear()
            return
        tau = torch.stack(self._entropies).mean()  # over the step's head calls (unrolled steps)
        self._entropies.clear()
        eps = torch.as_tensor(metrics["lm_loss"]).detach().float().to(tau.device)
        surprise = torch.as_tensor(metrics["grad_norm"]).detach().float().to(tau.device)
        metrics["pi_score"] = pi_score(eps, tau, surprise, self.cfg.surprise_weight)
        metrics["pi/eps"], metrics["pi/tau"], metrics["pi/surprise"] = eps, tau, surprise


def build_pi_score(cfg: PIScoreConfig, ctx: BuildContext) -> PIScore:
    return PIScore(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("callback", "pi_score", PIScoreConfig, build_pi_score)
