"""``tensorboard``: every metrics record of a run also as TensorBoard scalars, the resolved
config as text, and histograms of expert usage and of halting steps.

``metrics.jsonl`` stays the source of truth (always written); this callback mirrors each
record it receives through the ``on_log`` hook. It needs the optional extra
``pip install 'ponderkit[tensorboard]'`` (torch's ``SummaryWriter`` writes the event files),
but only to train: the package is checked when the callback is built, so ``config``, ``diff``
and ``eval`` of a run trained with it work without it.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import attrs
from ponderkit import BuildContext, callback_hook, hookimpl


@attrs.frozen
class TensorBoardConfig:
    """Write every logged metric as a TensorBoard scalar (tag = metric name) under the run.

    ``dir`` is relative to the run directory (``tensorboard`` by default):
    ``tensorboard --logdir runs/`` then shows every run. Needs ``ponderkit[tensorboard]``."""

    dir: str = attrs.field(
        default="tensorboard",
        metadata={"help": "event-file folder, relative to the run directory"},
    )
    histograms: bool = attrs.field(
        default=True,
        metadata={
            "help": "at each evaluation: histograms of expert usage (every router's "
            "activation counts by expert) and of the steps each held-out sample halts at"
        },
    )
    halting_samples: int = attrs.field(
        default=256,
        validator=attrs.validators.ge(0),
        metadata={"help": "held-out samples whose halting steps are histogrammed (0: none)"},
    )


class TensorBoardLogger:
    """A logger: ``on_log(trainer, record)`` for each record written to metrics.jsonl."""

    def __init__(self, cfg: TensorBoardConfig):
        self.cfg = cfg
        self.writer: Any = None

    @callback_hook
    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        if trainer.run_dir is None:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(trainer.run_dir) / self.cfg.dir))
            self.writer.add_text("config", _config_text(trainer.config), int(record["step"]))
        step = int(record["step"])
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if self.cfg.histograms and any(k.startswith("eval/") for k in record):
            self._histograms(trainer, step)
        self.writer.flush()  # a run stopped at any point has its scalars on disk

    def _histograms(self, trainer: Any, step: int) -> None:
        """Expert usage by router (counts by expert index since the router last reset them)
        and the halting steps of the first ``halting_samples`` held-out samples."""
        import torch

        for name, module in trainer.model.named_modules():
            counts = getattr(module, "activation_counts", None)
            if isinstance(counts, torch.Tensor) and counts.numel() and counts.sum() > 0:
                _index_histogram(self.writer, f"experts/{name}", counts.double().cpu(), step)
        if self.cfg.halting_samples:
            steps = halting_steps(trainer, self.cfg.halting_samples)
            if steps is not None and steps.numel():
                limit = int(trainer.model.halting.max_steps)
                hist = torch.bincount(steps.long().cpu(), minlength=limit + 1)[1:].double()
                _index_histogram(self.writer, "halting/steps", hist, step, first=1)


def halting_steps(trainer: Any, samples: int) -> Any:
    """The step at which each of the first ``samples`` held-out samples halts (early exit:
    where its halting policy says) under the weights being trained (not an EMA copy), as a
    1-D tensor; None when the task has no held-out set."""
    import torch

    model, got = trainer.model, []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in trainer.task.eval_batches(min(samples, 256)):
                batch = trainer.to_device(batch)
                _, steps = model.infer(batch, early_exit=True)
                got.append(steps.reshape(-1))
                if sum(len(s) for s in got) >= samples:
                    break
    finally:
        model.train(was_training)
    return torch.cat(got)[:samples] if got else None


def _index_histogram(writer: Any, tag: str, counts: Any, step: int, first: int = 0) -> None:
    """``counts[i]`` as the height of the bucket of integer ``first + i`` (an expert index,
    a number of steps): TensorBoard's raw histogram with one bucket per integer."""
    values = counts.tolist()
    index = [first + i for i in range(len(values))]
    total = sum(values)
    writer.add_histogram_raw(
        tag,
        min=float(index[0]),
        max=float(index[-1]),
        num=float(total),
        sum=float(sum(i * c for i, c in zip(index, values, strict=True))),
        sum_squares=float(sum(i * i * c for i, c in zip(index, values, strict=True))),
        bucket_limits=[i + 0.5 for i in index],  # bucket i holds (i - 0.5, i + 0.5]
        bucket_counts=values,
        global_step=step,
    )


def _config_text(config: Any) -> str:
    """The resolved config as YAML in a Markdown code block (TensorBoard renders Markdown)."""
    import yaml
    from ponderkit import unstructure

    text = yaml.safe_dump(unstructure(config), sort_keys=False)
    return "\n".join("    " + line for line in text.splitlines())  # indented: a code block


def installed(name: str) -> bool:
    """Whether ``name`` can be imported (a ``None`` in ``sys.modules`` blocks it, as tests do)."""
    if name in sys.modules and sys.modules[name] is None:
        return False
    return importlib.util.find_spec(name) is not None


MISSING = (
    "the tensorboard package is not installed: pip install 'ponderkit[tensorboard]' "
    "(or remove this callback; metrics.jsonl is written either way)"
)


def check_tensorboard(cfg: TensorBoardConfig, env: Any) -> list:
    # the package is checked by the builder: a run is inspected (config, diff, eval) without it
    if Path(cfg.dir).is_absolute() or ".." in Path(cfg.dir).parts:
        return [("dir", f"a folder inside the run directory, got {cfg.dir!r}")]
    return []


def build_tensorboard(cfg: TensorBoardConfig, ctx: BuildContext) -> TensorBoardLogger:
    if not installed("tensorboard"):  # training needs it: said before any run directory
        raise ImportError(MISSING)
    return TensorBoardLogger(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "callback", "tensorboard", TensorBoardConfig, build_tensorboard, check=check_tensorboard
    )
