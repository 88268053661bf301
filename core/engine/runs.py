"""Run directories: resolved config, metadata, the metrics stream and atomic checkpoints."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from ..contract.errors import InputError
from .runlock import is_empty_run_dir


class RunDirExists(InputError):
    pass


class CheckpointDamaged(InputError):
    """A checkpoint file that cannot be read back (truncated, garbled, or not ours)."""


class DiskFull(InputError):
    """Not enough space to write a checkpoint; the previous checkpoints are left intact."""


# -- fault injection ------------------------------------------------------------------------
# ``PONDERKIT_KILL_AT=POINT@N`` sends SIGKILL to this process the N-th time it passes POINT
# (``POINT`` alone or ``POINT:DETAIL``, e.g. ``checkpoint-weights:final@1``): how the tests
# prove that a ``kill -9`` anywhere in a write loses nothing. Unset, it costs a dict lookup.
KILL_ENV = "PONDERKIT_KILL_AT"
_kill_hits: dict[str, int] = {}


def kill_point(point: str, detail: str = "") -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    label, _, nth = spec.rpartition("@")
    if label not in (point, f"{point}:{detail}"):
        return
    _kill_hits[spec] = _kill_hits.get(spec, 0) + 1
    if str(_kill_hits[spec]) == nth:
        import signal

        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{name}-{stamp}"


def ensure_new_run_dir(path: str | Path) -> None:
    """Refuse a ``path`` that already exists and holds anything (or is a file)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise RunDirExists(f"--out {path}: a symbolic link to nothing (or a link loop)")
    if not is_empty_run_dir(path):
        raise RunDirExists(
            f"run directory {path} already exists and is not empty; "
            "a run directory is never overwritten (choose another --out)"
        )


def create_run_dir(path: str | Path) -> Path:
    """Create ``path``; refuse one that already exists and holds anything."""
    path = Path(path)
    ensure_new_run_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, a file on the way, a link loop
        raise InputError(f"--out {path}: cannot create it ({exc.strerror or exc})") from None
    return path


# what a run directory holds, and what each must be
RUN_LAYOUT = {"checkpoints": "folder", "metrics.jsonl": "file", "config.yaml": "file",
              "meta.json": "file", ".lock": "file"}  # fmt: skip


def check_run_layout(run_dir: Path) -> None:
    """Refuse a run directory whose parts are the wrong kind (``checkpoints`` a file,
    ``metrics.jsonl`` a folder ...) before anything is trained into it."""
    for name, kind in RUN_LAYOUT.items():
        path = Path(run_dir) / name
        if not os.path.lexists(path):
            continue
        if kind == "folder" and not path.is_dir():
            raise InputError(f"{path} is not a folder; this run directory is damaged (move it)")
        if kind == "file" and not path.is_file():
            raise InputError(f"{path} is not a file; this run directory is damaged (move it)")


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit and dirty flag of the source checkout, when it is a git repository; else
    ``PONDERKIT_GIT_COMMIT`` (and ``PONDERKIT_GIT_DIRTY=1``), for a copy of the sources that
    travelled without its ``.git`` (a GPU machine: benchmarks/gpu_setup.sh sets them)."""
    cwd = cwd or Path(__file__).resolve().parent
    told = os.environ.get("PONDERKIT_GIT_COMMIT")
    fallback = (
        {"commit": told, "dirty": os.environ.get("PONDERKIT_GIT_DIRTY") == "1"}
        if told
        else {"commit": None, "dirty": None}
    )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return fallback
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return fallback


def write_meta(
    run_dir: Path,
    *,
    seed: int,
    device: str,
    plugins: Iterable[tuple[str, str]],
    extra: dict[str, Any] | None = None,
) -> None:
    import torch

    from ..contract.loading import ponderkit_version

    meta = {
        "ponderkit": ponderkit_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_state(),
        "seed": seed,
        "device": device,
        "plugins": {name: version for name, version in sorted(set(plugins))},
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_json_atomic(run_dir / "meta.json", meta)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    """Write through ``write(binary file)`` to a temp file next to ``path``, flush it to disk,
    then rename it over ``path``: a reader sees the old file or the whole new one. The file
    gets the permissions the user's umask gives (mkstemp alone makes it 0600)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        kill_point("atomic-write", path.name)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a folder where the file goes: the old file stays
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise InputError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


@attrs.frozen
class BadLine:
    """A ``metrics.jsonl`` line that is no metrics record."""

    line: int
    reason: str
    last: bool  # the final line without its newline: a write cut short (kill, full disk)

    def describe(self, path: Path) -> str:
        what = "half-written last line" if self.last else "line"
        return f"{path}:{self.line}: {what} skipped ({self.reason})"


