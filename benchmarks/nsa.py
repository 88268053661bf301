"""NSA against full attention, and an EAVI step against a teacher-forcing step (GPU; runs on
CPU with --tiny as a smoke test).

1. Forward + backward of one ``nsa`` mixer (FlexAttention block masks, compiled on CUDA)
   against one ``attention`` mixer (SDPA, flash on CUDA), both causal, bf16 autocast, same
   width and heads, for T = 1k..16k at a fixed number of tokens per batch; prints the time
   ratio and the crossover length (the shortest T where NSA is faster).
2. One optimizer step of ``eavi`` (greedy generation of the whole output with the KV cache
   under no_grad, then one parallel pass and one backward) against one ``teacher_forcing``
   step, with the model of experiments/seed003_nsa_dynmoe.yaml on serialized sorting whose
   output is as long as an ARC grid (900 tokens), once per decode mode of ``--eavi-decode``
   (eavi's ``decode`` field: eager = the dynamic KV cache, static = preallocated cache with
   static shapes, graph = one decode step captured in a CUDA graph). ``--eavi-model dense``
   swaps the mixer for causal ``attention`` and the DynMoE for a dense ``swiglu`` (same width
   and depth): NSA reads the dynamic cache and DynMoE's dispatch syncs with the host, so with
   the seed003 model ``static``/``graph`` fall back (``ran`` in the JSON says which mode ran).

    python benchmarks/nsa.py                       # GPU: both parts
    python benchmarks/nsa.py --skip-attention --eavi-model dense --eavi-decode eager,static,graph
    python benchmarks/nsa.py --tiny                # CPU smoke test (also --smoke)

Writes benchmarks/results/nsa.json (nsa_tiny.json with --tiny; ``_dense`` added with
--eavi-model dense).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from common import sync
from ponderkit import BuildContext, ForwardContext
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.train import Trainer

REPO = Path(__file__).resolve().parent.parent


def timed(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls (compilation happens there)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mixer(registry, spec: dict, d_model: int, device: torch.device) -> torch.nn.Module:
    from ponderkit.contract.config import Structurer

    s = Structurer(registry)
    built = s.structure_spec("mixer", spec, ())
    assert built is not None, s.issues
    return BuildContext(registry, d_model=d_model).build(built).to(device)


def attention_table(args, registry, device) -> list[dict]:
    nsa_spec = {"name": "nsa", "heads": args.heads, "block": args.block,
                "selected": args.selected, "window": args.window, "causal": True, "tile": args.tile,
                "kernel": "flex" if device.type == "cuda" else "masked"}  # fmt: skip
    full_spec = {"name": "attention", "heads": args.heads, "causal": True}
    rows = []
    for t in args.lengths:
        b = max(1, args.tokens // t)
        h = torch.randn(b, t, args.d_model, device=device, requires_grad=True)
        result = {"T": t, "batch": b}
        for name, spec in (("nsa", nsa_spec), ("sdpa", full_spec)):
            module = mixer(registry, spec, args.d_model, device)

            def step(module=module, h=h) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = module(h, ForwardContext(positions="rope"))
                out.float().square().mean().backward()

            result[f"{name}_ms"] = 1e3 * timed(step, device, args.warmup, args.reps)
        result["ratio"] = result["nsa_ms"] / result["sdpa_ms"]
        rows.append(result)
        print(f"T={t:>6} batch={b:>3}  nsa {result['nsa_ms']:9.2f} ms  sdpa "
              f"{result['sdpa_ms']:9.2f} ms  nsa/sdpa {result['ratio']:.2f}", flush=True)  # fmt: skip
    return rows


def schedule_steps(args, registry, device) -> dict:
    out_len = args.output_len
    overrides = [
        f"task={{name: seq2seq, task: {{name: sort, length: {out_len}, values: 10}}}}",
        f"train.batch_size={args.eavi_batch}",
        f"train.device={device.type}",
        f"train.precision={'bf16' if device.type == 'cuda' else 'fp32'}",
        "callbacks=[]",
        *args.model_overrides,
    ]
    if args.eavi_model == "dense":
        overrides += [
            f"model.recursion.block.mixer={{name: attention, heads: {args.heads}, causal: true}}",
            "model.recursion.block.ffn={name: swiglu, expansion: 4}",
        ]
    result = {"output_len": out_len, "batch": args.eavi_batch, "model": args.eavi_model}
    decode = {}
    schedules = [("teacher_forcing", None)] + [
        (f"{{name: eavi, decode: {mode}}}", mode) for mode in args.eavi_decode
    ]
    for schedule, mode in schedules:
        cfg = load_experiment(
            REPO / "experiments" / "seed003_nsa_dynmoe.yaml",
            [*overrides, f"schedule={schedule}"],
            registry=registry,
        ).config
        trainer = Trainer(cfg, registry, quiet=True)
        batches = trainer._batches()
        step = lambda t=trainer, bs=batches: t.schedule.train_step(t.model, bs, t)  # noqa: E731
        seconds = timed(step, device, args.warmup, max(2, args.reps // 4))
        if mode is None:
            result["teacher_forcing_s"] = seconds
        else:
            ran = trainer.schedule.decoder.mode  # after any fallback; graph needs CUDA
            ran = "eager" if ran == "dynamic" else "static" if device.type != "cuda" else ran
            ratio = seconds / result["teacher_forcing_s"]
            decode[mode] = {"eavi_s": seconds, "ratio": ratio, "ran": ran}
            print(f"output {out_len} tokens, batch {args.eavi_batch}: teacher forcing "
                  f"{result['teacher_forcing_s']:.3f} s/step, eavi decode {mode} (ran {ran}) "
                  f"{seconds:.3f} s/step (generation included), eavi/tf {ratio:.2f}",
                  flush=True)  # fmt: skip
        del trainer
    first = decode[args.eavi_decode[0]]
    result["eavi_s"], result["ratio"] = first["eavi_s"], first["ratio"]  # the first mode's
    result["decode"] = decode
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", "--smoke", action="store_true", help="CPU smoke test sizes")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--tile", type=int, default=128, help="FlexAttention mask tile (positions)")
    p.add_argument("--selected", type=int, default=8)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--tokens", type=int, default=16384, help="tokens per batch (B = tokens // T)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--output-len", type=int, default=900)
    p.add_argument("--eavi-batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--skip-eavi", action="store_true")
    p.add_argument("--skip-attention", action="store_true", help="only the eavi/tf part")
    p.add_argument(
        "--eavi-decode",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        default=["eager", "static", "graph"],
        help="eavi decode modes to time, comma-separated (eager,static,graph,auto)",
    )
    p.add_argument(
        "--eavi-model",
        choices=["seed003", "dense"],
        default="seed003",
        help="seed003: nsa + dynmoe as configured; dense: causal attention + swiglu",
    )
    args = p.parse_args()
    bad = set(args.eavi_decode) - {"eager", "static", "graph", "auto"}
    if bad or not args.eavi_decode:
        p.error(f"--eavi-decode takes eager, static, graph, auto; got {args.eavi_decode}")
    args.model_overrides = []
    if args.tiny:
        args.d_model, args.heads, args.block, args.selected, args.window = 32, 2, 8, 2, 16
        args.tile = 16
        args.tokens, args.lengths, args.warmup, args.reps = 256, [64, 128, 256], 1, 3
        args.output_len, args.eavi_batch = 24, 4
        args.model_overrides = [
            "model.d_model=32",
            "model.recursion.layers=1",
            "model.recursion.block.mixer={name: nsa, heads: 2, block: 4, selected: 2, "
            "window: 8, causal: true}",
            "model.recursion.block.ffn={name: swiglu, expansion: 2}",
        ]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry = Plugins(autoload=False).registry
    # every length compiles FlexAttention anew for both masks (forward and backward): past
    # dynamo's default limit of 8 it falls back to the unfused kernel (seen at T=16k on the H200)
    torch._dynamo.config.recompile_limit = 64
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else platform.machine()}")
    rows = [] if args.skip_attention else attention_table(args, registry, device)
    faster = [r["T"] for r in rows if r["ratio"] <= 1.0]
    crossover = min(faster) if faster else None
    print(f"crossover: {'T=' + str(crossover) if crossover else 'none in the lengths measured'}")
    steps = None if args.skip_eavi else schedule_steps(args, registry, device)
    results = {
        "device": str(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "model_overrides"},
        "attention": rows,
        "crossover_T": crossover,
        "eavi_vs_teacher_forcing": steps,
    }
    name = "nsa" + ("_tiny" if args.tiny else "") + ("_dense" if args.eavi_model == "dense" else "")
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
