"""Training throughput of every ADR variant at the speed of its active FLOPs (GPU; --smoke: CPU).

For each variant, built from its experiments/*.yaml file (batch, sequence and model as there;
bf16 autocast; synthetic tokens, so no data set is generated):

- training samples/s over real optimizer steps (``schedule.train_step``: forward, backward,
  clip, AdamW), ``--warmup`` steps excluded, timed as one stretch of ``--steps`` steps between
  two ``torch.cuda.synchronize()``; callbacks (EMA, expert reset) are not run;
- active FLOPs per sample: torch's FlopCounterMode over one real step, with the formulas of
  ``ponderkit.lab.grid`` for grouped GEMMs and CPU attention; routed layers plan exactly
  while it counts, so their grouped GEMMs hold the active pairs only (a static plan's
  capacity rows are never computed, but FlopCounterMode, seeing shapes, would count them).
  Counted before and after the timed steps (routing moves as the weights train), averaged;
- MFU on active FLOPs against the H100/H200 bf16 dense peak (989.4 TFLOP/s);
- beside a dense twin: stacked pre_norm attention + SwiGLU blocks of the same D, sequence,
  batch, loss and schedule kind (supervised; teacher forcing, causal, for seq2seq), whose
  depth and SwiGLU width are picked so its FLOPs per sample match the variant's; its own
  FLOPs are counted the same way. ``vs dense`` is the variant's time per FLOP over the
  twin's (the twin's MFU over the variant's): 1.0 means the variant trains at the speed of
  its active FLOPs.

Options: ``--modes eager,compiled,block`` (``train.compile`` false, true, block: each block
compiled once), ``--dispatch exact,static`` (routed variants; ``auto`` is static on CUDA).
A variant or mode that fails (e.g. a kernel that does not lower) gets a row with the reason
instead of numbers.

    python benchmarks/adr_throughput.py                       # GPU, eager, exact + static
    python benchmarks/adr_throughput.py --modes eager,compiled
    python benchmarks/adr_throughput.py --smoke               # tiny CPU run of the same code

Prints a markdown table and writes benchmarks/results/adr_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from common import synthetic_batches, timed
from ponderkit.contract.config import iter_specs
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.flops import extra_flop_formulas
from ponderkit.engine.nn import parameter_count, swiglu_width
from ponderkit.engine.train import Trainer
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 tensor-core peak, SXM
ROUTED = ("dynmoe", "dynsmha")

# name -> (experiment file, overrides that make it the variant measured here, smoke overrides)
VARIANTS: dict[str, tuple[str, list[str], list[str]]] = {
    "trm": (
        "trm_sudoku_att.yaml",
        [],
        ["model.recursion.H_cycles=2", "model.recursion.L_cycles=1"],
    ),
    "trm_mlp": (
        "trm_sudoku_mlp.yaml",
        [],
        ["model.recursion.H_cycles=2", "model.recursion.L_cycles=1"],
    ),
    "adr0001_dynsiha": ("adr0001_dynsiha.yaml", [], ["model.recursion.layers=2"]),
    "adr0004_dynmoe": (
        "adr0004_stacked_dynmoe.yaml",
        [],
        [
            "model.recursion.layers=2",
            "model.recursion.block.mixer.experts=4",
            "model.recursion.block.ffn.experts=4",
            "model.recursion.block.ffn.hidden=16",
        ],
    ),
    "adr0005_dyntrm": (
        "adr0005_dyntrm.yaml",
        [],
        [
            "model.recursion.block.mixer.experts=4",
            "model.recursion.block.ffn.experts=4",
            "model.halting.max_steps=2",
        ],
    ),
    "dynsmlora_trm": (
        "dynsmlora_trm_sudoku.yaml",
        [],
        [
            "model.recursion.H_cycles=2",
            "model.recursion.L_cycles=1",
            "model.recursion.block.mixer.kv_heads=1",
            "model.recursion.block.mixer.experts=4",
            "model.recursion.block.mixer.rank=2",
        ],
    ),
    # seed 003's model on its parallel stage (teacher forcing; EAVI generates token by token)
    "seed003_nsa_dynmoe": (
        "seed003_nsa_dynmoe.yaml",
        ["schedule=teacher_forcing"],
        [
            "task.task.size=6",
            "task.task.min_path_len=4",
            "model.recursion.layers=2",
            "model.recursion.block.mixer.block=8",
            "model.recursion.block.mixer.selected=2",
            "model.recursion.block.mixer.window=16",
            "model.recursion.block.ffn.experts=4",
            "model.recursion.block.ffn.hidden=16",
        ],
    ),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "trm_mlp"]
COMPILE = {"eager": "false", "compiled": "true", "block": "block"}  # --modes -> train.compile
SMOKE = ["model.d_model=32", "model.recursion.block.mixer.heads=2", "train.threads=1"]


def routed_paths(config: Any) -> list[str]:
    """Dotted paths of every dynmoe / dynsmha in ``config``."""
    return [".".join(map(str, p)) for p, s in iter_specs(config) if s.name in ROUTED]


def count_flops(step) -> float:
    """FLOPs of one real optimizer step; routed layers plan exactly while FlopCounterMode
    counts (``dynmoe.dispatch.capacity_for``), so their grouped GEMMs count active pairs."""
    # compiled code is run eagerly for the count: FlopCounterMode sees aten ops, not graphs
    stance = getattr(torch.compiler, "set_stance", None)
    eager = stance("force_eager") if stance else contextlib.nullcontext()
    with eager, FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        step()
    return float(counter.get_total_flops())


def measure(config: Any, registry: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, FLOPs, timed steps and FLOPs again for one config; frees the GPU after."""
    try:
        return _measure(config, registry, args)
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _measure(config: Any, registry: Any, args: argparse.Namespace) -> dict[str, Any]:
    torch._dynamo.reset()  # each row compiles afresh, within dynamo's recompile limit
    trainer = Trainer(config, registry, quiet=True)
    device = trainer.device
    batch = config.train.batch_size
    trainer.model.train()
    batches = synthetic_batches(batch, trainer.task.seq_len, trainer.task.vocab_size, device)

    def step() -> None:
        trainer.schedule.train_step(trainer.model, batches, trainer)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup_s = timed(step, args.warmup, device)
    flops_before = count_flops(step)
    elapsed = timed(step, args.steps, device)
    flops_after = count_flops(step)
    row = {
        "batch": batch,
        "seq_len": trainer.task.seq_len + trainer.model.prefix_len,
        "parameters": parameter_count(trainer.model),
        "warmup_s": warmup_s,
        "step_ms": 1e3 * elapsed / args.steps,
        "samples_per_s": batch * args.steps / elapsed,
        "flops_per_sample": (flops_before + flops_after) / 2 / batch,
        "flops_per_sample_first_last": [flops_before / batch, flops_after / batch],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
    }
    return row


