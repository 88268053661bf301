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
    #: distinct values a sequence element takes
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

    def holdout(self, fraction: float) -> SortHeldOut:
        """A validation split (``ponderkit.HoldsOutTraining``): see :class:`SortHeldOut`."""
        return SortHeldOut(self, fraction)


class SortHeldOut(SortTask):
    """``fraction`` x ``eval_size`` sequences (at least one) drawn from a seed of their own as
    the validation split; the training stream skips every sequence among them, and the
    evaluation set's seed is never used."""

    def __init__(self, base: SortTask, fraction: float):
        if not 0 < fraction < 1:
            raise ValueError(f"holdout: fraction must be in (0, 1), got {fraction}")
        super().__init__(base.cfg, base.seed)
        n = max(1, round(fraction * base.cfg.eval_size))
        gen = torch.Generator().manual_seed(20_000_003 + base.seed)
        self.validation = self._sample(n, gen)
        self._held = {tuple(row) for row in self.validation["inputs"].tolist()}

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed)
        while True:
            inputs = self._sample(batch_size, gen)["inputs"]
            held = [i for i, row in enumerate(inputs.tolist()) if tuple(row) in self._held]
            while held:  # draw those rows again: training never sees a validation sequence
                inputs[held] = self._sample(len(held), gen)["inputs"]
                held = [i for i in held if tuple(inputs[i].tolist()) in self._held]
            yield {"inputs": inputs, "labels": inputs.sort(dim=-1).values}

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        n = len(self.validation["inputs"])
        for i in range(0, n, batch_size):
            yield {k: v[i : i + batch_size] for k, v in self.validation.items()}


def build_sort(cfg: SortConfig, ctx: BuildContext) -> SortTask:
    return SortTask(cfg, ctx.seed)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "sort", SortConfig, build_sort)
