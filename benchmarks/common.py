"""What the benchmark scripts share (imported as ``common``: each script's folder is on
``sys.path`` when it runs as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def timed(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls of ``fn``, from a synchronized start to a synchronized end."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - t


def add_device_options(parser: argparse.ArgumentParser, smoke_help: str) -> None:
    """``--precision``, ``--device``, ``--smoke`` and ``--out``, as every GPU benchmark has them."""
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--out", type=Path, default=None)
