"""Data-parallel training under ``torchrun``: what each rank does, and what they agree on.

``torchrun --nproc_per_node K -m ponderkit run EXP`` starts K processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in their environment; :func:`init_from_env` joins them into one
``torch.distributed`` group (NCCL on CUDA, each rank on GPU ``LOCAL_RANK``; gloo on CPU).
Without those variables (or with K = 1) every helper here is a no-op and a run is the ordinary
single-process one.

The division of labour:

- Rank 0 owns the run directory: it holds the lock, writes config, meta, metrics and
  checkpoints, and decides what happens to the directory (:meth:`Distributed.from_main` runs
  such a decision there and hands its result, or its error, to every rank).
- Data: every rank draws the same stream of global batches (``train.batch_size`` samples each,
  from the task's one seeded sampler) and keeps rows ``[r*b, (r+1)*b)`` with ``b = B / K``
  (:meth:`Distributed.shard`). The sampler position is therefore a count of global samples,
  the same at any world size, and a run at K ranks sees exactly the samples of the run at 1.
- Gradients: averaged over ranks after each backward (:meth:`Distributed.average_gradients`).
  That is not ``DistributedDataParallel``, deliberately: DDP arms its gradient reducer in its
  ``forward`` wrapper, but schedules drive the model through ``embed``/``step``/``unroll``
  and never call ``forward``; deep supervision runs recursion passes under ``no_grad`` and
  another one for the halting target; a routed layer leaves different experts unused on
  different ranks (DDP's ``find_unused_parameters`` then scans the graph every step and still
  fails when the unused sets differ); and the puzzle-embedding table has a sparse gradient that
  a callback, not the optimizer, consumes. One bucketed all-reduce after ``backward`` makes the
  same mean over the global batch for all of these; what it gives up is overlapping the
  communication with the backward pass.
- Everything else that steps the same way on every rank stays identical because its inputs are:
  the averaged gradients and equal weights give equal AdamW and EMA updates, the torch RNG
  (seeded alike, drawn alike) gives equal re-initialisations. What depends on local data is
  made global: router activation counts are summed over ranks every step (so ``expert_reset``
  finds the same dead experts everywhere), the puzzle table's sparse rows are gathered from all
  ranks before sign-SGD, metrics are averaged over ranks when logged, evaluation splits the
  held-out batches over the ranks and sums.
- Time and signals: a deadline, a time-based checkpoint or Ctrl-C on any rank are agreed on
  at each step boundary (:meth:`Distributed.agree`), so all ranks stop or checkpoint together.
- Checkpoints are world-size independent: per-sample schedule state (deep supervision's
  persistent batch) is gathered into the global batch on save and split again on restore.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..contract.errors import InputError, PonderkitError

T = TypeVar("T")

#: elements per all-reduce of flattened gradients (~100 MB in fp32)
BUCKET_ELEMENTS = 25_000_000


class RankFailed(PonderkitError):
    """Rank 0 failed at a step every rank waits on; the other ranks stop quietly with this."""


class Distributed:
    """This process's place in a data-parallel job: rank ``rank`` of ``world_size``.

    ``Distributed()`` is the single process (rank 0 of 1), for which every method is the
    identity or a no-op."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        control: Any = None,
    ):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.control = control  # a gloo group for small CPU-side messages (None: the default)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size})"

    # -- setup -----------------------------------------------------------------------------
    def device(self, device: torch.device) -> torch.device:
        """``device`` for this rank: CUDA means GPU ``LOCAL_RANK``."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise InputError(
                f"train.batch_size={batch_size} is not divisible by the world size "
                f"{self.world_size} (torchrun --nproc_per_node): the global batch is split "
                "evenly over the ranks; choose a multiple of it"
            )

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (all built alike; this makes sure)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, 0)

    # -- agreement -------------------------------------------------------------------------
    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only; its result (or its error) on every rank.

        For decisions about the run directory, which rank 0 alone touches. A
        :class:`PonderkitError` is raised again on every rank (only rank 0 prints it); any
        other error stops the other ranks with :class:`RankFailed`."""
        if not self.active:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except PonderkitError as exc:
                error, box[0] = exc, ("error", exc)
            except BaseException as exc:
                error, box[0] = exc, ("failed", f"{type(exc).__name__}: {exc}")
        dist.broadcast_object_list(box, 0, group=self.control)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "error":
            raise value
        if kind == "failed":
            raise RankFailed(f"rank 0 failed: {value}")
        return value

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The block on rank 0, then on the others (rank 0 fills the data cache they read
        instead of every rank generating the same data at once). Should rank 0 fail, the
        others stop with :class:`RankFailed`."""
        if not self.active:
            yield
            return
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.is_main:
            try:
                yield
            except BaseException as exc:
                box[0] = f"{type(exc).__name__}: {exc}"
                dist.broadcast_object_list(box, 0, group=self.control)
                raise
            dist.broadcast_object_list(box, 0, group=self.control)
            return
        dist.broadcast_object_list(box, 0, group=self.control)
        if box[0] is not None:
            raise RankFailed(f"rank 0 failed: {box[0]}")
        yield

    def agree(self, *flags: int) -> tuple[int, ...]:
        """The largest value of each flag over the ranks (a signal or a deadline seen by any
        rank counts for all)."""
        if not self.active:
            return flags
        import torch.distributed as dist

        values = torch.tensor(flags, dtype=torch.int64)
        dist.all_reduce(values, dist.ReduceOp.MAX, group=self.control)
        return tuple(int(v) for v in values)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier(group=self.control)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks that have it (for logged metrics)."""
        if not self.active:
            return values
        import torch.distributed as dist

        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, values, group=self.control)
        keys = list(dict.fromkeys(k for part in every for k in part))
        return {k: sum(p[k] for p in every if k in p) / sum(k in p for p in every) for k in keys}

    def sum_totals(self, totals: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """Sums of per-sample metrics and the sample count, added up over the ranks."""
        if not self.active:
            return totals, count
        import torch.distributed as dist

        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, (totals, count), group=self.control)
        summed: dict[str, float] = {}
        for part, _ in every:
            for k, v in part.items():
                summed[k] = summed.get(k, 0.0) + v
        return summed, sum(n for _, n in every)

    # -- data ------------------------------------------------------------------------------
    def shard(self, batches: Iterator[dict[str, Tensor]]) -> Iterator[dict[str, Tensor]]:
        """This rank's rows of each global batch."""
        if not self.active:
            yield from batches
            return
        for batch in batches:
            size = len(next(iter(batch.values())))
            part = size // self.world_size
            rows = slice(self.rank * part, (self.rank + 1) * part)
            yield {k: v[rows] for k, v in batch.items()}

    def owns_eval_batch(self, index: int) -> bool:
        """Evaluation batches are dealt out round-robin."""
        return index % self.world_size == self.rank

    # -- gradients and counters ------------------------------------------------------------
    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """Every parameter's gradient replaced by its mean over the ranks.

        A parameter no rank gave a gradient keeps ``None`` (AdamW skips it, as in one
        process); one that only some ranks reached counts zero on the others. Sparse gradients
        (the puzzle-embedding table) are gathered, rows of all ranks together, values / K."""
        if not self.active:
            return
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        if not params:
            return
        device = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8, device=device)
        dist.all_reduce(has, dist.ReduceOp.MAX)
        dense: list[nn.Parameter] = []
        for p, flag in zip(params, has.tolist(), strict=True):
            if not flag:
                continue
            if p.grad is not None and p.grad.is_sparse:
                p.grad = self._gather_sparse(p.grad)
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dense.append(p)
        for bucket in _buckets(dense):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def _gather_sparse(self, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.coalesce()
        indices, values = grad.indices(), grad.values()  # (1, R), (R, ...)
        rows = torch.tensor([indices.shape[1]], device=values.device)
        counts = [torch.zeros_like(rows) for _ in range(self.world_size)]
        dist.all_gather(counts, rows)
        counts_list = [int(c) for c in counts]
        most = max(counts_list)
        pad = most - indices.shape[1]  # all_gather needs equal shapes: pad, then cut back
        indices = torch.cat([indices, indices.new_zeros(indices.shape[0], pad)], 1)
        values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        all_indices = [torch.empty_like(indices) for _ in range(self.world_size)]
        all_values = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(all_indices, indices)
        dist.all_gather(all_values, values)
        merged = torch.sparse_coo_tensor(
            torch.cat([i[:, :n] for i, n in zip(all_indices, counts_list, strict=True)], 1),
            torch.cat([v[:n] for v, n in zip(all_values, counts_list, strict=True)])
            / self.world_size,
            grad.shape,
        )
        return merged.coalesce()

    @contextlib.contextmanager
    def counting(self, model: nn.Module) -> Iterator[None]:
        """Around a training step: router activation counts (``activation_counts``,
        ``tokens_seen``) end it summed over the ranks, so decisions made from them (dead-expert
        resets) are the same everywhere. Only this step's increase is exchanged, so counts
        cleared between steps stay cleared."""
        if not self.active:
            yield
            return
        import torch.distributed as dist

        from ..contract.interfaces import ResettableRouter

        counters = [
            t
            for m in model.modules()
            if isinstance(m, ResettableRouter)
            for t in (m.activation_counts, m.tokens_seen)
            if isinstance(t, Tensor)
        ]
        before = [t.clone() for t in counters]
        yield
        if not counters:
            return
        flat = torch.cat([(t - b).reshape(-1) for t, b in zip(counters, before, strict=True)])
        dist.all_reduce(flat)
        offset = 0
        for t, b in zip(counters, before, strict=True):
            n = t.numel()
            t.copy_(b + flat[offset : offset + n].view_as(t))
            offset += n

    # -- checkpoints -----------------------------------------------------------------------
    def gather_samples(self, state: Any, local_batch: int) -> tuple[Any, list[str]]:
        """``state`` with every per-sample tensor (first dimension ``local_batch``) replaced by
        its concatenation over the ranks (the global batch, in rank order) on rank 0; with the
        paths of those tensors. Called by every rank; rank 0's result is the one to save."""
        paths: list[str] = []
        local = _map_tensors(state, lambda path, t: _mark(t, local_batch, path, paths))
        if not self.active:
            return local, paths
        import torch.distributed as dist

        every: list[Any] = [None] * self.world_size if self.is_main else []
        cpu = _map_tensors(local, lambda path, t: t.cpu())
        dist.gather_object(cpu, every if self.is_main else None, dst=0, group=self.control)
        if not self.is_main:
            return local, paths
        device_of = {}
        _map_tensors(local, lambda path, t: device_of.setdefault(path, t.device))

        def join(path: str, t: Tensor) -> Tensor:
            if path not in paths:
                return t
            parts = [_find(part, path) for part in every]
            return torch.cat(parts).to(device_of[path])

        return _map_tensors(local, join), paths

    def split_samples(self, state: Any, paths: list[str] | None, global_batch: int) -> Any:
        """This rank's rows of the per-sample tensors ``paths`` of a saved ``state`` (the
        inverse of :meth:`gather_samples`). ``paths`` None (a checkpoint from before
        distributed training, always of one process): tensors whose first dimension is the
        global batch."""
        part = global_batch // self.world_size
        rows = slice(self.rank * part, (self.rank + 1) * part)

        def take(path: str, t: Tensor) -> Tensor:
            chosen = path in paths if paths is not None else _leading(t) == global_batch
            return t[rows] if chosen and self.active else t

        return _map_tensors(state, take)


def _mark(t: Tensor, local_batch: int, path: str, paths: list[str]) -> Tensor:
    if _leading(t) == local_batch:
        paths.append(path)
    return t


def _leading(t: Tensor) -> int | None:
    return t.shape[0] if t.ndim else None


def _map_tensors(obj: Any, fn: Callable[[str, Tensor], Tensor], path: str = "") -> Any:
    """``obj`` (nested dicts, lists, tuples) with ``fn(path, tensor)`` for every tensor;
    ``path`` is dotted (``batch.inputs``, ``stages.0.carry.z``)."""
    if isinstance(obj, Tensor):
        return fn(path, obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(
            _map_tensors(v, fn, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)
        )
    return obj


def _find(obj: Any, path: str) -> Any:
    for key in path.split(".") if path else ():
        if isinstance(obj, list | tuple) or key not in obj:
            obj = obj[int(key)]
        else:
            obj = obj[key]
    return obj


def _buckets(params: list[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
    """Parameters in groups of one dtype and device, each under :data:`BUCKET_ELEMENTS`."""
    groups: dict[tuple[Any, Any], list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        bucket: list[nn.Parameter] = []
        size = 0
        for p in group:
            if bucket and size + p.numel() > BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(p)
            size += p.numel()
        if bucket:
            yield bucket


_CURRENT = Distributed()


def current() -> Distributed:
    """The job this process belongs to (set by :func:`init_from_env`; one process before)."""
    return _CURRENT


@contextlib.contextmanager
def init_from_env(device_name: str) -> Iterator[Distributed]:
    """Join the ``torchrun`` job described by the environment for the length of the block
    (NCCL when ``device_name`` resolves to CUDA, gloo otherwise); outside ``torchrun`` (or at
    world size 1) the single process. The group is left at the end of the block."""
    global _CURRENT
    from .device import resolve_device

    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        yield _CURRENT
        return
    import torch.distributed as dist

    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise InputError(
                f"train.device: rank {rank} needs GPU {local_rank} (LOCAL_RANK), but "
                f"{torch.cuda.device_count()} are visible; start at most that many processes "
                "per node, or train on CPU (train.device: cpu)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = not dist.is_initialized()
    if created:
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    previous, _CURRENT = _CURRENT, Distributed(rank, world, local_rank, control)
    try:
        yield _CURRENT
    finally:
        _CURRENT = previous
        if created:
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not an integer") from None
