"""Auxiliary routing losses (unweighted; routers multiply by their configured weights).

- SDL, the sparse-diversity loss of seed 003: diversity ||W_n^T W_n - I||_F over the
  column-normalised prototypes plus simplicity mean_e ||w_e||.
- sparsity: |mean active experts per token - target| (L1 to a target).
- load balance (Switch Transformer): E * sum_e f_e P_e.
- z-loss (ST-MoE): mean logsumexp(logits)^2.

Every loss is 0 (not NaN) for an empty batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sdl_loss(prototypes: Tensor) -> tuple[Tensor, Tensor]:
    """(diversity, simplicity) for prototype columns ``prototypes`` (D, E)."""
    norms = prototypes.norm(dim=0)
    unit = prototypes / norms.clamp(min=1e-6)
    gram = unit.T @ unit  # (E, E)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - eye), norms.mean()


def token_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean of ``values`` (N, ...) over tokens, weighted by ``weights`` (N,) when given (the
    tokens whose step counts); 0 for no tokens."""
    if weights is None:
        return values.sum(0) / max(values.shape[0], 1)
    w = weights.to(values.dtype).view(-1, *([1] * (values.ndim - 1)))
    return (values * w).sum(0) / w.sum().clamp(min=1)


def sparsity_loss(
    experts_per_token: Tensor, target: float, weights: Tensor | None = None
) -> Tensor:
    """L1 distance of the mean of ``experts_per_token`` (N,) (differentiable) to ``target``."""
    return (token_mean(experts_per_token, weights) - target).abs()


def load_balance_loss(probs: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Switch load balance E * sum_e f_e P_e: ``probs`` (N,E) softmax over all experts,
    ``mask`` (N,E) the dispatch; f_e is the share of dispatched pairs that go to e (tokens
    weighted by ``weights`` (N,) when given)."""
    e = probs.shape[-1]
    dispatched = token_mean(mask.to(probs.dtype), weights)
    share = dispatched / dispatched.sum().clamp(min=1e-12)
    return e * (share * token_mean(probs, weights)).sum()


def z_loss(logits: Tensor, enabled: Tensor, weights: Tensor | None = None) -> Tensor:
    """mean over tokens of logsumexp(logits)^2 over the ``enabled`` (E,) experts."""
    lse = torch.logsumexp(logits.masked_fill(~enabled, float("-inf")), dim=-1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return token_mean(lse.pow(2), weights)
