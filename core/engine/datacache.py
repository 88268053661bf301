"""On-disk cache of generated data sets, and deterministic parallel generation.

``cached_arrays`` stores the arrays a builder returns under a key derived from a namespace and
the generation parameters, so that a data set is generated once per machine and then loaded.
``generate_distinct`` draws ``n`` distinct samples from per-index seeds, optionally over a
process pool, with a result that depends only on the seed (not on the number of workers).

Parallel runs (``ablate --jobs``, two shells) that need the same data set build it once: the
builder runs under an exclusive lock on ``<key16>.lock`` beside the entry; a second process
waits for it (saying so on stderr) and then loads what the first wrote. Generation says its
progress on stderr: a tqdm bar on a terminal, else a line every ``PROGRESS_EVERY_S`` seconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import multiprocessing
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .runs import atomic_write

__all__ = ["cache_key", "cached_arrays", "default_cache_dir", "generate_distinct"]

_BAD_CACHE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)
#: seconds between progress lines of a generation (off a terminal); none before the first
PROGRESS_EVERY_S = 10.0
# what is being generated, for the progress lines (set by cached_arrays around its builder)
_BUILDING: contextvars.ContextVar[str] = contextvars.ContextVar("building", default="data set")

try:
    import fcntl
except ImportError:  # Windows: no flock; parallel runs may then build a data set twice
    fcntl = None  # type: ignore[assignment]


def default_cache_dir() -> Path:
    """``$PONDERKIT_CACHE`` if set, else ``~/.cache/ponderkit``."""
    env = os.environ.get("PONDERKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ponderkit"


def cache_key(namespace: str, params: dict) -> str:
    """SHA-256 hex digest of the namespace and the canonical JSON of ``params``.

    ``params`` must hold an integer ``version``: bump it whenever the generator changes so
    that entries written by the old code are not reused.
    """
    if not namespace or any(ch in namespace for ch in "/\\\0") or namespace in (".", ".."):
        raise ValueError(f"cache namespace must be a plain directory name, got {namespace!r}")
    version = params.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(
            f"cache params for {namespace!r} need an integer 'version' "
            f"(got {version!r}); add e.g. version=1 and bump it when the generator changes"
        )
    try:
        canon = json.dumps(params, sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise ValueError(
            f"cache params for {namespace!r} must be JSON-serialisable ({exc}); "
            "pass plain ints, floats, strings, lists and dicts"
        ) from exc
    return hashlib.sha256(f"{namespace}\0{canon}".encode()).hexdigest()


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def cached_arrays(
    namespace: str,
    params: dict,
    build: Callable[[], dict[str, np.ndarray]],
    cache_dir: Path | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays for ``(namespace, params)``, calling ``build()`` only on a miss.

    Entries live in ``<cache_dir>/<namespace>/<key16>.npz`` (``key16``: the first 16 hex
    digits of :func:`cache_key`) with a JSON sidecar ``<key16>.json`` recording the params.
    Files are written atomically (temp file in the same directory, then ``os.replace``).  An
    unreadable or corrupt entry is rebuilt with a warning.  ``cache_dir`` defaults to
    :func:`default_cache_dir`.
    """
    key = cache_key(namespace, params)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / namespace
    path = folder / f"{key[:16]}.npz"
    found = _try_load(path, warn=False)  # the common case: no lock taken
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    with _building_lock(path.with_suffix(".lock"), namespace):
        found = _try_load(path, warn=True)  # another process may have built it meanwhile
        if found is not None:
            return found
        token = _BUILDING.set(f"{namespace} data set")
        try:
            arrays = build()
        finally:
            _BUILDING.reset(token)
        return _store(namespace, key, params, arrays, path)


def _try_load(path: Path, warn: bool) -> dict[str, np.ndarray] | None:
    """The entry at ``path``, or None when it is missing or unreadable (said when ``warn``:
    the caller, holding the lock, rebuilds it)."""
    if not path.exists():
        return None
    try:
        return _load(path)
    except _BAD_CACHE as exc:
        if warn:
            warnings.warn(
                f"cache entry {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                RuntimeWarning,
                stacklevel=3,
            )
        return None


