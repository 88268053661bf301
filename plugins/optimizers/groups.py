"""Parameter groups shared by the optimizer plugins: which parameters decay.

A parameter falls in a ``no_decay`` category by what it is, not by its name alone:
``vectors`` (fewer than 2 dimensions), ``norms`` (parameters of a normalisation layer),
``biases`` (named ``bias``), ``embeddings`` (``nn.Embedding`` tables). Parameters a callback
owns (``exclude``) are left out; a parameter shared by several modules is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

NORM_TYPES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._NormBase,
)


def named_trainable(
    model: nn.Module, exclude: Iterable[int] = ()
) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """(qualified name, parameter, owning module) for every trainable parameter, once each,
    in ``model.named_parameters()`` order, without those whose ``id`` is in ``exclude``."""
    skip = set(exclude)
    owner: dict[int, tuple[str, nn.Parameter, nn.Module]] = {}
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in skip and id(p) not in owner:
                owner[id(p)] = (f"{mod_name}.{name}" if mod_name else name, p, module)
    order = [id(p) for p in model.parameters()]
    return [owner[i] for i in order if i in owner]


def category(name: str, p: nn.Parameter, module: nn.Module) -> set[str]:
    """The ``no_decay`` categories parameter ``p`` (called ``name`` in ``module``) belongs to."""
    found = set()
    if p.ndim < 2:
        found.add("vectors")
    if isinstance(module, NORM_TYPES) or type(module).__name__.lower().endswith("norm"):
        found.add("norms")
    if name.rsplit(".", 1)[-1] == "bias":
        found.add("biases")
    if isinstance(module, nn.Embedding):
        found.add("embeddings")
    return found


def decay_split(
    model: nn.Module, no_decay: Iterable[str], exclude: Iterable[int] = ()
) -> tuple[list[tuple[str, nn.Parameter, nn.Module]], list[tuple[str, nn.Parameter, nn.Module]]]:
    """(decayed, spared): the trainable parameters split by the ``no_decay`` categories."""
    spare = set(no_decay)
    decayed, spared = [], []
    for entry in named_trainable(model, exclude):
        (spared if category(*entry) & spare else decayed).append(entry)
    return decayed, spared


def decay_groups(
    model: nn.Module, cfg: Any, exclude: Iterable[int] = (), **extra: Any
) -> list[dict]:
    """Two groups, ``weight_decay`` = ``cfg.weight_decay`` and 0 (in that order, as before
    optimizers were plugins, so older checkpoints load), empty ones dropped; each group also
    carries the ``extra`` options."""
    decayed, spared = decay_split(model, cfg.no_decay, exclude)
    groups = [
        {"params": [p for _, p, _ in decayed], "weight_decay": cfg.weight_decay, **extra},
        {"params": [p for _, p, _ in spared], "weight_decay": 0.0, **extra},
    ]
    return [g for g in groups if g["params"]]
