"""``files``: train and evaluate on data sets from disk (TRM/HRM builder layout, .npz, JSONL)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import numpy as np
from ponderkit import BuildContext, hookimpl

from . import maze_gen, sudoku_gen
from .arrays import ArrayTask
from .file_formats import DataError, Split, check_split, locate, read_split

_optional_positive = attrs.validators.optional(attrs.validators.gt(0))


@attrs.frozen
class FilesConfig:
    """A data set from disk: the TRM/HRM builder layout, ``.npz`` or JSONL, one per split.

    Under ``path``: the TRM/HRM layout (``<split>/dataset.json`` and ``all__*.npy``),
    ``<split>.npz`` (``inputs``, ``labels``, optional ``puzzle_ids``) or
    ``<split>.jsonl`` (``{"input": [...], "label": [...]}`` per line); see ``file_formats``.

    Padding labels of the TRM/HRM layout (``ignore_label_id``, 0) are ignored in the loss and
    the accuracy; puzzle identifiers feed the model's puzzle-embedding prefix
    (``model.puzzle_emb_len`` > 0), one row per identifier.  ``vocab_size`` defaults to the
    TRM/HRM ``dataset.json`` value, else the largest token + 1.  ``augment`` applies the
    built-in Sudoku (tokens 1 blank, d+1 digit) or maze (dihedral) augmentation to training
    batches.  Shapes, vocabulary and identifiers are checked when the experiment is loaded."""

    path: str
    #: folder or file of the training split under path (null: evaluation only)
    train_split: str | None = "train"
    #: folder or file of the held-out split under path
    eval_split: str = "test"
    vocab_size: int | None = attrs.field(default=None, validator=_optional_positive)
    augment: Literal["none", "sudoku", "maze"] = "none"
    # evaluate on the first eval_limit examples (null: all of them)
    eval_limit: int | None = attrs.field(default=None, validator=_optional_positive)


def _read(cfg: FilesConfig) -> dict[str, Split]:
    root = Path(cfg.path).expanduser()
    splits = {"eval": read_split(locate(root, cfg.eval_split))}
    if cfg.train_split is not None:
        splits["train"] = read_split(locate(root, cfg.train_split))
    return splits


def _shape(cfg: FilesConfig, splits: dict[str, Split]) -> tuple[int, int, int]:
    """(vocab_size, seq_len, num_puzzle_ids) of the data set, every split checked."""
    first = splits.get("train", splits["eval"])
    seq_len = first.inputs.shape[1]
    vocab = cfg.vocab_size or first.vocab_size
    if vocab is None:
        vocab = 1 + max(int(max(s.inputs.max(), s.labels.max())) for s in splits.values())
    num_ids = max(
        [s.num_puzzle_ids or 0 for s in splits.values()]
        + [int(s.puzzle_ids.max(initial=0)) + 1 for s in splits.values()]
    )
    for split in splits.values():
        check_split(split, vocab, seq_len, num_ids)
    return vocab, seq_len, num_ids


def check_files(cfg: FilesConfig, env) -> list:
    try:
        _shape(cfg, _read(cfg))
    except DataError as exc:
        return [("path", str(exc))]
    return []


class FilesTask(ArrayTask):
    def __init__(self, cfg: FilesConfig):
        splits = _read(cfg)
        vocab, seq_len, num_ids = _shape(cfg, splits)
        self.splits = splits
        augment = {"none": None, "sudoku": _sudoku_augment, "maze": _maze_augment}[cfg.augment]
        super().__init__(vocab, seq_len, lambda: self._arrays(cfg), augment)
        self.num_puzzle_ids = num_ids

    def _arrays(self, cfg: FilesConfig) -> dict[str, np.ndarray]:
        ev = self.splits["eval"]
        n = len(ev.inputs) if cfg.eval_limit is None else cfg.eval_limit
        out = {
            "eval_inputs": ev.inputs[:n],
            "eval_labels": ev.labels[:n],
            "eval_puzzle_ids": ev.puzzle_ids[:n],
        }
        if "train" in self.splits:
            tr = self.splits["train"]
            out.update(
                train_inputs=tr.inputs, train_labels=tr.labels, train_puzzle_ids=tr.puzzle_ids
            )
        return out

    def train_batches(self, batch_size: int, seed: int):
        if "train" not in self.splits:
            raise DataError("this files task has no training split (train_split is null)")
        return super().train_batches(batch_size, seed)


def _side(x: np.ndarray) -> int:
    side = int(round(np.sqrt(x.shape[-1])))
    if side * side != x.shape[-1]:
        raise DataError(f"augment needs square grids; sequences have {x.shape[-1]} tokens")
    return side


def _sudoku_augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    if (y < 1).any():
        raise DataError("augment: sudoku needs every label to be a digit token (2 and up)")
    px, py = sudoku_gen.augment(x - 1, y - 1, _side(x), rng)
    return px + 1, py + 1


def _maze_augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    ax, ay, _ = maze_gen.augment(x, y, _side(x), rng)
    return ax, ay


def build_files(cfg: FilesConfig, ctx: BuildContext) -> FilesTask:
    return FilesTask(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "files", FilesConfig, build_files, check=check_files)
