"""Reasoning traces: a trained model's answer step by step, as a PNG sheet and an animated GIF.

For a task whose samples are grids (:class:`~ponderkit.GridView`: Sudoku, mazes, ARC), one
puzzle goes through the model's own step loop (:meth:`ReasoningModel.unroll`) for all
``halting.max_steps`` steps; each step's predicted grid is drawn with the cells that changed
since the previous step marked, the halting signals of that step, and the step where the
halting policy stops the sample (what ``eval --early-exit`` would keep). Cells are text, or
squares of a colour (:class:`~ponderkit.ColouredGrid`: ARC's palette); a grid padded to a
larger canvas is cropped to its own size (:class:`~ponderkit.PaddedGrid`: ARC's).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ..contract.errors import InputError
from ..contract.interfaces import ColouredGrid, GridPuzzle, GridView, PaddedGrid, WeighsSteps

CHANGED = "#ffe08a"  # background of a text cell that changed since the previous step
OUTSIDE = "#ececec"  # the part of a panel outside a smaller grid (ARC's)
EXPECTED = "#7b1fa2"  # outline of the expected output's size
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


def grid_task(run: Any, what: str, typed: bool = False) -> Any:
    """``run``'s task as a :class:`GridView` (a :class:`GridPuzzle` when ``typed``: puzzles
    read from text), or an InputError naming ``what`` needs one."""
    task, name = run.task, run.config.task.name
    if typed and not isinstance(task, GridPuzzle):
        raise InputError(
            f"{what} needs a task that reads puzzles typed as text (sudoku, maze); task "
            f"{name!r} has no text format (it lacks ponderkit.GridPuzzle)"
        )
    if not isinstance(task, GridView):
        raise InputError(
            f"{what} needs a task whose samples are grids (sudoku, maze, arc); task {name!r} "
            "is not drawn as a grid (it lacks ponderkit.GridView)"
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


def grid_extent(task: GridView, tokens: np.ndarray) -> tuple[int, int]:
    """(rows, cols) of the grid ``tokens`` hold: all of ``grid_shape`` unless the task pads
    its grids (:class:`~ponderkit.PaddedGrid`)."""
    if isinstance(task, PaddedGrid):
        rows, cols = task.grid_extent(tokens)
        return int(rows), int(cols)
    return task.grid_shape


def shown_grid(task: GridView, tokens: np.ndarray) -> list[list[str]]:
    """The cells of the grid ``tokens`` hold, row by row, cropped to its extent."""
    rows, cols = grid_extent(task, tokens)
    width = task.grid_shape[1]
    cells = task.grid_cells(tokens)
    return [cells[r * width : r * width + cols] for r in range(rows)]


def solves(task: GridView, tr: Trace, prediction: np.ndarray) -> bool | None:
    """Whether ``prediction`` solves ``tr``'s puzzle: by the rules for a
    :class:`~ponderkit.GridPuzzle`, else by equalling the held-out label's grid; None when
    neither can tell."""
    if isinstance(task, GridPuzzle):
        return bool(task.check_answer(tr.inputs, prediction))
    if tr.labels is not None:
        return shown_grid(task, prediction) == shown_grid(task, tr.labels)
    return None


def _size(extent: tuple[int, int]) -> str:
    return f"{extent[0]}x{extent[1]}"


def _title(n: int, step: Step, tr: Trace, task: GridView, frame: tuple[int, int]) -> str:
    signals = " ".join(f"{k}={v:.2f}" for k, v in step.signals.items())
    mark = "  HALT" if n == tr.halted_at else ""
    ok = "  solved" if solves(task, tr, step.prediction) else ""
    size = f"  {_size(grid_extent(task, step.prediction))}" if isinstance(task, PaddedGrid) else ""
    width = task.grid_shape[1]
    changed = sum(
        int(step.changed[r * width : r * width + frame[1]].sum()) for r in range(frame[0])
    )
    return f"step {n}{mark}{ok}{size}\n{signals or 'no halting signals'}  ({changed} changed)"


def _frame(task: GridView, tr: Trace) -> tuple[int, int]:
    """The area every panel of ``tr`` shows: the largest extent of its grids (at least 1x1),
    so that all panels and frames share one scale."""
    grids = [tr.inputs, *(s.prediction for s in tr.steps)]
    if tr.labels is not None:
        grids.append(tr.labels)
    extents = [grid_extent(task, g) for g in grids]
    return max(1, *(e[0] for e in extents)), max(1, *(e[1] for e in extents))


def _draw(
    ax: Any,
    task: GridView,
    tr: Trace,
    step: Step,
    title: str,
    frame: tuple[int, int],
    given: bool = False,
) -> set[str]:
    """Draw ``step``'s grid on ``ax`` (a ``given`` one, the input or the expected output,
    without marks of wrong cells); returns which marks it used (for the legend)."""
    import matplotlib.patheffects as pe

    width = task.grid_shape[1]
    rows, cols = grid_extent(task, step.prediction)
    colours = task.grid_colours if isinstance(task, ColouredGrid) else {}
    cells = task.grid_cells(step.prediction)
    givens = task.grid_cells(tr.inputs)
    labels = None if given else tr.labels
    ax.set_xlim(0, frame[1])
    ax.set_ylim(frame[0], 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    ax.spines[:].set_visible(False)  # the grid draws its own border; the expected size's shows
    if (rows, cols) != frame:  # the part of the frame this grid does not cover
        ax.add_patch(_rect(0, 0, OUTSIDE, frame[1], frame[0]))
    font = max(4.0, min(12.0, 120.0 / max(frame)))
    outline = [pe.withStroke(linewidth=2.5, foreground="black")]
    used = set()
    for r in range(rows):
        for c in range(cols):
            i = r * width + c
            text = cells[i]
            wrong = labels is not None and step.prediction[i] != labels[i]
            if text in colours:
                used.add("colour")
                ax.add_patch(_rect(c, r, colours[text]))
                if step.changed[i]:
                    used.add("dot")
                    ax.plot(c + 0.15, r + 0.15, "o", ms=font * 0.6, mfc="white", mec="black")
                if wrong:
                    used.add("cross")
                    for dy in (0.3, 0.7):
                        ax.plot(
                            [c + 0.3, c + 0.7], [r + dy, r + 1 - dy], color="white", lw=1.5,
                            path_effects=outline,
                        )  # fmt: skip
                continue
            ax.add_patch(_rect(c, r, CHANGED if step.changed[i] else "white"))
            used.add("yellow" if step.changed[i] else "text")
            if text in ("", "."):
                continue
            colour = GIVEN if givens[i] == text else PREDICTED
            if wrong:
                colour = WRONG
                used.add("red")
            elif colour == PREDICTED and not given:
                used.add("blue")
            ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=font, color=colour)
    if rows == 0 or cols == 0:
        ax.text(frame[1] / 2, frame[0] / 2, "no grid", ha="center", va="center", color="gray")
    thin = "#808080" if colours else "black"
    box = task.grid_boxes
    for r in range(rows + 1):
        thick = r % box[0] == 0 or r == rows
        ax.plot([0, cols], [r, r], color="black" if thick else thin, lw=1.2 if thick else 0.3)
    for c in range(cols + 1):
        thick = c % box[1] == 0 or c == cols
        ax.plot([c, c], [0, rows], color="black" if thick else thin, lw=1.2 if thick else 0.3)
    expected = grid_extent(task, labels) if labels is not None else (rows, cols)
    if expected != (rows, cols):  # a grid of the wrong size: outline the expected one
        used.add("dashed")
        ax.add_patch(_rect(0, 0, "none", expected[1], expected[0], edge=EXPECTED, ls="--", lw=1.5))
    return used


def _rect(
    c: float, r: float, face: str, w: float = 1, h: float = 1, edge: str = "none", **kw: Any
) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((c, r), w, h, facecolor=face, edgecolor=edge, **kw)


def _legend(used: set[str]) -> str:
    marks = [
        ("yellow", "yellow = changed since the previous step"),
        ("dot", "dot in the corner = changed since the previous step"),
        ("blue", "blue = predicted"),
        ("red", "red = wrong"),
        ("cross", "cross = wrong"),
        ("dashed", "dashed = the expected grid's size"),
    ]
    return ", ".join(text for key, text in marks if key in used)


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _givens(task: GridView, tr: Trace) -> list[tuple[np.ndarray, str]]:
    """The panels before the steps: the input and, where the rules cannot judge an answer,
    the held-out output it is scored against."""
    blank = np.zeros_like(tr.inputs, dtype=bool)
    sized = isinstance(task, PaddedGrid)
    panels = [(tr.inputs, "input" + (f" {_size(grid_extent(task, tr.inputs))}" if sized else ""))]
    if tr.labels is not None and not isinstance(task, GridPuzzle):
        size = f" {_size(grid_extent(task, tr.labels))}" if sized else ""
        panels.append((tr.labels, f"expected output{size}"))
    return [(Step(tokens, {}, blank), title + "\n") for tokens, title in panels]


def write_sheet(task: GridView, tr: Trace, path: Path, label: str = "", columns: int = 4) -> Path:
    """One PNG with the input (and, for a task without rules, the expected output) and every
    step's grid (the halting step marked HALT)."""
    plt = _matplotlib()
    givens = _givens(task, tr)
    n = len(tr.steps)
    total = len(givens) + n
    cols = min(columns, total)
    rows = -(-total // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.0 * cols, 3.4 * rows + 0.5), squeeze=False, layout="constrained"
    )
    frame = _frame(task, tr)
    used: set[str] = set()
    for k, ax in enumerate(axes.ravel()):
        if k < len(givens):
            step, title = givens[k]
            used |= _draw(ax, task, tr, step, title, frame, given=True)
        elif k < total:
            i = k - len(givens) + 1
            step = tr.steps[i - 1]
            used |= _draw(ax, task, tr, step, _title(i, step, tr, task, frame), frame)
        else:
            ax.axis("off")
    head = f"{label}: " if label else ""
    fig.suptitle(f"{head}halted at step {tr.halted_at} of {n}\n{_legend(used)}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_gif(task: GridView, tr: Trace, path: Path, ms_per_step: int = 700) -> Path:
    """An animated GIF, one frame per step; beside it, for a task whose answers the rules cannot
    judge (ARC), the input and the expected output (a Sudoku's step shows its givens)."""
    from PIL import Image

    plt = _matplotlib()
    frame = _frame(task, tr)
    context = [] if isinstance(task, GridPuzzle) else _givens(task, tr)
    frames = []
    for k, step in enumerate(tr.steps):
        fig, axes = plt.subplots(
            1, len(context) + 1, figsize=(4 * (len(context) + 1), 4.6), layout="constrained"
        )
        axes = np.atleast_1d(axes)
        for ax, (given, title) in zip(axes, context, strict=False):
            _draw(ax, task, tr, given, title, frame, given=True)
        _draw(axes[-1], task, tr, step, _title(k + 1, step, tr, task, frame), frame)
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


def variant_sheets(
    groups: dict[str, list[Any]],
    registry: Any,
    out: Path,
    warn: Callable[[str], None] | None = None,
    sample: int = 0,
) -> list[Path]:
    """One trace sheet per variant (its first complete seed with final weights) on the same
    held-out puzzle, for the ablation report; nothing for a task without grids or a variant
    whose weights are missing (a report without them is still a report), unless its sheet was
    drawn earlier, while they were there: results kept without weights keep their sheets."""
    from ..contract.errors import PonderkitError
    from ..engine.evaluate import load_model

    written = []
    for variant, runs in groups.items():
        run_dir = next(
            (r.path for r in runs if (r.path / "checkpoints/final/model.safetensors").exists()),
            None,
        )
        if run_dir is None:
            kept = out / f"trace-{variant}.png"
            if kept.is_file():  # drawn while the weights were there (results copied without)
                written.append(kept)
            continue
        try:
            # on the GPU where there is one: seed 002's maze model (6.8M parameters, 16 steps
            # of H=3 x L=6 over 900 cells) took 49 s on 2 CPU cores (`ponderkit trace`)
            run = load_model(run_dir, registry, device="auto")
            if not isinstance(run.task, GridView):
                return []  # every variant shares the task
            inputs, labels, pid = eval_sample(run, sample)
            tr = trace(run, inputs, labels, pid)
            label = f"{variant} ({run_dir.name}) held-out sample {sample}"
            written.append(write_sheet(run.task, tr, out / f"trace-{variant}.png", label=label))
        except (PonderkitError, OSError, RuntimeError) as exc:
            if warn:
                warn(f"no trace sheet for {variant}: {exc}")
    return written
