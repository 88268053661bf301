"""Reasoning traces: a trained model's answer step by step, as a PNG sheet and an animated GIF.

For a task that reads and shows grids (:class:`~ponderkit.GridPuzzle`: Sudoku, mazes), one
puzzle goes through the model's own step loop (:meth:`ReasoningModel.unroll`) for all
``halting.max_steps`` steps; each step's predicted grid is drawn with the cells that changed
since the previous step highlighted, the halting signals of that step, and the step where the
halting policy stops the sample (what ``eval --early-exit`` would keep).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ..errors import InputError
from ..interfaces import GridPuzzle, WeighsSteps

CHANGED = "#ffe08a"  # background of a cell that changed since the previous step
WALL = "#404040"
GIVEN, PREDICTED, WRONG = "black", "#1f5fbf", "#c62828"


@attrs.frozen
class Step:
    prediction: np.ndarray  # (T,) tokens
    signals: dict[str, float]  # this sample's halting signals after the step
    changed: np.ndarray  # (T,) bool, vs. the previous step (vs. the input for the first)


@attrs.frozen
class Trace:
    inputs: np.ndarray  # (T,)
    labels: np.ndarray | None  # (T,) when known
    steps: tuple[Step, ...]
    halted_at: int  # 1-based step where the halting policy stops this sample

    @property
    def answer(self) -> np.ndarray:
        """The prediction the model gives with early exit: the halting step's."""
        return self.steps[self.halted_at - 1].prediction


def grid_task(task: Any, what: str) -> GridPuzzle:
    """``task`` as a :class:`GridPuzzle`, or an InputError naming ``what`` needs one."""
    if not isinstance(task, GridPuzzle):
        raise InputError(
            f"{what} needs a task that reads and shows grids (sudoku, maze); "
            f"{type(task).__name__} does not (it lacks ponderkit.GridPuzzle)"
        )
    return task


@torch.no_grad()
def trace(
    run: Any, inputs: np.ndarray, labels: np.ndarray | None = None, puzzle_id: int = 0
) -> Trace:
    """Run one puzzle (``inputs`` (T,) tokens) through ``run``'s model (a
    :class:`~ponderkit.engine.evaluate.LoadedRun`) step by step."""
    model = run.model
    batch = {"inputs": torch.as_tensor(np.asarray(inputs), dtype=torch.long)[None]}
    if model.puzzle_emb is not None:
        batch["puzzle_ids"] = torch.tensor([puzzle_id], dtype=torch.long)
    batch = run.to_device(batch)
    halting = model.halting
    carry, x, ctx = model.start(batch)
    previous = np.asarray(inputs)
    steps, history, halted_at = [], [], 0
    with run.autocast():
        for n, (_, logits, signals) in enumerate(
            model.unroll(carry, x, ctx, halting.max_steps), start=1
        ):
            prediction = logits[0].argmax(-1).cpu().numpy()
            history.append(signals)
            if isinstance(halting, WeighsSteps):
                stop = bool(halting.halted_after(history)[0])
            else:
                count = torch.full((1,), n, dtype=torch.long, device=x.device)
                stop = bool(halting.should_halt(signals, count, False)[0])
            if stop and not halted_at:
                halted_at = n
            shown = {k: float(v[0].float().mean()) for k, v in signals.items() if v.ndim >= 1}
            steps.append(Step(prediction, shown, prediction != previous))
            previous = prediction
    return Trace(np.asarray(inputs), labels, tuple(steps), halted_at or len(steps))


