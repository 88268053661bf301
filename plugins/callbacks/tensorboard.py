"""``tensorboard``: every metrics record of a run also as TensorBoard scalars.

``metrics.jsonl`` stays the source of truth (always written); this callback mirrors each
record it receives through the ``on_log`` hook. It needs the optional extra
``pip install 'ponderkit[tensorboard]'`` (torch's ``SummaryWriter`` writes the event files).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import attrs
from ponderkit import BuildContext, callback_hook, hookimpl


@attrs.frozen
class TensorBoardConfig:
    """Write every logged metric as a TensorBoard scalar (tag = metric name) under the run.

    ``dir`` is relative to the run directory (``tensorboard`` by default):
    ``tensorboard --logdir runs/`` then shows every run. Needs ``ponderkit[tensorboard]``."""

    dir: str = "tensorboard"


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
        step = int(record["step"])
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a run stopped at any point has its scalars on disk


def check_tensorboard(cfg: TensorBoardConfig, env: Any) -> list:
    if importlib.util.find_spec("tensorboard") is None:
        return [
            (
                (),
                "the tensorboard package is not installed: pip install 'ponderkit[tensorboard]' "
                "(or remove this callback; metrics.jsonl is written either way)",
            )
        ]
    if Path(cfg.dir).is_absolute() or ".." in Path(cfg.dir).parts:
        return [("dir", f"a folder inside the run directory, got {cfg.dir!r}")]
    return []


def build_tensorboard(cfg: TensorBoardConfig, ctx: BuildContext) -> TensorBoardLogger:
    return TensorBoardLogger(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "callback", "tensorboard", TensorBoardConfig, build_tensorboard, check=check_tensorboard
    )
