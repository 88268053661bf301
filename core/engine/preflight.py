"""What ``run`` would refuse, checked before any work: the device, the data cache, the memory.

``validate``, ``run`` and ``ablate`` all call :func:`preflight`, so ``validate`` saying ok means
``run`` starts. The memory check builds the model on the meta device (shapes, no storage) and
compares what training must hold at least (weights, gradients, AdamW's two moments) with what
the device has free; activations come on top, so a refusal is certain, an ok only likely.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..contract.errors import InputError, Issue

# fp32 weights + gradients + AdamW exp_avg and exp_avg_sq (bf16 autocast keeps fp32 masters)
BYTES_PER_PARAMETER = 16


def preflight(config: Any, registry: Any, *, memory: bool = True) -> list[Issue]:
    """Every reason ``config`` cannot be trained here, as issues with their config paths."""
    issues = []
    problem = device_problem(config.train.device)
    if problem:
        issues.append(Issue(("train", "device"), problem))
    if memory and not issues:
        issues += memory_issues(config, registry)
    return issues


def device_problem(name: str) -> str | None:
    """Why ``train.device: name`` cannot train on this machine, or None."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)"
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"device {name!r}: CUDA is not available on this machine (use cpu or auto)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"device {name!r}: this machine has {count} CUDA device(s)"
        return None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            return f"device {name!r}: MPS is not available on this machine (use cpu or auto)"
        return None
    return f"device {name!r} cannot train models here (use auto, cpu, cuda, cuda:N or mps)"


def check_cache() -> None:
    """Raise :class:`InputError` when the data cache cannot be written."""
    problem = cache_problem()
    if problem:
        raise InputError(problem)


def cache_problem() -> str | None:
    """Why the data cache cannot be written, or None; creates nothing that stays behind.

    Tasks generate their data once and store it there, so a cache that refuses the write
    would fail only after the generation, with a run directory already made."""
    from .datacache import default_cache_dir

    folder = default_cache_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    where = f"the data cache {folder} (PONDERKIT_CACHE)"
    if not probe.is_dir():
        return f"{where} cannot be created: {probe} is not a directory"
    try:  # os.access would trust the mode bits; a real write also sees read-only mounts
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".ponderkit-probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"{where} is not writable: {exc.strerror or exc} ({probe})"
    return None


def count_parameters(config: Any, registry: Any) -> int:
    """Parameters of ``config``'s model, built on the meta device (no memory, no init cost)."""
    from .build import experiment_parameters, module_limit

    with module_limit():
        return experiment_parameters(config, registry)


def memory_issues(config: Any, registry: Any, parameters: int | None = None) -> list[Issue]:
    """An issue when weights, gradients and optimizer state alone exceed free memory."""
    if parameters is None:
        parameters = count_parameters(config, registry)
    need = parameters * BYTES_PER_PARAMETER
    free, where = free_memory(config.train.device)
    if free is None or need <= free:
        return []
    return [
        Issue(
            ("model",),
            f"the model has {parameters:.3g} parameters; its weights, gradients and AdamW "
            f"state alone need {_bytes(need)}, and {where} has {_bytes(free)} free",
        )
    ]


def free_memory(device_name: str) -> tuple[int | None, str]:
    """Free bytes on the device ``train.device`` resolves to, and its name (None: unknown)."""
    import torch

    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device.index or 0)
        return int(free), f"GPU {device.index or 0}"
    if device.type == "cpu":
        return _available_ram(), "this machine"
    return None, device.type


def _available_ram() -> int | None:
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
