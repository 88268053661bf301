"""Where a run computes: its device, its forward-pass precision, and moving batches there."""

from __future__ import annotations

import contextlib

import torch

from ..contract.interfaces import Batch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward-pass precision context of a run (``train.precision``)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
