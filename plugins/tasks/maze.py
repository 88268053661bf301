"""``maze``: find the shortest path through a generated maze."""

from __future__ import annotations

import attrs
import numpy as np
import torch
from ponderkit import Batch, BuildContext, datacache, hookimpl

from . import grid_text, maze_gen
from .arrays import ArrayTask
from .file_formats import DataError


@attrs.frozen
class MazeConfig:
    """NxN mazes: mark the unique shortest start-to-goal path.

    Tokens: 1 wall, 2 space, 3 start, 4 goal, 5 path (0 is padding, unused).
    Every maze's shortest path is longer than ``min_path_len`` moves ("hard" 30x30: > 110).
    No eval maze is a rotation or reflection of a training maze (checked when the set is
    built and loaded).  Training augments with the 8 dihedral transforms; evaluation also reports ``valid_path``,
    the share of predictions that are a valid start-to-goal path."""

    #: grid side (30: the TRM/HRM maze)
    size: int = attrs.field(default=30, validator=attrs.validators.ge(4))
    min_path_len: int = attrs.field(default=110, validator=attrs.validators.ge(1))
    #: training mazes generated
    train_size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    #: held-out mazes generated
    eval_size: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    #: train on a random one of the 8 dihedral transforms of each maze
    augment: bool = True
    #: seed of the generated data set (the data, not the model)
    data_seed: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: processes generating the data set (null: the CPU count)
    workers: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )


def load_maze(cfg: MazeConfig) -> dict[str, np.ndarray]:
    n = cfg.train_size + cfg.eval_size
    params = {
        "size": cfg.size,
        "min_path_len": cfg.min_path_len,
        "n": n,
        "seed": cfg.data_seed,
        "version": 2,
    }

    def build() -> dict[str, np.ndarray]:
        print(
            f"generating {n} {cfg.size}x{cfg.size} mazes (path > {cfg.min_path_len}; "
            "cached for next time) ...",
            flush=True,
        )
        inputs, targets = maze_gen.generate(
            n, cfg.size, cfg.min_path_len, cfg.data_seed, cfg.workers
        )
        return {"inputs": inputs, "targets": targets}

    arrays = datacache.cached_arrays("maze", params, build)
    t = cfg.train_size
    leaked = maze_gen.leaks(arrays["inputs"][:t], arrays["inputs"][t:], cfg.size)
    if leaked:
        raise DataError(
            f"maze set {params}: eval maze {leaked[0]} (and {len(leaked) - 1} more) is a "
            "rotation or reflection of a training maze; delete its cache entry to regenerate"
        )
    return {
        "train_inputs": arrays["inputs"][:t],
        "train_labels": arrays["targets"][:t],
        "eval_inputs": arrays["inputs"][t:],
        "eval_labels": arrays["targets"][t:],
    }


class MazeTask(ArrayTask):
    """Maze arrays, typed and read as ASCII (:class:`ponderkit.GridPuzzle`), walls drawn as
    dark squares (``ColouredGrid``)."""

    grid_colours = {"#": "#404040"}

    def __init__(self, cfg: MazeConfig):
        def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
            ax, ay, _ = maze_gen.augment(x, y, cfg.size, rng)
            return ax, ay

        super().__init__(
            6, cfg.size * cfg.size, lambda: load_maze(cfg), augment if cfg.augment else None
        )
        self.size = cfg.size
        self.grid_shape = self.grid_boxes = (cfg.size, cfg.size)

    def parse_grid(self, text: str) -> np.ndarray:
        return grid_text.parse_maze(text, self.size)

    def grid_cells(self, tokens: np.ndarray) -> list[str]:
        return grid_text.maze_cells(tokens)

    def check_answer(self, inputs: np.ndarray, prediction: np.ndarray) -> bool:
        return maze_gen.is_shortest_path(inputs, prediction, self.size)

    def score(self, predictions: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        preds = predictions.cpu().numpy()
        inputs = batch["inputs"].cpu().numpy()
        valid = [
            maze_gen.is_valid_path(i, p, self.size) for i, p in zip(inputs, preds, strict=True)
        ]
        return {"valid_path": torch.tensor(valid, dtype=torch.float32)}


def build_maze(cfg: MazeConfig, ctx: BuildContext) -> MazeTask:
    return MazeTask(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "maze", MazeConfig, build_maze)