def dense_twin_overrides(config: Any, flops_per_sample: float, seq: int) -> tuple[list[str], dict]:
    """A stacked pre_norm attention + SwiGLU model of about ``flops_per_sample`` on ``seq``
    positions: depth L and SwiGLU width H from the dense layer's count, 6 T (4 D^2 + 3 D H +
    2 T D) FLOPs per sample for forward + backward (projections, SwiGLU, attention)."""
    d = config.model.d_model
    causal = config.schedule.name in ("teacher_forcing", "staged", "eavi")
    heads = next(
        (s.config.heads for _, s in iter_specs(config.model) if hasattr(s.config, "heads")), 8
    )

    def layer_flops(hidden: int) -> float:
        return 6 * seq * (4 * d * d + 3 * d * hidden + 2 * seq * d)

    layers = max(1, round(flops_per_sample / layer_flops(swiglu_width(4.0, d))))
    want = (flops_per_sample / layers / (6 * seq) - 4 * d * d - 2 * seq * d) / (3 * d)
    hidden = max(256, round(want / 256) * 256)
    expansion = hidden * 3 / (2 * d)
    recursion = (
        f"{{name: stacked, layers: {layers}, block: {{name: pre_norm, mixer: {{name: attention,"
        f" heads: {heads}, causal: {str(causal).lower()}}}, ffn: {{name: swiglu, expansion:"
        f" {expansion!r}}}}}}}"
    )
    overrides = [
        f"model.recursion={recursion}",
        "model.halting=fixed",
        "model.loss=softmax",
        "schedule=" + ("teacher_forcing" if causal else "supervised"),
    ]
    return overrides, {"layers": layers, "hidden": swiglu_width(expansion, d), "heads": heads}


