"""What the benchmark scripts share (imported as ``common``: each script's folder is on
``sys.path`` when it runs as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings must not end before the kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_batches(
    batch: int, seq: int, vocab: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Random tokens in [1, vocab) (0 is padding), four batches in turn: no data set to
    generate, the same shapes as a task's."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    pool = [
        {
            "inputs": torch.randint(1, vocab, (batch, seq), generator=gen).to(device),
            "labels": torch.randint(1, vocab, (batch, seq), generator=gen).to(device),
        }
        for _ in range(4)
    ]
    i = 0
    while True:
        yield pool[i % len(pool)]
        i += 1