@contextlib.contextmanager
def _building_lock(lock: Path, namespace: str) -> Iterator[None]:
    """Hold an exclusive flock on ``lock`` (waiting, with a line on stderr, while another
    process holds it). The kernel drops it when its holder dies, so no stale lock is left."""
    if fcntl is None:
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(
                f"waiting for another process to build the {namespace} data set ({lock})",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


def _store(
    namespace: str, key: str, params: dict, arrays: Any, path: Path
) -> dict[str, np.ndarray]:
    if not isinstance(arrays, dict) or not all(isinstance(k, str) for k in arrays):
        raise TypeError(f"the builder for {namespace!r} must return a dict of str -> np.ndarray")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, arr in arrays.items():
        if arr.dtype == object:
            raise TypeError(f"array {name!r} for {namespace!r} has dtype object; cannot cache it")
    atomic_write(path, lambda f: np.savez(f, **arrays))
    meta = {
        "namespace": namespace,
        "key": key,
        "params": params,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
    }
    text = json.dumps(meta, sort_keys=True, indent=1).encode()
    atomic_write(path.with_suffix(".json"), lambda f: f.write(text))
    return arrays


def _run_chunk(
    make: Callable[[np.random.SeedSequence], Sequence[np.ndarray]],
    seed: int,
    jobs: list[tuple[int, int]],
) -> list[Sequence[np.ndarray]]:
    return [make(np.random.SeedSequence(seed, spawn_key=(i, attempt))) for i, attempt in jobs]


def _run_packed(args: tuple) -> list[Sequence[np.ndarray]]:
    return _run_chunk(*args)


def _run_jobs(make, seed, jobs, pool, workers, progress: Progress):
    """Every job's sample, in order, in chunks (each chunk done is counted in ``progress``)."""
    size = max(1, min(64, len(jobs) // (workers * 8))) if pool is not None else 64
    chunks = [(make, seed, jobs[k : k + size]) for k in range(0, len(jobs), size)]
    parts = pool.imap(_run_packed, chunks) if pool is not None else map(_run_packed, chunks)
    out = []
    for part in parts:
        out.extend(part)
        progress.advance(len(part))
    return out


class Progress:
    """Progress of a generation of ``total`` samples on ``stream``: a tqdm bar on a terminal,
    else a line every ``every_s`` seconds (none for a generation quicker than that)."""

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, every_s: float | None = None
    ):
        self.total, self.label, self.done = total, label, 0
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.t0 = self.last = time.monotonic()
        self.bar: Any = None
        if total and _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"generating {label}", unit=" samples",
                            file=self.stream, leave=False, mininterval=1.0)  # fmt: skip

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            share = self.done / self.total
            left = (now - self.t0) * (1 - share) / share if share else 0.0
            print(
                f"generating {self.label}: {self.done:,} of {self.total:,} samples "
                f"({share:.0%}), ~{left:.0f} s left",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def generate_distinct(
    make: Callable[[np.random.SeedSequence], Sequence[np.ndarray]],
    n: int,
    seed: int,
    workers: int | None = None,
    max_attempts: int = 50,
    key_field: int = 0,
) -> list[np.ndarray]:
    """Draw ``n`` samples with distinct ``key_field`` arrays (default the first); return
    each field stacked.  A generator passes a canonical form as its key field to make
    samples distinct up to augmentation.

    ``make(seed_sequence)`` returns one sample as a tuple of arrays (or scalars); sample ``i``
    uses ``SeedSequence(seed, spawn_key=(i, attempt))`` and is redrawn with the next
    ``attempt`` while its first array equals that of an earlier sample.  The outcome depends
    only on ``seed``; ``workers`` (default ``os.cpu_count()``) only changes the speed.  ``make``
    must be picklable (a module-level function or a ``functools.partial`` of one).  Inside a
    daemonic process (e.g. a data-loader worker) generation runs in-process.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if multiprocessing.current_process().daemon:
        workers = 1
    results: list[Sequence[np.ndarray] | None] = [None] * n
    seen: set[bytes] = set()
    todo = list(range(n))
    pool = None
    if workers > 1 and n > 1:
        pool = multiprocessing.get_context("spawn").Pool(min(workers, n))
    progress = Progress(n, _BUILDING.get())
    try:
        for attempt in range(max_attempts):
            if not todo:
                break
            progress.done = n - len(todo)  # redraws of repeated samples count again
            got = _run_jobs(make, seed, [(i, attempt) for i in todo], pool, workers, progress)
            retry = []
            for i, sample in zip(todo, got, strict=True):
                key = np.ascontiguousarray(sample[key_field]).tobytes()
                if key in seen:
                    retry.append(i)
                else:
                    seen.add(key)
                    results[i] = sample
            todo = retry
    finally:
        progress.close()
        if pool is not None:
            pool.close()
            pool.join()
    if todo:
        raise RuntimeError(
            f"could not draw {n} distinct samples in {max_attempts} attempts "
            f"({len(todo)} left); ask for fewer samples or a harder/larger setting"
        )
    if n == 0:
        return []
    return [np.stack([np.asarray(r[f]) for r in results]) for f in range(len(results[0]))]
