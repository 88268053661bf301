"""DynSMLoRA against its plain base attention and against DynSMHA: forward + backward time and
peak memory (GPU; ``--smoke`` runs tiny sizes on the CPU).

Layers, each on (B, T, D) with B = tokens // T, RoPE, non-causal:

- ``attention``: the plain base attention (MHA, ``heads`` x ``head_dim``), no routing;
- ``dynsmlora``: the same base plus E rank-r deltas on q, k, v and o through the dense identity
  B_cat (repeat(w, r) * (A_cat x)), routed top-2 by ``topk_softmax``;
- ``dynsmha``: E full expert head sets (q/k/v/o each D x D) routed top-2 by the same router,
  sparse dispatch (grouped GEMM on CUDA bf16).

T = 97 (9x9 Sudoku + 16 prefix positions) and T = 916 (30x30 maze + prefix); E in 8..32 and r
in 8..32. Time is the median of ``reps`` forward + backward passes after ``warmup``; memory is
the peak allocated during one pass minus what was allocated before it (CUDA only). Target
(issue 14): dynsmlora <= 1.25x attention's time at r = 8, E = 16, T = 916, and less memory
than dynsmha.

    python benchmarks/dynsmlora.py            # GPU: 32k tokens, D = 512, bf16 autocast
    python benchmarks/dynsmlora.py --smoke    # tiny CPU run of the same code

Prints a table and writes benchmarks/results/dynsmlora.json (``--out`` to change).
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
from ponderkit import ForwardContext
from ponderkit.plugins.dynmoe.smha import DynSMHA, DynSMHAConfig
from ponderkit.plugins.dynsmlora.mixer import DynSMLoRA, DynSMLoRAConfig
from ponderkit.plugins.layers.attention import Attention
from ponderkit.plugins.routing.topk_softmax import TopKSoftmaxConfig, TopKSoftmaxRouter
from torch import nn

REPO = Path(__file__).resolve().parent.parent


def make(kind: str, args: argparse.Namespace, experts: int, rank: int) -> nn.Module:
    d, heads, head_dim = args.d_model, args.heads, args.d_model // args.heads
    router = TopKSoftmaxRouter(d, experts, TopKSoftmaxConfig(top_k=args.top_k))
    if kind == "attention":
        return Attention(d, heads, head_dim, False)
    if kind == "dynsmlora":
        cfg = DynSMLoRAConfig(experts=experts, rank=rank, heads=heads)
        layer = DynSMLoRA(router, Attention(d, heads, head_dim, False), cfg, d)
        with torch.no_grad():  # B away from its zero init: the same work, realistic values
            for param in layer.lora_parameters():
                if param.dim() == 3:
                    param.normal_(0.0, 0.02)
        return layer
    cfg = DynSMHAConfig(experts=experts, heads=heads, head_dim=head_dim)
    return DynSMHA(router, cfg, d, head_dim)


def measure(layer: nn.Module, h: torch.Tensor, args: argparse.Namespace) -> dict:
    device = h.device
    ctx = ForwardContext(positions="rope")
    grad = torch.randn_like(h)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        x = h.detach().requires_grad_()
        with autocast:
            out = layer(x, ctx)
        out.backward(grad.to(out.dtype))
        layer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    memory = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        memory = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times = []
    for _ in range(args.reps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"ms": 1e3 * statistics.median(times), "peak_mib": memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq-lens", default="97,916")
    parser.add_argument("--experts", default="8,16,32")
    parser.add_argument("--ranks", default="8,16,32")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU, a few reps")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/dynsmlora.json")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.d_model, args.heads = 512, 64, 4
        args.experts, args.ranks, args.reps, args.warmup, args.device = "4,8", "4,8", 3, 1, "cpu"
        args.out = args.out.with_name("dynsmlora_smoke.json")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for t in (int(v) for v in args.seq_lens.split(",")):
        b = max(1, args.tokens // t)
        h = torch.randn(b, t, args.d_model, device=device)
        base = measure(make("attention", args, 1, 1).to(device), h, args)
        for e in (int(v) for v in args.experts.split(",")):
            smha = measure(make("dynsmha", args, e, 1).to(device), h, args)
            for r in (int(v) for v in args.ranks.split(",")):
                lora = measure(make("dynsmlora", args, e, r).to(device), h, args)
                row = {
                    "T": t, "B": b, "E": e, "r": r,
                    "attention_ms": base["ms"], "dynsmlora_ms": lora["ms"],
                    "dynsmha_ms": smha["ms"], "lora_vs_attention": lora["ms"] / base["ms"],
                    "attention_mib": base["peak_mib"], "dynsmlora_mib": lora["peak_mib"],
                    "dynsmha_mib": smha["peak_mib"],
                }  # fmt: skip
                rows.append(row)
                mem = (
                    "n/a"
                    if lora["peak_mib"] is None
                    else f"{base['peak_mib']:.0f}/{lora['peak_mib']:.0f}/{smha['peak_mib']:.0f}"
                )
                print(
                    f"T={t:4d} B={b:4d} E={e:2d} r={r:2d}  attention {base['ms']:8.2f} ms  "
                    f"dynsmlora {lora['ms']:8.2f} ms ({row['lora_vs_attention']:.2f}x)  "
                    f"dynsmha {smha['ms']:8.2f} ms  peak MiB attn/lora/smha {mem}",
                    flush=True,
                )
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "tokens": args.tokens, "d_model": args.d_model, "heads": args.heads, "top_k": args.top_k,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "reps": args.reps,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
