"""Evaluating a model on its task's held-out set, and loading a finished run to evaluate.

``load_model`` is how everything after training gets a run's model (``eval``, run analysis,
reports): the resolved config, the task, and the model with a checkpoint's evaluation weights
(EMA's where the run kept an average), built through one build context and without any of the
training machinery (optimizer, schedule, callbacks).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from ..contract.errors import ConfigError, InputError, Issue
from ..contract.experiment import ExperimentConfig, load_experiment
from ..contract.interfaces import Batch, Task
from ..contract.yamlio import OVERRIDE_ORIGIN
from .build import build_components
from .device import autocast, resolve_device, to_device
from .distributed import Distributed
from .generate import SequenceTask, free_running_metrics
from .losses import accuracy
from .model import ReasoningModel
from .runs import atomic_write, checkpoint_in

#: where a run keeps its latest evaluation's per-puzzle outcomes (read by reports)
PUZZLES_FILE = "eval/puzzles.npz"


class PuzzleOutcomes:
    """Collects one evaluation's per-puzzle exact match (0/1) and token accuracy, in the order
    of the task's evaluation batches, and a digest of the puzzles evaluated (their inputs and
    labels, in that order): two runs with the same digest saw the same puzzles and can be
    compared puzzle by puzzle."""

    def __init__(self) -> None:
        self.exact = np.zeros(0, np.uint8)
        self.token_acc = np.zeros(0, np.float32)
        self.eval_set = ""
        self._parts: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._digest = hashlib.blake2b(digest_size=12)
        self._count = 0

    def see(self, batch: Batch) -> int:
        """Count and fingerprint one evaluation batch (every rank sees every batch); returns
        the position of its first sample in the evaluation set."""
        offset = self._count
        for key in ("inputs", "labels"):
            data = batch[key].detach().cpu().contiguous()
            self._digest.update(str(tuple(data.shape)).encode() + data.numpy().tobytes())
        self._count += batch["inputs"].shape[0]
        return offset

    def add(self, offset: int, exact: Tensor, token_acc: Tensor) -> None:
        self._parts.append(
            (offset, exact.detach().cpu().numpy(), token_acc.detach().float().cpu().numpy())
        )

    def finish(self, dist: Distributed | None) -> None:
        exact, token = np.zeros(self._count, np.float64), np.zeros(self._count, np.float64)
        for offset, e, t in self._parts:
            exact[offset : offset + len(e)] = e
            token[offset : offset + len(t)] = t
        if dist is not None:  # each rank filled its own batches, zeros elsewhere: add them up
            summed, _ = dist.sum_totals({"exact": exact, "token_acc": token}, 0)  # type: ignore[arg-type]
            exact, token = summed["exact"], summed["token_acc"]
        self.exact, self.token_acc = exact.round().astype(np.uint8), token.astype(np.float32)
        self.eval_set = self._digest.hexdigest()
        self._parts = []


def write_puzzle_outcomes(
    run_dir: Path | None, step: int, outcomes: Mapping[str, PuzzleOutcomes]
) -> None:
    """Write ``eval/puzzles.npz`` atomically (rank 0: ``run_dir`` is None elsewhere): for each
    weight set (``""`` the evaluation weights, ``raw`` the trained ones where an average was
    evaluated too) ``<prefix>exact_acc`` (N,) uint8 and ``<prefix>token_acc`` (N,) float32,
    plus ``step`` and the ``eval_set`` digest. Each evaluation replaces the previous one, so the
    file holds the final evaluation's outcomes once a run ends, with its step."""
    if run_dir is None or not outcomes:
        return
    arrays: dict[str, np.ndarray] = {"step": np.asarray(step, np.int64)}
    for label, o in outcomes.items():
        prefix = f"{label}_" if label else ""
        arrays[f"{prefix}exact_acc"], arrays[f"{prefix}token_acc"] = o.exact, o.token_acc
        arrays["eval_set"] = np.asarray(o.eval_set)
    path = Path(run_dir) / PUZZLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


