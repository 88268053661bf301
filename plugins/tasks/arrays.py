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

    def holdout(self, fraction: float) -> HeldOut:
        """This task with the last ``fraction`` of its training examples set aside as a
        validation split (``ponderkit.HoldsOutTraining``, what an ablation's ``tune:`` uses)."""
        return HeldOut(self, fraction)


class HeldOut(ArrayTask):
    """A validation split carved from ``base``'s training arrays: training draws from the
    first examples only, evaluation reads the last ``fraction`` of them (at least one), in
    order, unaugmented. ``base``'s evaluation arrays are not carried over, so nothing here can
    read them; grid views and ``score`` are ``base``'s."""

    def __init__(self, base: ArrayTask, fraction: float):
        if not 0 < fraction < 1:
            raise ValueError(f"holdout: fraction must be in (0, 1), got {fraction}")
        super().__init__(
            base.vocab_size, base.seq_len, lambda: _split(base.data, fraction), base._augment
        )
        self.base = base
        self.num_puzzle_ids = base.num_puzzle_ids

    def score(self, predictions: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return self.base.score(predictions, batch)

    def __getattr__(self, name: str):  # grid_shape, parse_grid ... of the base task
        if name == "base" or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _split(data: dict[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """Training arrays split into ``train_*`` (the first n - k) and ``eval_*`` (the last k)."""
    if "train_inputs" not in data:
        raise ValueError("holdout: this task has no training examples to hold out")
    n = len(data["train_inputs"])
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(f"holdout: {fraction} of {n} training examples leaves none to train on")
    out = {}
    for key, value in data.items():
        if key.startswith("train_"):
            out[key] = value[: n - k]
            out["eval_" + key.removeprefix("train_")] = value[n - k :]
    return out
