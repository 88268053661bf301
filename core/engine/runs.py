"""Run directories: resolved config, metadata, the metrics stream and atomic checkpoints."""

from __future__ import annotations

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

from ..errors import PonderkitError


class RunDirExists(PonderkitError):
    pass


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{name}-{stamp}"


def create_run_dir(path: str | Path) -> Path:
    """Create ``path``; refuse one that already exists and holds anything."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunDirExists(
            f"run directory {path} already exists and is not empty; "
            "a run directory is never overwritten (choose another --out)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """The commit and dirty flag of the source checkout, when it is a git repository."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_meta(
    run_dir: Path,
    *,
    seed: int,
    device: str,
    plugins: Iterable[tuple[str, str]],
    extra: dict[str, Any] | None = None,
) -> None:
    import torch

    from ..loading import ponderkit_version

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
    then rename it over ``path``: a reader sees the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per logged step."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run re-logs them)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text("utf-8").splitlines() if line]


def save_checkpoint(
    run_dir: Path, name: str, tensors: dict[str, Any], state: dict[str, Any]
) -> Path:
    """Write ``checkpoints/<name>/`` atomically: weights as safetensors, the rest with torch."""
    import torch
    from safetensors.torch import save_file

    final = run_dir / "checkpoints" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}."))
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(tmp / "model.safetensors"),
        )
        torch.save(state, tmp / "trainer.pt")
        if final.exists():
            old = final.with_name(f".{name}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors")), torch.load(
        path / "trainer.pt", weights_only=False
    )
