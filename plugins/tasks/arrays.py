"""A task backed by fixed train and eval arrays, with per-sample augmentation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from ponderkit import Batch

Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class ArrayTask:
    """Train batches are drawn epoch by epoch in a seeded shuffled order and augmented;
    evaluation runs over the held-out arrays in order, unaugmented."""

    num_puzzle_ids = 0

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        load: Callable[[], dict[str, np.ndarray]],
        augment: Augment | None,
    ):
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self._load, self._augment = load, augment
        self._data: dict[str, np.ndarray] | None = None

    @property
    def data(self) -> dict[str, np.ndarray]:
        """``train_inputs``, ``train_labels``, ``eval_inputs``, ``eval_labels`` and optionally
        ``train_puzzle_ids``/``eval_puzzle_ids`` (made lazily, so that building the task for
        `validate` generates nothing)."""
        if self._data is None:
            self._data = self._load()
        return self._data

    @property
    def train_size(self) -> int:
        """Distinct training examples (an epoch of ``train.epochs``)."""
        return len(self.data["train_inputs"])

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        x, y = self.data["train_inputs"], self.data["train_labels"]
        rng = np.random.default_rng(seed)
        order = np.empty(0, dtype=np.int64)
        while True:
            while order.size < batch_size:
                order = np.concatenate([order, rng.permutation(len(x))])
            idx, order = order[:batch_size], order[batch_size:]
            bx, by = x[idx], y[idx]
            if self._augment is not None:
                bx, by = self._augment(bx, by, rng)
            yield self._batch(bx, by, "train", idx)

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        x, y = self.data["eval_inputs"], self.data["eval_labels"]
        for i in range(0, len(x), batch_size):
            part = slice(i, i + batch_size)
            yield self._batch(x[part], y[part], "eval", part)

    def _batch(self, x: np.ndarray, y: np.ndarray, split: str, idx) -> Batch:
        batch = {
            "inputs": torch.from_numpy(np.asarray(x, dtype=np.int64)),
            "labels": torch.from_numpy(np.asarray(y, dtype=np.int64)),
        }
        ids = self.data.get(f"{split}_puzzle_ids")
        if ids is not None:
            batch["puzzle_ids"] = torch.from_numpy(np.asarray(ids[idx], dtype=np.int64))
        return batch

    def score(self, predictions: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {}
