"""TRM training throughput and MFU, eager vs torch.compile, and the fast-path options (GPU;
runs on CPU for a smoke test).

Recipes: ``att``, the attention TRM of the paper (trm_sudoku_att.yaml: D=512, 8 heads, 2
layers, T=3, n=6, 81 Sudoku tokens + 16 puzzle-prefix positions), and ``mlp``, its mlp_t
Sudoku variant (trm_sudoku_mlp.yaml); ``maze``, the attention TRM on 30x30 mazes (900 tokens,
trm_maze.yaml); batch 768 (``--batch``), bf16 autocast, one deep-supervision step per
optimizer step; ``--override KEY=VALUE`` changes every row's config. FLOPs per optimizer step are counted by torch's FlopCounterMode over one real
step (compiled code run eagerly for the count), so no-grad passes count forward only and the
graded pass forward + backward.

Options, every combination a row, each with its warm-up seconds (the first ``--warmup``
steps, compilation included) and samples/s:

- ``--modes``: ``eager`` (``train.compile: false``), ``block`` (``train.compile: block``:
  each block compiled once, small graphs), ``compiled`` (``train.compile: true``: the whole
  recursion, one graph of every step), ``graphs`` (the same with ``train.compile_mode:
  reduce-overhead``: CUDA graphs replayed), ``autotune`` (``max-autotune-no-cudagraphs``:
  GEMM kernels searched);
- ``--no-grad-precision``: ``same`` or ``bf16`` (``model.recursion.no_grad_precision``: the
  T-1 recursions without gradients in bf16 throughout, residual stream included).

    python benchmarks/trm_throughput.py [--recipes att,mlp] [--modes eager,block,compiled]
        [--no-grad-precision same,bf16] [--batch 768] [--steps 30]
    python benchmarks/trm_throughput.py --rows att:eager:same,att:compiled:bf16   # chosen rows
    python benchmarks/trm_throughput.py --smoke     # tiny CPU run of the same code

Prints a markdown table and writes benchmarks/results/trm_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import time
from pathlib import Path

import torch
from common import add_device_options, sync, synthetic_batches, timed
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.nn import parameter_count
from ponderkit.engine.train import Trainer
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 tensor-core peak, SXM


RECIPES = {"att": "trm_sudoku_att.yaml", "mlp": "trm_sudoku_mlp.yaml", "maze": "trm_maze.yaml"}
COMPILE = {"eager": "false", "block": "block", "compiled": "true", "graphs": "true",
           "autotune": "true"}  # fmt: skip
COMPILE_MODE = {"graphs": "reduce-overhead", "autotune": "max-autotune-no-cudagraphs"}
SMOKE = [
    "model.d_model=32",
    "model.recursion.H_cycles=2",
    "model.recursion.L_cycles=1",
    "train.threads=1",
]


def count_flops(step) -> float:
    """FLOPs of one optimizer step, compiled code run eagerly (FlopCounterMode counts aten
    ops, which a compiled graph hides)."""
    stance = getattr(torch.compiler, "set_stance", None)
    eager = stance("force_eager") if stance else contextlib.nullcontext()
    with eager, FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def measure(recipe: str, mode: str, no_grad: str, args: argparse.Namespace, registry) -> dict:
    """One row; the trainer is freed (and the GPU's cache emptied) after it."""
    try:
        return _measure(recipe, mode, no_grad, args, registry)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _measure(recipe: str, mode: str, no_grad: str, args: argparse.Namespace, registry) -> dict:
    overrides = [
        f"train.batch_size={args.batch}",
        f"train.precision={args.precision}",
        f"train.compile={COMPILE[mode]}",
        f"train.compile_mode={COMPILE_MODE.get(mode, 'default')}",
        f"train.device={args.device}",
        f"model.recursion.no_grad_precision={no_grad}",
        *args.override,
        *(SMOKE if args.smoke else []),
    ]
    cfg = load_experiment(
        REPO / "experiments" / RECIPES[recipe], overrides, registry=registry
    ).config
    torch._dynamo.reset()  # each row compiles afresh, within dynamo's recompile limit
    trainer = Trainer(cfg, registry, quiet=True)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = synthetic_batches(args.batch, trainer.task.seq_len, trainer.task.vocab_size, device)
    step = lambda: trainer.schedule.train_step(trainer.model, batches, trainer)  # noqa: E731
    t_warmup = timed(step, args.warmup, device)
    flops = count_flops(step) if args.count_flops else None
    sync(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    row = {
        "recipe": recipe,
        "mode": mode,
        "no_grad_precision": no_grad,
        "median_step_s": median,
        "samples_per_s": args.batch / median,
        "warmup_s": t_warmup,
        "flops_per_step": flops,
        "parameters": parameter_count(trainer.model),
        "peak_mem_gib": (
            torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        ),
    }
    return row


def matmul_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 2 * 8192**3 * 10 / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default="att", help="att,mlp")
    parser.add_argument("--modes", default="eager,block,compiled")
    parser.add_argument("--no-grad-precision", default="same,bf16")
    parser.add_argument(
        "--rows",
        default=None,
        help="explicit rows instead of the cross product: recipe:mode:no-grad,... "
        "(e.g. att:eager:same,att:compiled:bf16)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every row (repeatable), e.g. model.recursion.L_cycles=6",
    )
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    add_device_options(parser, "a tiny TRM on the CPU")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.precision, args.batch = "cpu", "fp32", 4
        args.steps, args.warmup = 2, 1
    out = args.out or REPO / "benchmarks/results" / (
        "trm_throughput_smoke.json" if args.smoke else "trm_throughput.json"
    )
    registry = Plugins(autoload=False).registry
    if args.rows:
        combos = [tuple(row.split(":")) for row in args.rows.split(",")]
    else:
        combos = [
            (recipe, mode, no_grad)
            for recipe in args.recipes.split(",")
            for no_grad in args.no_grad_precision.split(",")
            for mode in args.modes.split(",")
        ]
    for combo in combos:
        if len(combo) != 3 or combo[0] not in RECIPES or combo[1] not in COMPILE:
            parser.error(
                f"a row is recipe:mode:no-grad, got {':'.join(combo)!r}; "
                f"recipes: {', '.join(RECIPES)}; modes: {', '.join(COMPILE)}"
            )
        if combo[2] not in ("same", "bf16"):
            parser.error(f"no-grad precision is same or bf16, got {combo[2]!r}")
    rows, flops = [], {}
    for recipe, mode, no_grad in combos:
        args.count_flops = recipe not in flops  # the same FLOPs for every option of a recipe
        try:
            row = measure(recipe, mode, no_grad, args, registry)
        except Exception as exc:  # a mode that does not compile here: say so, keep the rest
            row = {"recipe": recipe, "mode": mode, "no_grad_precision": no_grad}
            row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            print(f"{recipe} {mode} {no_grad}: {row['error']}", flush=True)
            rows.append(row)
            continue
        flops.setdefault(recipe, row["flops_per_step"])
        print(
            f"{recipe} {mode} no-grad {no_grad}: {row['samples_per_s']:.0f} samples/s, "
            f"warm-up {row['warmup_s']:.1f} s",
            flush=True,
        )
        rows.append(row)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    peak_sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    peak_meas = matmul_peak(device)
    for r in rows:
        if "error" in r:
            continue
        r["flops_per_step"] = f = flops.get(r["recipe"])
        achieved = f / r["median_step_s"] if f else None
        r["tflops"] = achieved / 1e12 if achieved else None
        r["mfu_datasheet"] = achieved / peak_sheet if achieved and peak_sheet else None
        r["mfu_measured_peak"] = achieved / peak_meas if achieved and peak_meas else None
    result = {
        "device": name,
        "torch": torch.__version__,
        "batch": args.batch,
        "precision": args.precision,
        "datasheet_peak_tflops": (peak_sheet or 0) / 1e12,
        "measured_matmul_tflops": (peak_meas or 0) / 1e12,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    gflop = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in flops.items() if v)
    lines = [
        f"TRM, batch {args.batch}, {args.precision}, {name}, torch {torch.__version__}; "
        f"GFLOP per optimizer step: {gflop or '-'}",
        "",
        "| recipe | mode | no-grad precision | step ms | samples/s | TFLOP/s | MFU (sheet) "
        "| MFU (matmul) | warm-up s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['recipe']} | {r['mode']} | {r['no_grad_precision']} | {r['error']} "
                "| | | | | | |"
            )
            continue
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        lines.append(
            f"| {r['recipe']} | {r['mode']} | {r['no_grad_precision']} "
            f"| {r['median_step_s'] * 1e3:.1f} | {r['samples_per_s']:.0f} "
            f"| {fmt(r['tflops'], '.1f')} | {fmt(r['mfu_datasheet'], '.1%')} "
            f"| {fmt(r['mfu_measured_peak'], '.1%')} | {r['warmup_s']:.1f} "
            f"| {fmt(r['peak_mem_gib'], '.1f')} |"
        )
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md').name}")


if __name__ == "__main__":
    main()
