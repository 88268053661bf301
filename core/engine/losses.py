"""Cross-entropy losses over tokens with ignored positions (label -100)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..contract.interfaces import IGNORE_LABEL


def stablemax_log_probs(logits: Tensor) -> Tensor:
    """log of stablemax: s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0, normalised."""
    x = logits.double() if logits.dtype == torch.float64 else logits.float()
    s = torch.where(x >= 0, x + 1, 1 / (1 - torch.clamp(x, max=0)))
    return torch.log(s) - torch.log(s.sum(-1, keepdim=True))


def token_losses(logits: Tensor, labels: Tensor, kind: str = "softmax") -> Tensor:
    """Per-token loss (B,T) in float32, 0 where the label is ignored."""
    valid = labels != IGNORE_LABEL
    safe = torch.where(valid, labels, 0)
    if kind == "softmax":
        logp = torch.log_softmax(logits.float(), dim=-1)
    elif kind == "stablemax":
        logp = stablemax_log_probs(logits)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected 'softmax' or 'stablemax'")
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, nll, torch.zeros_like(nll))


def sequence_loss(logits: Tensor, labels: Tensor, kind: str = "softmax") -> Tensor:
    """Per-sequence mean over its valid tokens (B,), as TRM averages."""
    valid = (labels != IGNORE_LABEL).sum(-1).clamp(min=1)
    return token_losses(logits, labels, kind).sum(-1) / valid


def accuracy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(per-token correct (B,T) bool over valid tokens, exact match (B,) bool, valid (B,T))."""
    valid = labels != IGNORE_LABEL
    correct = (logits.argmax(-1) == labels) & valid
    exact = (correct | ~valid).all(-1)
    return correct, exact, valid


def step_metrics(
    loss: Tensor, lm_loss: Tensor, logits: Tensor, labels: Tensor, grad_norm: Tensor
) -> dict[str, Tensor]:
    """The metrics every schedule reports for one optimizer step (tensors; no host sync)."""
    correct, exact, valid = accuracy(logits.detach(), labels)
    return {
        "loss": loss.detach(),
        "lm_loss": lm_loss.detach(),
        "token_acc": correct.sum() / valid.sum().clamp(min=1),
        "exact_acc": exact.float().mean(),
        "grad_norm": grad_norm,
    }