def run_variant(name: str, args: argparse.Namespace, registry: Any) -> list[dict[str, Any]]:
    path, variant_overrides, smoke_overrides = VARIANTS[name]
    base = [
        *variant_overrides,
        f"train.device={args.device}",
        f"train.precision={args.precision}",
        "callbacks=[]",
    ]
    if args.smoke:
        base += SMOKE + smoke_overrides
    if args.batch:
        base.append(f"train.batch_size={args.batch}")
    rows = []
    for mode in args.modes:
        compile_flag = f"train.compile={COMPILE[mode]}"
        try:
            config = load_experiment(
                REPO / "experiments" / path, [*base, compile_flag], registry=registry
            ).config
        except Exception as exc:  # a variant this checkout cannot build
            rows.append(failed(name, mode, "-", f"does not build: {exc}"))
            continue
        paths = routed_paths(config)
        dispatches = args.dispatch if paths else ["-"]
        variant_rows = []
        for dispatch in dispatches:
            if variant_rows and "error" in variant_rows[0]:  # e.g. a kernel that does not lower:
                reason = f"not run: the {variant_rows[0]['dispatch']} row failed"  # fail once
                variant_rows.append(failed(name, mode, dispatch, reason))
                continue
            overrides = [f"{p}.dispatch={dispatch}" for p in paths] if paths else []
            try:
                cfg = load_experiment(
                    REPO / "experiments" / path,
                    [*base, compile_flag, *overrides],
                    registry=registry,
                ).config
                row = {"variant": name, "mode": mode, "dispatch": dispatch}
                row.update(measure(cfg, registry, args))
                variant_rows.append(row)
            except Exception as exc:
                variant_rows.append(failed(name, mode, dispatch, describe(exc)))
            report_row(variant_rows[-1])
        measured = [r for r in variant_rows if "samples_per_s" in r]
        if measured:
            flops = measured[0]["flops_per_sample"]
            seq = measured[0]["seq_len"]
            twin_overrides, shape = dense_twin_overrides(config, flops, seq)
            try:
                twin_cfg = load_experiment(
                    REPO / "experiments" / path,
                    [*base, compile_flag, *twin_overrides],
                    registry=registry,
                ).config
                twin = {"variant": f"{name}:dense_twin", "mode": mode, "dispatch": "-", **shape}
                twin.update(measure(twin_cfg, registry, args))
            except Exception as exc:
                twin = failed(f"{name}:dense_twin", mode, "-", describe(exc))
            report_row(twin)
            for r in measured:
                r["dense_twin"] = {k: twin.get(k) for k in TWIN_KEYS}
            variant_rows.append(twin)
        rows.extend(variant_rows)
    return rows


TWIN_KEYS = ("layers", "hidden", "flops_per_sample", "samples_per_s", "error")


def failed(name: str, mode: str, dispatch: str, reason: str) -> dict[str, Any]:
    return {"variant": name, "mode": mode, "dispatch": dispatch, "error": reason}


def describe(exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1]
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text} ({Path(where.filename).name}:{where.lineno})"


def report_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['variant']} {row['mode']} {row['dispatch']}: {row['error']}", flush=True)
    else:
        print(
            f"{row['variant']} {row['mode']} {row['dispatch']}: {row['samples_per_s']:.0f} "
            f"samples/s, {row['flops_per_sample'] / 1e9:.2f} GFLOP/sample, warm-up "
            f"{row['warmup_s']:.1f} s",
            flush=True,
        )


