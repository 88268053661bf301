"""How fast could a TRM training step be? The time of its matrix products and attention
kernels alone, replayed op by op (GPU; --smoke: CPU).

One real optimizer step of a recipe (``trm_throughput.py``'s: batch 768, bf16 autocast, one
deep-supervision step) runs eagerly under a dispatch mode that records every GEMM
(``mm``/``addmm``/``bmm``) and every attention kernel (SDPA forward and backward) with its
argument shapes, strides and dtypes. Each distinct call is then replayed alone on fresh random
tensors of those layouts (``--reps`` times after a warm-up, CUDA-synchronized) and its median
time multiplied by how often the step made it. The sum is a floor for a step that calls these
kernels on these layouts (torch.compile's default mode calls the same cuBLAS GEMMs and attention
kernels): every norm, activation, residual add, loss, cast and optimizer update, and every
launch gap, comes on top. Inductor may change a layout, though (mlp_t's compiled step, whose
token-mixing GEMMs have an inner size of 97, beat its eager-layout sum on the H200), so the
floor holds for a recipe whose compiled step stays above it. ``samples/s bound`` = batch / that floor; compare it with ``trm_throughput.py``'s measured
step.

    python benchmarks/trm_bound.py [--recipes att,mlp] [--batch 768] [--reps 20]
    python benchmarks/trm_bound.py --smoke     # tiny CPU run of the same code

Prints a markdown table and writes benchmarks/results/trm_bound.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from common import add_device_options, sync, synthetic_batches
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.train import Trainer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from trm_throughput import RECIPES, SMOKE

REPO = Path(__file__).resolve().parent.parent
aten = torch.ops.aten
GEMMS = {aten.mm.default, aten.addmm.default, aten.bmm.default}


def attention_ops() -> set[Any]:
    names = [
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_backward",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_efficient_attention_backward",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_cudnn_attention_backward",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention_for_cpu_backward",
    ]
    return {getattr(aten, n).default for n in names if hasattr(aten, n)}


def layout(value: Any) -> Any:
    """A hashable description of an argument: tensors by shape, stride and dtype."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), tuple(value.stride()), str(value.dtype))
    if isinstance(value, (list, tuple)):
        return tuple(layout(v) for v in value)
    return value


class Recorder(TorchDispatchMode):
    """Counts each distinct (op, argument layout) of the kernels that carry the FLOPs and keeps
    one example of its arguments' layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.watched = GEMMS | attention_ops()
        self.calls: Counter = Counter()
        self.example: dict[Any, tuple[Any, tuple, dict]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.watched:
            key = (func, layout(args), layout(tuple(sorted(kwargs.items()))))
            self.calls[key] += 1
            if key not in self.example:
                spec = lambda t: ("T", t.shape, t.stride(), t.dtype, t.device)  # noqa: E731
                keep = lambda v: spec(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
                self.example[key] = (func, tree_map(keep, args), tree_map(keep, kwargs))
        return func(*args, **kwargs)


def fresh(value: Any) -> Any:
    """Random tensors for the recorded layouts (values do not change these kernels' time)."""
    if isinstance(value, tuple) and value and value[0] == "T":
        _, shape, stride, dtype, device = value
        out = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        if dtype.is_floating_point:
            out.normal_()
        else:
            out.zero_()
        return out
    return value


def replay_seconds(func: Any, args: Any, kwargs: Any, reps: int, device: torch.device) -> float:
    is_spec = lambda v: isinstance(v, tuple) and bool(v) and v[0] == "T"  # noqa: E731
    a = tree_map(fresh, args, is_leaf=is_spec)
    k = tree_map(fresh, kwargs, is_leaf=is_spec)
    for _ in range(3):
        func(*a, **k)
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        func(*a, **k)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bound(recipe: str, args: argparse.Namespace, registry: Any) -> dict:
    overrides = [
        f"train.batch_size={args.batch}",
        f"train.precision={args.precision}",
        "train.compile=false",
        f"train.device={args.device}",
        "task.train_size=16",  # synthetic batches: the task gives shapes only
        "task.eval_size=16",
        *(SMOKE if args.smoke else []),
    ]
    cfg = load_experiment(REPO / "experiments" / RECIPES[recipe], overrides, registry=registry)
    trainer = Trainer(cfg.config, registry, quiet=True)
    device = trainer.device
    batches = synthetic_batches(args.batch, trainer.task.seq_len, trainer.task.vocab_size, device)
    step = lambda: trainer.schedule.train_step(trainer.model, batches, trainer)  # noqa: E731
    step()  # the persistent batch exists: later steps are the steady state
    rec = Recorder()
    with rec:
        step()
    sync(device)
    gemm_s = attn_s = 0.0
    ops = []
    for key, count in rec.calls.items():
        func, a, k = rec.example[key]
        seconds = replay_seconds(func, a, k, args.reps, device)
        is_gemm = func in GEMMS
        gemm_s += seconds * count * is_gemm
        attn_s += seconds * count * (not is_gemm)
        shapes = [list(v[1]) for v in a if isinstance(v, tuple) and v and v[0] == "T"]
        ops.append({"op": str(func), "shapes": shapes, "count": count, "ms_each": seconds * 1e3})
    floor = gemm_s + attn_s
    row = {
        "recipe": recipe,
        "batch": args.batch,
        "gemm_calls": sum(c for k, c in rec.calls.items() if k[0] in GEMMS),
        "attention_calls": sum(c for k, c in rec.calls.items() if k[0] not in GEMMS),
        "gemm_ms": gemm_s * 1e3,
        "attention_ms": attn_s * 1e3,
        "floor_ms": floor * 1e3,
        "samples_per_s_bound": args.batch / floor,
        "ops": sorted(ops, key=lambda o: -o["count"] * o["ms_each"]),
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="att,mlp")
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--reps", type=int, default=20)
    add_device_options(parser, "a tiny TRM on the CPU")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.precision, args.batch, args.reps = "cpu", "fp32", 4, 2
    for recipe in args.recipes.split(","):
        if recipe not in RECIPES:
            parser.error(f"recipes: {', '.join(RECIPES)}; got {recipe!r}")
    out = args.out or REPO / "benchmarks/results" / (
        "trm_bound_smoke.json" if args.smoke else "trm_bound.json"
    )
    registry = Plugins(autoload=False).registry
    rows = []
    for recipe in args.recipes.split(","):
        rows.append(bound(recipe, args, registry))
        gc.collect()  # the recipe's trainer is gone: free its GPU memory for the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    result = {"device": name, "torch": torch.__version__, "precision": args.precision, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"TRM step floor: GEMM + attention kernels alone, batch {args.batch}, {args.precision}, "
        f"{name}, torch {torch.__version__}",
        "",
        "| recipe | GEMM calls | GEMM ms | attention calls | attention ms | floor ms "
        "| samples/s bound |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['gemm_calls']} | {r['gemm_ms']:.1f} | {r['attention_calls']} "
            f"| {r['attention_ms']:.1f} | {r['floor_ms']:.1f} | {r['samples_per_s_bound']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print(table)
    for r in rows:
        print(f"{r['recipe']}: most time")
        for o in r["ops"][:6]:
            shapes = " ".join("x".join(map(str, sh)) for sh in o["shapes"][:3])
            print(f"  {o['op'][5:]:40s} {shapes:36s} x{o['count']:4d}  {o['ms_each']:.3f} ms each")
    print(f"wrote {out} and {out.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
