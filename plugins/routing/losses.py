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


def sparsity_loss(experts_per_token: Tensor, target: float) -> Tensor:
    """L1 distance of the mean of ``experts_per_token`` (N,) (differentiable) to ``target``."""
    mean = experts_per_token.sum() / max(experts_per_token.shape[0], 1)
    return (mean - target).abs()


def load_balance_loss(probs: Tensor, mask: Tensor) -> Tensor:
    """Switch load balance E * sum_e f_e P_e: ``probs`` (N,E) softmax over all experts,
    ``mask`` (N,E) the dispatch; f_e is the share of dispatched pairs that go to e."""
    e = probs.shape[-1]
    n = max(probs.shape[0], 1)
    dispatched = mask.to(probs.dtype).sum(0)
    share = dispatched / dispatched.sum().clamp(min=1)
    return e * (share * probs.sum(0) / n).sum()


def z_loss(logits: Tensor, enabled: Tensor) -> Tensor:
    """mean over tokens of logsumexp(logits)^2 over the ``enabled`` (E,) experts."""
    n = max(logits.shape[0], 1)
    lse = torch.logsumexp(logits.masked_fill(~enabled, float("-inf")), dim=-1)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return lse.pow(2).sum() / n