@torch.no_grad()
def evaluate(
    model: ReasoningModel,
    task: Task,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    early_exit: bool = False,
    dist: Distributed | None = None,
    puzzles: PuzzleOutcomes | None = None,
) -> dict[str, float]:
    """Token and exact accuracy, mean steps and the task's own metrics on the held-out set,
    each averaged over samples; on a serialized task also the free-running (generated) token
    and exact accuracy. Under ``torchrun`` (``dist``) each rank evaluates its share of the
    batches and all ranks get the totals. ``puzzles`` collects each sample's outcome."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for index, batch in enumerate(task.eval_batches(batch_size)):
        offset = puzzles.see(batch) if puzzles is not None else 0
        if dist is not None and not dist.owns_eval_batch(index):
            continue
        batch = to_device(batch, device)
        with autocast(precision, device):
            logits, steps = model.infer(batch, early_exit=early_exit)
        correct, exact, valid = accuracy(logits, batch["labels"])
        per_sample: dict[str, Tensor] = {
            "token_acc": correct.sum(-1) / valid.sum(-1).clamp(min=1),
            "exact_acc": exact.float(),
            "steps": steps.float(),
            **task.score(logits.argmax(-1), batch),
        }
        if puzzles is not None:
            puzzles.add(offset, exact, per_sample["token_acc"])
        if isinstance(task, SequenceTask) and task.free_running_eval:
            with autocast(precision, device):  # the output generated, not teacher-forced
                per_sample.update(free_running_metrics(model, batch, task.prompt_len))
        for k, v in per_sample.items():
            totals[k] = totals.get(k, 0.0) + float(v.float().sum())
        count += batch["inputs"].shape[0]
    model.train(was_training)
    if dist is not None:
        totals, count = dist.sum_totals(totals, count)
    if puzzles is not None:
        puzzles.finish(dist)
    return {k: v / max(count, 1) for k, v in totals.items()}


@attrs.frozen
class LoadedRun:
    """A finished run's config, task and model (evaluation weights, in eval mode)."""

    config: ExperimentConfig
    task: Task
    model: ReasoningModel
    device: torch.device

    def evaluate(self, early_exit: bool = False) -> dict[str, float]:
        train = self.config.train
        return evaluate(
            self.model,
            self.task,
            batch_size=train.eval_batch_size,
            device=self.device,
            precision=train.precision,
            early_exit=early_exit,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.config.train.precision, self.device)

    def to_device(self, batch: Batch) -> Batch:
        return to_device(batch, self.device)

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """Nothing to swap: a run's saved weights are already its evaluation weights (EMA's)."""
        return contextlib.nullcontext()


#: Fields an evaluation may change (``ponderkit eval RUN key=value``): how long and when the
#: model stops, and how evaluation runs. Everything else shaped the trained weights.
EVAL_FIELDS = (
    "model.halting.*",
    "model.recursion.H_cycles",
    "model.recursion.L_cycles",
    "train.eval_batch_size",
    "train.device",
    "train.precision",
    "train.threads",
)


def eval_override_problem(override: str) -> str | None:
    """Why ``override`` (``key.path=value``) cannot change an evaluation, or None."""
    key = override.partition("=")[0].strip()
    for allowed in EVAL_FIELDS:
        if allowed.endswith(".*"):
            if key.startswith(allowed[:-1]) and key != allowed[:-2] + ".name":
                return None
        elif key == allowed:
            return None
    return (
        f"{key!r} is a training-only field (it shaped the trained weights); evaluation may "
        f"change {', '.join(EVAL_FIELDS)}"
    )


def load_model(
    run_dir: str | Path,
    registry: Any,
    checkpoint: str = "final",
    device: str | None = None,
    overrides: Sequence[str] = (),
) -> LoadedRun:
    """The model of ``run_dir`` with ``checkpoint``'s evaluation weights, on ``device`` (the
    run's ``train.device`` when None). ``overrides`` change evaluation-time fields of the run's
    config (:data:`EVAL_FIELDS`); any other is refused before anything is built."""
    from .runs import load_checkpoint

    run_dir = Path(run_dir)
    ckpt = checkpoint_in(run_dir, checkpoint)  # a name inside the run, nothing outside it
    if not (run_dir / "config.yaml").exists():
        raise InputError(f"{run_dir} is not a run directory (no config.yaml)")
    if not (ckpt / "model.safetensors").exists():
        found = (
            sorted(p.name for p in (run_dir / "checkpoints").glob("*"))
            if (run_dir / "checkpoints").exists()
            else []
        )
        raise InputError(
            f"no checkpoint {checkpoint!r} in {run_dir} (found: {', '.join(found) or 'none'})"
        )
    problems = [p for p in map(eval_override_problem, overrides) if p]
    if problems:
        raise ConfigError([Issue((), p, file=OVERRIDE_ORIGIN) for p in problems])
    config = load_experiment(run_dir / "config.yaml", overrides, registry=registry).config
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.seed)
    built = build_components(config, registry, training=False)
    weights, _ = load_checkpoint(ckpt)
    try:
        built.model.load_state_dict(weights)
    except RuntimeError as exc:
        if not overrides:
            raise
        first = str(exc).strip().splitlines()[-1].strip()
        raise InputError(
            f"{run_dir}: the overrides {' '.join(overrides)} change the model's parameters "
            f"({first}); the trained weights do not fit"
        ) from None
    target = resolve_device(device or config.train.device)
    return LoadedRun(config, built.task, built.model.to(target).eval(), target)
