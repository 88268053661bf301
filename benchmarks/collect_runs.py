"""Bring an ablation's finished runs from a GPU machine's results into a committed results
folder: run directories with their ``halting.json`` (finished), without checkpoints or lock
files, with the command in ``meta.json`` no longer naming the machine's install path.

    mkdir back && tar xzf gpu.tgz -C back
    python benchmarks/collect_runs.py back/runs/gpu/seed002 benchmarks/results/seed002_h100
    ponderkit report benchmarks/results/seed002_h100

Runs already in DEST are left as they are (a finished run is never replaced). ``ablation.json``
and ``ablation.yaml`` come from SRC, the newer plan (its reference figures, comments), and must
describe the same grid as DEST's (name, variants, seeds, budget). Unfinished runs are listed
and left behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

SKIP = {"checkpoints", ".lock"}


def command_without_paths(argv: list[str]) -> list[str]:
    """``/somewhere/ponderkit/__main__.py ablate ...`` -> ``ponderkit ablate ...``."""
    out = list(argv)
    if out and out[0].endswith("/__main__.py"):
        out[0] = Path(out[0]).parent.name
    elif out and "/" in out[0]:
        out[0] = Path(out[0]).name
    return out


def collect(src: Path, dest: Path) -> dict[str, list[str]]:
    """Copy ``src``'s finished runs into ``dest``; returns the keys copied, already there, and
    unfinished."""
    if not (src / "ablation.json").is_file():
        raise SystemExit(f"{src}: no ablation.json, not an ablation directory")
    plan = json.loads((src / "ablation.json").read_text())
    if (dest / "ablation.json").is_file():
        have = json.loads((dest / "ablation.json").read_text())
        for key in ("name", "variants", "seeds", "budget"):
            if have.get(key) != plan.get(key):
                raise SystemExit(f"{dest}/ablation.json: {key} differs from {src}'s")
    done: dict[str, list[str]] = {"copied": [], "already there": [], "unfinished": []}
    for run in sorted(p.parent for p in src.glob("*/seed*/config.yaml")):
        key = f"{run.parent.name}/{run.name}"
        target = dest / run.parent.name / run.name
        if not (run / "halting.json").is_file():
            done["unfinished"].append(key)
        elif target.exists():
            done["already there"].append(key)
        else:
            shutil.copytree(run, target, ignore=lambda _d, names: [n for n in names if n in SKIP])
            meta = target / "meta.json"
            if meta.is_file():
                data = json.loads(meta.read_text())
                data["command"] = command_without_paths(data.get("command", []))
                meta.write_text(json.dumps(data, indent=2) + "\n")
            done["copied"].append(key)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("ablation.json", "ablation.yaml"):  # the newer plan of the same grid
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="the ablation directory that came back")
    parser.add_argument("dest", type=Path, help="the results folder to add its runs to")
    args = parser.parse_args()
    done = collect(args.src, args.dest)
    for what, keys in done.items():
        print(f"{what}: {', '.join(keys) if keys else '-'}")
    if not done["copied"] and not done["already there"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
