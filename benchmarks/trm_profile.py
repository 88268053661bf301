"""Where one TRM optimizer step's time goes (GPU; runs on CPU for a smoke test): the GPU's busy
time by kernel family (GEMM, attention, Triton-generated, other) against the step's wall time,
and the largest kernels.

The same trainer and synthetic batches as ``trm_throughput.py`` (one deep-supervision step per
optimizer step). A step whose kernels add up to much less than its wall time waits on the host
(Python, launches, synchronisations); one whose GEMMs dominate is bound by them.

    python benchmarks/trm_profile.py --recipe maze --mode block --batch 64 \
        --override model.recursion.L_cycles=6
    python benchmarks/trm_profile.py --smoke

Prints a markdown table; ``--out FILE`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import add_device_options, sync, synthetic_batches
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.train import Trainer
from torch.profiler import ProfilerActivity, profile
from trm_throughput import COMPILE, RECIPES, REPO, SMOKE

FAMILIES = (  # first match wins, on the lower-cased kernel name (a Triton kernel that fuses
    # the casts around attention is named after it, and is element-wise work)
    ("triton", ("triton",)),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul", "mm_")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="maze", choices=sorted(RECIPES))
    parser.add_argument("--mode", default="block", choices=sorted(COMPILE))
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    add_device_options(parser, "a tiny TRM on the CPU")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.precision, args.batch, args.steps, args.warmup = "cpu", "fp32", 4, 1, 1
    overrides = [
        f"train.batch_size={args.batch}",
        f"train.precision={args.precision}",
        f"train.compile={COMPILE[args.mode]}",
        f"train.device={args.device}",
        *args.override,
        *(SMOKE if args.smoke else []),
    ]
    registry = Plugins(autoload=False).registry
    cfg = load_experiment(REPO / "experiments" / RECIPES[args.recipe], overrides, registry=registry)
    trainer = Trainer(cfg.config, registry, quiet=True)
    device = trainer.device
    batches = synthetic_batches(args.batch, trainer.task.seq_len, trainer.task.vocab_size, device)

    def step() -> None:
        trainer.schedule.train_step(trainer.model, batches, trainer)

    for _ in range(args.warmup):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        wall = (time.perf_counter() - t) / args.steps
    kernels: dict[str, list[float]] = {}  # name -> [device microseconds, calls]
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels.setdefault(ev.name, [0.0, 0])
            k[0] += getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0)
            k[1] += 1
    busy = sum(v[0] for v in kernels.values()) / 1e6 / args.steps
    fams: dict[str, list[float]] = {}
    for name, (us, calls) in kernels.items():
        f = fams.setdefault(family(name), [0.0, 0])
        f[0] += us / 1e6 / args.steps
        f[1] += calls / args.steps
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]
    result = {
        "recipe": args.recipe,
        "mode": args.mode,
        "batch": args.batch,
        "overrides": args.override,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "wall_s_per_step": wall,
        "gpu_busy_s_per_step": busy,
        "families": {f: {"s_per_step": s, "launches_per_step": n} for f, (s, n) in fams.items()},
        "top": [
            {"kernel": n[:120], "s_per_step": us / 1e6 / args.steps, "calls": c / args.steps}
            for n, (us, c) in top
        ],
    }
    print(f"{args.recipe} {args.mode} batch {args.batch} {' '.join(args.override)}")
    print(f"wall {wall * 1e3:.1f} ms/step, GPU busy {busy * 1e3:.1f} ms/step "
          f"({busy / wall:.0%})")  # fmt: skip
    print("\n| family | ms/step | share of busy | launches/step |\n| --- | --- | --- | --- |")
    for f, (s, n) in sorted(fams.items(), key=lambda kv: -kv[1][0]):
        print(f"| {f} | {s * 1e3:.1f} | {s / max(busy, 1e-12):.0%} | {n:.0f} |")
    print("\n| kernel | ms/step | calls/step |\n| --- | --- | --- |")
    for row in result["top"]:
        print(f"| {row['kernel'][:80]} | {row['s_per_step'] * 1e3:.2f} | {row['calls']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
