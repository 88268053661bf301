"""TRM training throughput and MFU, eager vs torch.compile (GPU; runs on CPU for a smoke test).

Recipe: the attention TRM of the paper (D=512, 8 heads, 2 layers, T=3, n=6, 81 Sudoku tokens +
16 puzzle-prefix positions), batch 768, bf16 autocast, one deep-supervision step per
optimizer step. FLOPs per optimizer step are counted by torch's FlopCounterMode over one real
step, so no-grad passes count forward only and the graded pass forward + backward.

    python benchmarks/trm_throughput.py [--batch 768] [--steps 30] [--modes eager,compiled]

Prints a table and writes benchmarks/results/trm_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from ponderkit.engine.nn import parameter_count
from ponderkit.engine.train import Trainer
from ponderkit.experiment import load_experiment
from ponderkit.loading import Plugins
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 tensor-core peak, SXM


def synthetic_batches(batch: int, seq: int, vocab: int, device: torch.device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    pool = [
        {
            "inputs": torch.randint(1, vocab, (batch, seq), generator=gen).to(device),
            "labels": torch.randint(1, vocab, (batch, seq), generator=gen).to(device),
        }
        for _ in range(4)
    ]
    i = 0
    while True:
        yield pool[i % len(pool)]
        i += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(mode: str, args: argparse.Namespace, registry) -> dict:
    overrides = [
        f"train.batch_size={args.batch}",
        f"train.precision={args.precision}",
        f"train.compile={'true' if mode == 'compiled' else 'false'}",
        f"train.device={args.device}",
    ]
    cfg = load_experiment(
        REPO / "experiments" / "trm_sudoku_att.yaml", overrides, registry=registry
    ).config
    trainer = Trainer(cfg, registry, quiet=True)
    device = trainer.device
    batches = synthetic_batches(args.batch, trainer.task.seq_len, trainer.task.vocab_size, device)
    step = lambda: trainer.schedule.train_step(trainer.model, batches, trainer)  # noqa: E731
    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync(device)
    t_compile = time.perf_counter() - t_compile
    flops = None
    if mode == "eager":
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    sync(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    return {
        "mode": mode,
        "median_step_s": median,
        "samples_per_s": args.batch / median,
        "warmup_s": t_compile,
        "flops_per_step": flops,
        "parameters": parameter_count(trainer.model),
        "peak_mem_gib": (
            torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        ),
    }


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
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/trm_throughput.json")
    args = parser.parse_args()
    registry = Plugins(autoload=False).registry
    rows = [measure(m, args, registry) for m in args.modes.split(",")]
    flops = next((r["flops_per_step"] for r in rows if r["flops_per_step"]), None)
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    peak_sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    peak_meas = matmul_peak(device)
    for r in rows:
        r["flops_per_step"] = flops
        achieved = flops / r["median_step_s"] if flops else None
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nTRM attention recipe, batch {args.batch}, {args.precision}, {name}, torch "
        f"{torch.__version__}; GFLOP per optimizer step: {flops / 1e9 if flops else 0:.1f}"
    )
    print(
        f"{'mode':<10}{'step ms':>10}{'samples/s':>12}{'TFLOP/s':>10}{'MFU(sheet)':>12}"
        f"{'MFU(matmul)':>13}{'warmup s':>10}"
    )
    for r in rows:
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        print(
            f"{r['mode']:<10}{r['median_step_s'] * 1e3:>10.1f}{r['samples_per_s']:>12.0f}"
            f"{fmt(r['tflops'], '.1f'):>10}{fmt(r['mfu_datasheet'], '.1%'):>12}"
            f"{fmt(r['mfu_measured_peak'], '.1%'):>13}{r['warmup_s']:>10.1f}"
        )


if __name__ == "__main__":
    main()
