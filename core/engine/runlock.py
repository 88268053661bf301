"""One writer per run (or ablation) directory: an advisory lock on ``<dir>/.lock``.

The lock is a ``flock`` on a file that records the holder (pid, host, start time). The kernel
drops a flock when its process dies however it dies (``kill -9`` included), so a lock left by a
dead process is free to take: the next writer takes it over and says whose it was. The file is
emptied, never deleted, on release: deleting a lock file lets a third process lock a new file
while a second still holds the old one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from ..contract.errors import InputError

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock degrades to a record of the writer
    fcntl = None  # type: ignore[assignment]


class RunLocked(InputError):
    """Another live process writes this directory."""


class RunLock:
    """``with RunLock(dir):`` holds ``dir/.lock`` or raises :class:`RunLocked` at once."""

    def __init__(self, directory: str | Path, warn: bool = True):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.warn = warn
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:  # a folder named .lock, a read-only directory
            raise InputError(f"{self.path}: cannot open the lock file ({exc.strerror})") from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLocked(
                f"{self.directory} is in use by {_describe(holder)}; wait for it to finish "
                "or stop it (a second writer would duplicate and reorder its metrics)"
            ) from None
        previous = _holder(fd, tries=1)
        if previous and self.warn:
            print(
                f"warning: {self.directory}: taking over the lock of {_describe(previous)}, "
                "which is no longer running",
                file=sys.stderr,
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # empty: the next writer sees a clean release
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(fd: int, tries: int = 20) -> dict:
    # the holder writes its record right after locking; a reader racing it may see nothing
    for _ in range(tries):
        raw = os.pread(fd, 4096, 0)
        if raw.strip():
            try:
                record = json.loads(raw)
                return record if isinstance(record, dict) else {}
            except ValueError:
                return {}
        time.sleep(0.01)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    host = holder.get("host")
    here = host in (None, socket.gethostname())
    return (
        f"pid {holder.get('pid', '?')}"
        + ("" if here else f" on {host}")
        + (f" (since {holder['started']})" if holder.get("started") else "")
    )


def is_empty_run_dir(path: Path) -> bool:
    """True when ``path`` is missing or holds nothing but a lock file (and the temporary file
    of a first write that a kill cut short: the run had not begun)."""
    if not path.exists():
        return True
    return path.is_dir() and all(p.name == LOCK_NAME or is_temporary(p) for p in path.iterdir())


def is_temporary(path: Path) -> bool:
    """A file that ``runs.atomic_write`` was writing when its process died."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()
