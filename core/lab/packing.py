"""Where the runs of a grid go: CPU thread shares, or GPUs, several runs to a GPU when they fit.

On CUDA, a run's memory is measured, not guessed: the first time a config is met, a probe
subprocess (``python -m ponderkit.lab.packing CONFIG``, a fresh CUDA context) trains two
optimizer steps and evaluates one held-out batch, and reports ``torch.cuda.max_memory_reserved``
(what the caching allocator held at its peak); up to :data:`PROBES_AT_ONCE` distinct configs
are probed at once, each in its own process. A run then needs that peak plus
:data:`CONTEXT_BYTES` for its own CUDA context and :data:`MARGIN` for fragmentation. Each GPU's
free memory is read once, before the first run starts (``torch.cuda.mem_get_info``); a run
starts on a GPU only when the needs of the runs already placed there plus its own fit into
that; a run that fits on no empty GPU still runs alone on one (as it would unpacked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CONTEXT_BYTES = 600 * 2**20  # a CUDA context with cuBLAS/cuDNN handles, not in the allocator
MARGIN = 1.15  # the probe's peak, plus room for fragmentation and a bigger eval batch
PROBES_AT_ONCE = 4  # concurrent memory probes (each a process training two steps)
Env = dict[str, str]


class Slots:
    """A fixed environment per concurrent run (CPU thread shares, or GPU groups for
    ``--nproc``); a run takes the first free one."""

    def __init__(self, envs: Sequence[Env]):
        self.envs = list(envs)
        self.free = list(range(len(self.envs)))

    def place(self, run: Any) -> tuple[Any, Env] | None:
        if not self.free:
            return None
        slot = self.free.pop(0)
        return slot, self.envs[slot]

    def release(self, handle: Any) -> None:
        self.free.append(handle)
        self.free.sort()


class GpuPacker:
    """Runs onto GPUs by measured memory: at most ``jobs`` at once, each GPU's placed needs
    within its free memory (``free``: GPU id -> bytes, read before the first run)."""

    def __init__(self, free: dict[str, int], jobs: int, need: Callable[[Any], int]):
        self.capacity = dict(free)
        self.jobs = jobs
        self.need = need  # run -> bytes
        self.placed: dict[str, list[int]] = {g: [] for g in free}
        self.basis = "measured"  # or "given" (--memory-per-run): how the needs were known

    def used(self, gpu: str) -> int:
        return sum(self.placed[gpu])

    def place(self, run: Any) -> tuple[tuple[str, int], Env] | None:
        """A GPU for ``run`` (the one with the most room left that fits), or None for now."""
        if sum(map(len, self.placed.values())) >= self.jobs:
            return None
        need = self.need(run)
        room = {g: self.capacity[g] - self.used(g) for g in self.placed}
        fits = [g for g in self.placed if room[g] >= need]
        if not fits:  # too big to share: alone on an idle GPU, as an unpacked grid would run it
            fits = [g for g in self.placed if not self.placed[g]]
        if not fits:
            return None
        gpu = max(fits, key=lambda g: room[g])
        self.placed[gpu].append(need)
        return (gpu, need), {"CUDA_VISIBLE_DEVICES": gpu}

    def release(self, handle: tuple[str, int]) -> None:
        gpu, need = handle
        self.placed[gpu].remove(need)


def visible_gpus() -> list[str]:
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def free_memory(gpus: Sequence[str]) -> dict[str, int]:
    """Free bytes on each GPU now (``torch.cuda.mem_get_info``, indices among the visible)."""
    import torch

    return {g: int(torch.cuda.mem_get_info(i)[0]) for i, g in enumerate(gpus)}


class MemoryProbe:
    """A run's GPU memory need, probed once per distinct config in a subprocess."""

    def __init__(self, gpu: str, env: Env | None = None, plugin_args: Sequence[str] = ()):
        self.gpu, self.env, self.plugin_args = gpu, env or {}, list(plugin_args)
        self.cache: dict[str, int] = {}

    @staticmethod
    def key(run: Any) -> str:
        import attrs

        from .ablation import config_digest

        return config_digest(attrs.evolve(run.config, seed=0))  # seeds need the same memory

    def __call__(self, run: Any) -> int:
        key = self.key(run)
        if key not in self.cache:
            peak = probe_peak_bytes(run.config, self.gpu, self.env, self.plugin_args)
            self.cache[key] = int(peak * MARGIN) + CONTEXT_BYTES
        return self.cache[key]

    def probe_all(self, runs: Sequence[Any], at_once: int = PROBES_AT_ONCE) -> None:
        """Probe every distinct config of ``runs``, up to ``at_once`` probes concurrently (each
        reads its own process's peak, so they need not wait for each other); a probe that
        fails while others ran (say, out of memory on a small GPU) is repeated alone, and its
        second failure is the one raised."""
        from concurrent.futures import ThreadPoolExecutor

        todo = {}
        for run in runs:
            todo.setdefault(self.key(run), run)
        todo = {k: r for k, r in todo.items() if k not in self.cache}
        if at_once <= 1 or len(todo) <= 1:
            for run in todo.values():
                self(run)
            return
        with ThreadPoolExecutor(max_workers=min(at_once, len(todo))) as pool:
            futures = {k: pool.submit(self, run) for k, run in todo.items()}
            failed = [k for k, f in futures.items() if f.exception() is not None]
        for key in failed:  # alone this time
            self(todo[key])


def probe_peak_bytes(config: Any, gpu: str, env: Env, plugin_args: Sequence[str] = ()) -> int:
    """Peak reserved GPU memory of two training steps and one evaluation batch of ``config``,
    measured in a fresh process on ``gpu``."""
    from ..contract.config import unstructure
    from ..contract.yamlio import dump

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(dump(unstructure(config)), "utf-8")
        cmd = [sys.executable, "-P", "-m", "ponderkit.lab.packing", str(path), *plugin_args]
        full_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": gpu}
        done = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"memory probe failed (exit {done.returncode}): {tail}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_reserved"])


def measure_peak(config_path: str, plugin_modules: Sequence[str] = ()) -> int:
    """Two training steps and one held-out batch of the config at ``config_path`` on the
    current CUDA device; the peak of ``torch.cuda.max_memory_reserved``."""
    import torch

    from ..contract.experiment import load_experiment
    from ..contract.loading import Plugins
    from ..engine.train import Trainer

    registry = Plugins(modules=list(plugin_modules)).registry
    config = load_experiment(config_path, registry=registry).config
    trainer = Trainer(config, registry, run_dir=None, quiet=True)
    batches = trainer._batches()
    trainer.model.train()
    for _ in range(2):
        trainer.schedule.train_step(trainer.model, batches, trainer)
    batch = next(iter(trainer.task.eval_batches(config.train.eval_batch_size)))
    with torch.no_grad(), trainer.autocast():
        trainer.model.infer(trainer.to_device(batch))
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_reserved())


if __name__ == "__main__":  # the probe subprocess: CONFIG [--plugin MODULE ...]
    args = sys.argv[1:]
    modules = [args[i + 1] for i, a in enumerate(args) if a == "--plugin"]
    print(json.dumps({"peak_reserved": measure_peak(args[0], modules)}), flush=True)