def parse_metrics(text: str) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Records of a ``metrics.jsonl`` text and the lines that are none, by line number."""
    records, bad = [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = number == len(lines)  # no newline after it
        try:
            record = json.loads(line)
        except ValueError as exc:
            bad.append(BadLine(number, f"not JSON: {exc.msg}", last))
            continue
        problem = _record_problem(record)
        if problem:
            bad.append(BadLine(number, problem, last))
            continue
        records.append(record)
    return records, bad


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    step = record.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step {step!r} is not a step number"
    for key, value in record.items():
        if not isinstance(value, int | float | str | None):  # bool is an int
            return f"{key} = {value!r} is not a number or a label"
    return None


def read_metrics_file(path: Path) -> tuple[list[dict[str, Any]], list[BadLine]]:
    if not path.exists():
        return [], []
    return parse_metrics(path.read_bytes().decode("utf-8", errors="replace"))


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per logged step."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._append(json.dumps(record) + "\n")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot append to it ({exc.strerror or exc})") from None

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            if os.environ.get(KILL_ENV):  # a kill half-way through the line
                f.write(line[: len(line) // 2])
                f.flush()
                kill_point("metrics-line")
                line = line[len(line) // 2 :]
            f.write(line)

    def truncate_after(self, step: int, warn: Callable[[str], None] | None = None) -> None:
        """Drop records logged after ``step`` (a resumed run re-logs them) and lines that are
        no records (a half-written last line after a kill), saying which."""
        records, bad = read_metrics_file(self.path)
        for b in bad:
            (warn or _stderr)(f"warning: {b.describe(self.path)}; dropped on resume")
        kept = [r for r in records if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict[str, Any]]:
        return read_metrics_file(self.path)[0]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def save_checkpoint(
    run_dir: Path, name: str, tensors: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write ``checkpoints/<name>/`` atomically: weights as safetensors, the rest with torch.

    The free space is checked first (:class:`DiskFull` names what is needed); a write that
    fails or is killed part-way leaves a ``.<name>.*`` temporary that the next resume removes,
    and the checkpoints written before it untouched."""
    import torch
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / name
    _checkpoint_folder(final.parent)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    check_space(final.parent, _estimate_bytes(tensors, state))
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}."))
    try:
        mode = 0o666 & ~current_umask()
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; honour the umask
        save_file(tensors, str(tmp / "model.safetensors"))
        os.chmod(tmp / "model.safetensors", mode)  # safetensors creates it 0600
        kill_point("checkpoint-weights", name)
        torch.save(state, tmp / "trainer.pt")
        os.chmod(tmp / "trainer.pt", mode)
        kill_point("checkpoint-state", name)
        if final.exists():
            old = final.with_name(f".{name}.old")
            os.replace(final, old)
            kill_point("checkpoint-swap", name)  # resume puts .<name>.old back
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            need = _estimate_bytes(tensors, state)
            raise DiskFull(
                f"{final}: no space left on device while writing the checkpoint (it needs "
                f"about {_mib(need)}, {_mib(_free_bytes(final.parent))} free); the earlier "
                "checkpoints are intact: free some space and continue with --resume"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _checkpoint_folder(folder: Path) -> None:
    """Create ``run/checkpoints``, or say in one line why it cannot be."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not the run's checkpoint folder; move it away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{folder}: cannot create it ({exc.strerror or exc})") from None


# room above the checkpoint's own size: the filesystem's blocks and the metrics still to come
SPACE_MARGIN = 1.05
SPACE_SLACK = 1 << 20


def check_space(folder: Path, need: int) -> None:
    """Raise :class:`DiskFull` when ``folder``'s file system has less than ``need`` bytes (with
    a margin) free: checked before each checkpoint, so a full disk stops the run with its
    checkpoints intact rather than half-way through one."""
    free = _free_bytes(folder)
    if free is not None and free < need * SPACE_MARGIN + SPACE_SLACK:
        raise DiskFull(
            f"{folder}: {_mib(free)} free, a checkpoint needs about "
            f"{_mib(int(need * SPACE_MARGIN + SPACE_SLACK))}; the earlier checkpoints are "
            "intact: free some space and continue with --resume"
        )


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _estimate_bytes(tensors: dict[str, Any], state: dict[str, Any]) -> int:
    """Bytes of the tensors of ``tensors`` and ``state`` (both files' payload, headers aside)."""
    import torch

    seen: set[int] = set()
    total = 0

    def walk(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    walk(tensors)
    walk(state)
    return total


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:.1f} MiB"


def checkpoint_in(run_dir: Path, name: str) -> Path:
    """``run_dir/checkpoints/<name>``, refusing a name that leaves that folder (``..``, a
    slash, an absolute path, a link out of the run): a checkpoint is read from its run."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / name
    plain = name not in ("", ".", "..") and "/" not in name and "\\" not in name
    plain = plain and len(name.encode()) <= 255  # longer is no file name anywhere
    if plain and path.exists():
        plain = path.resolve().is_relative_to(Path(run_dir).resolve())
    if not plain:
        raise InputError(
            f"--checkpoint {shorten_name(name)}: not a checkpoint of {run_dir} (give the name "
            "of a folder in its checkpoints/, such as final or step_0000100)"
        )
    return path


def shorten_name(name: str, limit: int = 200) -> str:
    return repr(name) if len(name) <= limit else repr(name[:limit]) + "..."


STATE_KEYS = ("step", "train_weights", "optimizer", "schedule", "callbacks", "rng")


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Weights and trainer state of ``checkpoints/<name>/``, read without running any code
    (``weights_only``); raises :class:`CheckpointDamaged` naming the file and the fault."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    file = path / "model.safetensors"
    try:
        weights = load_file(str(file))
        file = path / "trainer.pt"
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as exc:  # truncation, garbage, a pickle that is more than data
        raise CheckpointDamaged(f"{file}: cannot be loaded ({_first_line(exc)})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointDamaged(f"{file}: not a ponderkit trainer state (missing {missing})")
    return weights, state


def checkpoint_problem(path: Path) -> str | None:
    """Why ``checkpoints/<name>/`` is not intact, cheaply (headers and sizes, no tensors read);
    None when it looks whole. A full read is :func:`load_checkpoint`."""
    import zipfile

    weights, state = path / "model.safetensors", path / "trainer.pt"
    for file in (weights, state):
        if not file.is_file():
            return f"{file} is missing"
    try:
        with weights.open("rb") as f:
            size = weights.stat().st_size
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                return f"{weights}: header length {n} does not fit a file of {size} bytes"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                  default=0)  # fmt: skip
        if 8 + n + end != size:
            return f"{weights}: holds {size} bytes, its header says {8 + n + end} (truncated?)"
        with zipfile.ZipFile(state) as z:
            if not z.namelist():
                return f"{state}: empty archive"
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
        return f"{path}: unreadable ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
