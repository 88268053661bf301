"""``sort``: sort a sequence of digits. A small task that trains on a laptop CPU in seconds."""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import torch
from ponderkit import Batch, BuildContext, hookimpl
from torch import Tensor


@attrs.frozen
class SortConfig:
    """Sort ``length`` random digits from ``[0, values)``; labels are the sorted sequence.

    Training samples are drawn fresh every batch; evaluation uses a fixed held-out set of
    ``eval_size`` sequences (seeded separately). Chance exact accuracy is about 0."""

    length: int = attrs.field(default=8, validator=attrs.validators.gt(1))
    values: int = attrs.field(default=10, validator=attrs.validators.gt(1))
    eval_size: int = attrs.field(default=1024, validator=attrs.validators.gt(0))


class SortTask:
    num_puzzle_ids = 0

    def __init__(self, cfg: SortConfig, seed: int):
        self.cfg = cfg
        self.vocab_size = cfg.values
        self.seq_len = cfg.length
        self.seed = seed

    def _sample(self, n: int, gen: torch.Generator) -> Batch:
        inputs = torch.randint(0, self.cfg.values, (n, self.cfg.length), generator=gen)
        return {"inputs": inputs, "labels": inputs.sort(dim=-1).values}

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            yield self._sample(batch_size, gen)

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(10_000_019 + self.seed)
        data = self._sample(self.cfg.eval_size, gen)
        for i in range(0, self.cfg.eval_size, batch_size):
            yield {k: v[i : i + batch_size] for k, v in data.items()}

    def score(self, predictions: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {}


def build_sort(cfg: SortConfig, ctx: BuildContext) -> SortTask:
    return SortTask(cfg, ctx.seed)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "sort", SortConfig, build_sort)