def eval_sample(run: Any, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(inputs, labels, puzzle id) of held-out sample ``index`` of ``run``'s task."""
    if index < 0:
        raise InputError(f"--sample must be 0 or more, got {index}")
    seen = 0
    for batch in run.task.eval_batches(256):
        n = batch["inputs"].shape[0]
        if index < seen + n:
            i = index - seen
            ids = batch.get("puzzle_ids")
            return (
                batch["inputs"][i].numpy(),
                batch["labels"][i].numpy(),
                int(ids[i]) if ids is not None else 0,
            )
        seen += n
    raise InputError(f"--sample {index}: the held-out set has {seen} samples (0..{seen - 1})")


def _title(n: int, step: Step, tr: Trace, correct: Callable[[np.ndarray], bool] | None) -> str:
    signals = " ".join(f"{k}={v:.2f}" for k, v in step.signals.items())
    mark = "  HALT" if n == tr.halted_at else ""
    ok = ""
    if correct is not None:
        ok = "  solved" if correct(step.prediction) else ""
    return f"step {n}{mark}{ok}\n{signals or 'no halting signals'}  ({int(step.changed.sum())} changed)"


def _draw(ax: Any, task: GridPuzzle, tr: Trace, step: Step, title: str) -> None:
    rows, cols = task.grid_shape
    cells = task.grid_cells(step.prediction)
    givens = task.grid_cells(tr.inputs)
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    font = max(4.0, min(12.0, 120.0 / max(rows, cols)))
    for i, text in enumerate(cells):
        r, c = divmod(i, cols)
        face = WALL if text == "#" else CHANGED if step.changed[i] else "white"
        ax.add_patch(_rect(c, r, face))
        if text in ("", ".", "#"):
            continue
        colour = GIVEN if givens[i] == text else PREDICTED
        if tr.labels is not None and step.prediction[i] != tr.labels[i]:
            colour = WRONG
        ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=font, color=colour)
    box = task.grid_boxes
    for r in range(rows + 1):
        ax.plot([0, cols], [r, r], color="black", lw=1.2 if r % box[0] == 0 else 0.3)
    for c in range(cols + 1):
        ax.plot([c, c], [0, rows], color="black", lw=1.2 if c % box[1] == 0 else 0.3)


def _rect(c: int, r: int, face: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((c, r), 1, 1, facecolor=face, edgecolor="none")


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_sheet(task: GridPuzzle, tr: Trace, path: Path, label: str = "", columns: int = 4) -> Path:
    """One PNG with every step's grid (the halting step marked HALT)."""
    plt = _matplotlib()
    n = len(tr.steps)
    cols = min(columns, n + 1)
    rows = -(-(n + 1) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.0 * cols, 3.4 * rows + 0.5), squeeze=False, layout="constrained"
    )
    correct = _checker(task, tr)
    blank = np.zeros_like(tr.inputs, dtype=bool)
    for k, ax in enumerate(axes.ravel()):
        if k == 0:  # the puzzle itself
            _draw(ax, task, tr, Step(tr.inputs, {}, blank), "input\n")
        elif k <= n:
            _draw(ax, task, tr, tr.steps[k - 1], _title(k, tr.steps[k - 1], tr, correct))
        else:
            ax.axis("off")
    head = f"{label}: " if label else ""
    wrong = ", red = wrong" if tr.labels is not None else ""
    fig.suptitle(
        f"{head}halted at step {tr.halted_at} of {n}\nyellow = changed since the previous step, "
        f"blue = predicted{wrong}",
        fontsize=9,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_gif(task: GridPuzzle, tr: Trace, path: Path, ms_per_step: int = 700) -> Path:
    """An animated GIF, one frame per step."""
    from PIL import Image

    plt = _matplotlib()
    correct = _checker(task, tr)
    frames = []
    for k, step in enumerate(tr.steps):
        fig, ax = plt.subplots(figsize=(4, 4.4), layout="constrained")
        _draw(ax, task, tr, step, _title(k + 1, step, tr, correct))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        buf.seek(0)
        frames.append(Image.open(buf).convert("RGB"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path, save_all=True, append_images=frames[1:], duration=ms_per_step, loop=0, disposal=1
    )
    return path


def _checker(task: GridPuzzle, tr: Trace) -> Callable[[np.ndarray], bool]:
    return lambda prediction: bool(task.check_answer(tr.inputs, prediction))


def variant_sheets(
    groups: dict[str, list[Any]],
    registry: Any,
    out: Path,
    warn: Callable[[str], None] | None = None,
    sample: int = 0,
) -> list[Path]:
    """One trace sheet per variant (its first complete seed with final weights) on the same
    held-out puzzle, for the ablation report; nothing for a task without grids or a variant
    whose weights are missing (a report without them is still a report)."""
    from ..engine.evaluate import load_model
    from ..errors import PonderkitError

    written = []
    for variant, runs in groups.items():
        run_dir = next(
            (r.path for r in runs if (r.path / "checkpoints/final/model.safetensors").exists()),
            None,
        )
        if run_dir is None:
            continue
        try:
            run = load_model(run_dir, registry, device="cpu")
            if not isinstance(run.task, GridPuzzle):
                return []  # every variant shares the task
            inputs, labels, pid = eval_sample(run, sample)
            tr = trace(run, inputs, labels, pid)
            label = f"{variant} ({run_dir.name}) held-out sample {sample}"
            written.append(write_sheet(run.task, tr, out / f"trace-{variant}.png", label=label))
        except (PonderkitError, OSError, RuntimeError) as exc:
            if warn:
                warn(f"no trace sheet for {variant}: {exc}")
    return written
