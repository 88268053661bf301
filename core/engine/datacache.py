"""On-disk cache of generated data sets, and deterministic parallel generation.

``cached_arrays`` stores the arrays a builder returns under a key derived from a namespace and
the generation parameters, so that a data set is generated once per machine and then loaded.
``generate_distinct`` draws ``n`` distinct samples from per-index seeds, optionally over a
process pool, with a result that depends only on the seed (not on the number of workers).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["cache_key", "cached_arrays", "default_cache_dir", "generate_distinct"]

_BAD_CACHE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


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


def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Write through ``write(fileobj)`` to a temp file next to ``path``, then rename."""
    from .runs import current_umask

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a shared cache needs more
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    if path.exists():
        try:
            return _load(path)
        except _BAD_CACHE as exc:
            warnings.warn(
                f"cache entry {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                RuntimeWarning,
                stacklevel=2,
            )
    arrays = build()
    if not isinstance(arrays, dict) or not all(isinstance(k, str) for k in arrays):
        raise TypeError(f"the builder for {namespace!r} must return a dict of str -> np.ndarray")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, arr in arrays.items():
        if arr.dtype == object:
            raise TypeError(f"array {name!r} for {namespace!r} has dtype object; cannot cache it")
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    meta = {
        "namespace": namespace,
        "key": key,
        "params": params,
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()},
    }
    text = json.dumps(meta, sort_keys=True, indent=1).encode()
    _atomic_write(path.with_suffix(".json"), lambda f: f.write(text))
    return arrays


def _run_chunk(
    make: Callable[[np.random.SeedSequence], Sequence[np.ndarray]],
    seed: int,
    jobs: list[tuple[int, int]],
) -> list[Sequence[np.ndarray]]:
    return [make(np.random.SeedSequence(seed, spawn_key=(i, attempt))) for i, attempt in jobs]


def _run_jobs(make, seed, jobs, pool, workers):
    if pool is None:
        return _run_chunk(make, seed, jobs)
    size = max(1, min(64, len(jobs) // (workers * 8)))
    chunks = [jobs[k : k + size] for k in range(0, len(jobs), size)]
    args = [(make, seed, c) for c in chunks]
    return [r for part in pool.starmap(_run_chunk, args) for r in part]


def generate_distinct(
    make: Callable[[np.random.SeedSequence], Sequence[np.ndarray]],
    n: int,
    seed: int,
    workers: int | None = None,
    max_attempts: int = 50,
) -> list[np.ndarray]:
    """Draw ``n`` samples with distinct first arrays; return each field stacked.

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
    try:
        for attempt in range(max_attempts):
            if not todo:
                break
            got = _run_jobs(make, seed, [(i, attempt) for i in todo], pool, workers)
            retry = []
            for i, sample in zip(todo, got, strict=True):
                key = np.ascontiguousarray(sample[0]).tobytes()
                if key in seen:
                    retry.append(i)
                else:
                    seen.add(key)
                    results[i] = sample
            todo = retry
    finally:
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