def add_mfu(rows: list[dict[str, Any]], peak: float | None) -> None:
    for r in rows:
        if "samples_per_s" not in r:
            continue
        r["tflops"] = r["flops_per_sample"] * r["samples_per_s"] / 1e12
        r["mfu"] = r["tflops"] * 1e12 / peak if peak else None
        twin = r.get("dense_twin")
        if twin and twin.get("samples_per_s"):
            twin_rate = twin["flops_per_sample"] * twin["samples_per_s"]
            r["vs_dense"] = twin_rate / (r["tflops"] * 1e12)  # time per FLOP, variant / twin


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    def f(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        header,
        "",
        "| variant | mode | dispatch | batch | params | samples/s | active GFLOP/sample "
        "| TFLOP/s | MFU | dense twin (L x H) | twin GFLOP/sample | twin samples/s | twin MFU "
        "| vs dense | warm-up s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- | --- |",
    ]
    by_twin = {(r["variant"], r["mode"]): r for r in rows if r["variant"].endswith(":dense_twin")}
    for r in rows:
        if r["variant"].endswith(":dense_twin"):
            continue
        if "error" in r:
            lines.append(
                f"| {r['variant']} | {r['mode']} | {r['dispatch']} | skipped: {r['error'][:160]} "
                "| | | | | | | | | | | | |"
            )
            continue
        twin = by_twin.get((f"{r['variant']}:dense_twin", r["mode"]), {})
        shape = f"{twin['layers']} x {twin['hidden']}" if "layers" in twin else "-"
        if "error" in twin:
            shape = f"failed: {twin['error']}"
        tw_flops = twin.get("flops_per_sample")
        lines.append(
            f"| {r['variant']} | {r['mode']} | {r['dispatch']} | {r['batch']} "
            f"| {r['parameters'] / 1e6:.2f}M | {r['samples_per_s']:.0f} "
            f"| {r['flops_per_sample'] / 1e9:.2f} | {r['tflops']:.1f} | {f(r['mfu'], '.1%')} "
            f"| {shape} | {f(tw_flops and tw_flops / 1e9, '.2f')} "
            f"| {f(twin.get('samples_per_s'), '.0f')} | {f(twin.get('mfu'), '.1%')} "
            f"| {f(r.get('vs_dense'), '.2f')}x | {r['warmup_s']:.1f} "
            f"| {f(r['peak_mem_gib'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--modes", default="eager", help="eager,compiled,block")
    parser.add_argument("--dispatch", default="exact,static", help="for routed variants")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default: each config's own")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.device, args.precision = "cpu", "fp32"
        args.steps, args.warmup, args.batch = 2, 1, args.batch or 4
    args.modes = args.modes.split(",")
    if not set(args.modes) <= set(COMPILE):
        parser.error(f"--modes: one of {', '.join(COMPILE)} each, not {args.modes}")
    args.dispatch = args.dispatch.split(",")
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out = args.out or REPO / "benchmarks/results" / (
        "adr_throughput_smoke.json" if args.smoke else "adr_throughput.json"
    )
    registry = Plugins(autoload=False).registry
    device = torch.device(
        "cuda" if args.device != "cpu" and torch.cuda.is_available() else args.device
    )
    if device.type == "auto":
        device = torch.device("cpu")
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    t0 = time.perf_counter()
    rows = [r for n in names for r in run_variant(n, args, registry)]
    add_mfu(rows, peak)
    header = (
        f"ADR variants' training throughput on {name} (torch {torch.__version__}, "
        f"{args.precision}, {args.steps} timed steps after {args.warmup} warm-up; MFU on "
        f"active FLOPs against {(peak or 0) / 1e12:.1f} TFLOP/s)"
    )
    table = markdown(rows, header)
    result = {
        "device": name,
        "torch": torch.__version__,
        "precision": args.precision,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_tflops": (peak or 0) / 1e12,
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print("\n" + table)
    print(f"wrote {out} and {out.with_suffix('.md').name} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
