"""``wandb``: every metrics record of a run also logged to Weights & Biases.

``metrics.jsonl`` stays the source of truth (always written); this callback mirrors each
record it receives through the ``on_log`` hook, with the resolved config as the W&B run's
config. It needs the optional extra ``pip install 'ponderkit[wandb]'``, only to train: the
package is checked when the callback is built, so ``config``, ``diff`` and ``eval`` of a run
trained with it work without it. ``mode: offline`` writes the W&B run under the run directory
(``wandb sync`` uploads it later); a resumed run continues the same W&B run (its id is kept in
``wandb_id.txt``).
"""

from __future__ import annotations

import importlib.util
import math
import sys
import uuid
from pathlib import Path
from typing import Any, Literal

import attrs
from ponderkit import BuildContext, callback_hook, hookimpl, unstructure

ID_FILE = "wandb_id.txt"


@attrs.frozen
class WandbConfig:
    """Log every metric to Weights & Biases (the run's config as W&B config).

    Needs ``ponderkit[wandb]``; ``mode: offline`` needs no account or network."""

    project: str = attrs.field(default="ponderkit", metadata={"help": "W&B project"})
    entity: str | None = attrs.field(
        default=None, metadata={"help": "W&B team or user (null: your default entity)"}
    )
    mode: Literal["online", "offline", "disabled"] = attrs.field(
        default="online",
        metadata={"help": "online: upload as it trains; offline: write files to `wandb sync`"},
    )
    group: str | None = attrs.field(
        default=None, metadata={"help": "W&B group (e.g. the ablation's name)"}
    )
    tags: tuple[str, ...] = attrs.field(default=(), metadata={"help": "W&B tags of the run"})
    dir: str = attrs.field(
        default=".", metadata={"help": "folder for W&B's files, relative to the run directory"}
    )


class WandbLogger:
    """A logger: ``on_log(trainer, record)`` for each record written to metrics.jsonl."""

    def __init__(self, cfg: WandbConfig):
        self.cfg = cfg
        self.run: Any = None

    @callback_hook
    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        if trainer.run_dir is None:  # ranks other than 0 of torchrun, or no run directory
            return
        if self.run is None:
            self.run = self._start(trainer)
        values = {
            k: v
            for k, v in record.items()
            if k != "step"
            and not isinstance(v, bool)
            and isinstance(v, int | float)
            and math.isfinite(v)
        }
        self.run.log(values, step=int(record["step"]))
        if "stopped" in record:  # training ended (budget spent, time limit): close the W&B run
            self.run.finish()
            self.run = None

    def _start(self, trainer: Any) -> Any:
        import wandb

        run_dir = Path(trainer.run_dir)
        id_file = run_dir / ID_FILE
        # the same W&B run across resumes of this run directory
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        folder = run_dir / self.cfg.dir
        folder.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=self.cfg.group,
            tags=list(self.cfg.tags) or None,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            mode=self.cfg.mode,
            dir=str(folder),
            config=unstructure(trainer.config),
        )


def installed(name: str) -> bool:
    """Whether ``name`` can be imported (a ``None`` in ``sys.modules`` blocks it, as tests do)."""
    if name in sys.modules and sys.modules[name] is None:
        return False
    return importlib.util.find_spec(name) is not None


def check_wandb(cfg: WandbConfig, env: Any) -> list:
    # the package is checked by the builder: a run is inspected (config, diff, eval) without it
    if Path(cfg.dir).is_absolute() or ".." in Path(cfg.dir).parts:
        return [("dir", f"a folder inside the run directory, got {cfg.dir!r}")]
    return []


def build_wandb(cfg: WandbConfig, ctx: BuildContext) -> WandbLogger:
    if not installed("wandb"):  # training needs it: said before any run directory
        raise ImportError(
            "the wandb package is not installed: pip install 'ponderkit[wandb]' "
            "(or remove this callback; metrics.jsonl is written either way)"
        )
    return WandbLogger(cfg)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("callback", "wandb", WandbConfig, build_wandb, check=check_wandb)
