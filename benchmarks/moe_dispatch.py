"""DynMoE sparse dispatch against two dense baselines: forward + backward time (GPU).

Setup: N tokens (32k), width D (512), E SwiGLU experts of hidden width H, routed top-any by
``cosine_threshold`` whose thresholds are set per expert so that each fires for about k/E of
the tokens (mean k about 2). Timed, forward + backward of the layer on (1, N, D):

- ``dynmoe``: ponderkit's sparse dispatch (grouped GEMM on CUDA bf16; ``loop`` is the
  per-expert fallback, shown for reference), with ``dispatch: exact`` (pair buffers sized
  per batch: one host sync) and ``dispatch: static`` (sized for N * E pairs: no sync);
- (a) ``dense_ffn``: one SwiGLU of hidden width mean k * H (to a multiple of 16) on every
  token, i.e. the same active FLOPs without any routing;
- (b) ``dense_masked``: the research code's way: the same router, every expert on every token
  (batched matmul), outputs weighted by the masked routing weights and summed.

On CUDA every layer is also timed as a CUDA graph (``torch.cuda.make_graphed_callables``,
forward and backward captured once and replayed): launches then cost nothing on the host, so
the graph times are what the kernels cost. ``dynmoe`` with ``dispatch: static`` is the routed
layer that can be captured; (a) and (b) are captured too, the same treatment for all three.

``--compile`` runs all three through torch.compile (dynmoe breaks the graph at its one host
sync) and writes ``moe_dispatch_compiled.json``.

Targets: dynmoe <= 1.3x the time of (a), and >= 3x faster than (b). A correctness check first
compares the grouped GEMM against the loop fallback (outputs and gradients).

    python benchmarks/moe_dispatch.py                # GPU: N=32768, D=512, E=8,16,32
    python benchmarks/moe_dispatch.py --compile      # the same, every layer torch.compiled
    python benchmarks/moe_dispatch.py --smoke        # tiny CPU run of the same code

Prints a table and writes benchmarks/results/moe_dispatch.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import sync
from ponderkit import ForwardContext, use_triton
from ponderkit.plugins.dynmoe.dispatch import grouped_gemm_ok
from ponderkit.plugins.dynmoe.experts import SwiGLUExperts
from ponderkit.plugins.dynmoe.moe import DynMoE
from ponderkit.plugins.layers.swiglu import SwiGLU
from ponderkit.plugins.routing.cosine_threshold import CosineThresholdConfig, CosineThresholdRouter
from torch import Tensor, nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent


def build_dynmoe(
    args: argparse.Namespace, experts: int, x: Tensor, mode: str, dispatch: str = "exact"
) -> DynMoE:
    """A dynmoe layer whose thresholds make each expert fire for about k/E of ``x``."""
    cfg = CosineThresholdConfig(weighting="softmax", fallback="topk", sdl_weight=0.01)
    router = CosineThresholdRouter(args.d_model, experts, cfg)
    layer = DynMoE(router, SwiGLUExperts(experts, args.d_model, args.hidden, mode), dispatch)
    layer = layer.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        cos = router.cosine(x.float())  # (N, E)
        share = min(args.k / experts, 1.0)
        router.threshold.copy_(torch.quantile(cos.float(), 1.0 - share, dim=0))
    return layer


class DenseMasked(nn.Module):
    """Every expert on every token, then the masked routing weights: (b)."""

    def __init__(self, moe: DynMoE):
        super().__init__()
        self.router, self.experts = moe.router, moe.experts

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        x = h.reshape(-1, h.shape[-1])
        routing = self.router(x, ctx)
        xe = x.unsqueeze(0).expand(self.experts.gate_up.shape[0], -1, -1)  # (E, N, D)
        gate, up = torch.bmm(xe, self.experts.gate_up).chunk(2, dim=-1)  # (E, N, H) each
        y = torch.bmm(F.silu(gate) * up, self.experts.down)  # (E, N, D)
        w = routing.weights.t().unsqueeze(-1).to(y.dtype)  # (E, N, 1), 0 where masked off
        return (w * y).sum(0).view(h.shape)


class TensorsOnly(nn.Module):
    """``layer(h)`` without a ForwardContext: a CUDA graph takes and returns tensors only."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, h: Tensor) -> Tensor:
        return self.layer(h, None)


def graphed(layer: nn.Module, h: Tensor) -> nn.Module:
    """``layer``'s forward and backward captured as CUDA graphs (called as ``layer(h)``)."""
    return torch.cuda.make_graphed_callables(TensorsOnly(layer), (h,), num_warmup_iters=3)


def time_fwd_bwd(layer: Callable, h: Tensor, reps: int, warmup: int) -> float:
    """Median seconds of forward + backward (parameter and input gradients)."""
    grad = torch.randn_like(h)

    params = [h, *layer.parameters()] if isinstance(layer, nn.Module) else [h]

    def step() -> None:
        for p in params:  # as an optimizer's zero_grad(set_to_none=True) between steps
            p.grad = None
        out = layer(h) if isinstance(layer, TensorsOnly) else layer(h, ForwardContext())
        out.backward(grad)

    for _ in range(warmup):
        step()
    sync(h.device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        sync(h.device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def check_grouped_against_loop(args: argparse.Namespace, x: Tensor) -> dict:
    """Outputs and gradients of the grouped GEMM path (and Triton kernels) against the loop
    fallback with torch's own ops."""
    triton_setting = os.environ.get("PONDERKIT_TRITON", "1")
    torch.manual_seed(0)
    grouped = build_dynmoe(args, args.experts[0], x, "auto")
    static = build_dynmoe(args, args.experts[0], x, "auto", dispatch="static")
    loop = build_dynmoe(args, args.experts[0], x, "loop")
    loop.load_state_dict(grouped.state_dict())
    static.load_state_dict(grouped.state_dict())
    h = x[: min(4096, len(x))].unsqueeze(0)
    results = []
    for layer, kernels in ((grouped, "1"), (static, "1"), (loop, "0")):
        os.environ["PONDERKIT_TRITON"] = kernels  # the reference: torch only, no Triton
        hh = h.detach().clone().requires_grad_()
        out = layer(hh, ForwardContext())
        out.float().square().mean().backward()
        results.append((out.detach().float(), hh.grad.float(), layer.experts.gate_up.grad.float()))
    os.environ["PONDERKIT_TRITON"] = triton_setting

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).norm() / b.norm().clamp(min=1e-12))

    return {
        "grouped_gemm_used": grouped_gemm_ok(h, grouped.experts.gate_up),
        "triton_kernels_used": use_triton(h),
        "rel_err_out": rel(results[0][0], results[2][0]),
        "rel_err_grad_input": rel(results[0][1], results[2][1]),
        "rel_err_grad_weights": rel(results[0][2], results[2][2]),
        "static_rel_err_out": rel(results[1][0], results[2][0]),
        "static_rel_err_grad_input": rel(results[1][1], results[2][1]),
        "static_rel_err_grad_weights": rel(results[1][2], results[2][2]),
    }


def measure(args: argparse.Namespace, experts: int, x: Tensor) -> dict:
    torch.manual_seed(0)
    moe = build_dynmoe(args, experts, x, "auto")
    with torch.no_grad():
        mask = moe.router(x).mask
    mean_k = float(mask.sum(-1).float().mean())
    # a multiple of 16: cuBLAS picks slow kernels for some widths that are not (1624 took 1.20
    # ms against 0.98 for 1616), which would flatter the routed layer
    dense_hidden = max(16, round(mean_k * args.hidden / 16) * 16)
    dense = SwiGLU(args.d_model, dense_hidden).to(device=x.device, dtype=x.dtype)
    h = x.unsqueeze(0).detach().requires_grad_()
    static = build_dynmoe(args, experts, x, "auto", dispatch="static")
    layers = {"dynmoe": moe, "dense_ffn": dense, "dense_masked": DenseMasked(moe)}
    if args.compile:  # each layer through torch.compile (dynmoe graph-breaks at its one sync)
        layers = {name: torch.compile(layer) for name, layer in layers.items()}
    else:
        layers["dynmoe_static"] = static
    graph_error = None
    if x.is_cuda and not args.compile and args.graphs:
        try:
            layers["dynmoe_static_graph"] = graphed(static, h)
            layers["dense_ffn_graph"] = graphed(dense, h)
            layers["dense_masked_graph"] = graphed(DenseMasked(static), h)
        except Exception as exc:  # report it in the table rather than lose the eager rows
            graph_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            for name in ("dynmoe_static_graph", "dense_ffn_graph", "dense_masked_graph"):
                layers.pop(name, None)
            torch.cuda.synchronize()
    row = {
        "graph_error": graph_error,
        "experts": experts,
        "mean_k": mean_k,
        "tokens_without_expert_before_fallback": float((~mask.any(-1)).float().mean()),
        "dense_ffn_hidden": dense_hidden,
        **{
            f"{name}_ms": 1e3 * time_fwd_bwd(layer, h, args.reps, args.warmup)
            for name, layer in layers.items()
        },
    }
    if x.is_cuda and args.with_loop and not args.compile:
        loop = build_dynmoe(args, experts, x, "loop")
        row["dynmoe_loop_ms"] = 1e3 * time_fwd_bwd(loop, h, args.reps, args.warmup)
    # the targets, per way of running: each routed layer against (a) and (b) run the same way
    modes = {"eager": ("dynmoe", ""), "eager_static": ("dynmoe_static", "")}
    if "dynmoe_static_graph_ms" in row:
        modes["cuda_graph"] = ("dynmoe_static", "_graph")
    for mode, (name, suffix) in modes.items():
        if f"{name}{suffix}_ms" not in row:
            continue
        ours = row[f"{name}{suffix}_ms"]
        vs_a = ours / row[f"dense_ffn{suffix}_ms"]
        vs_b = row[f"dense_masked{suffix}_ms"] / ours
        row[mode] = {
            "vs_dense_ffn": vs_a,
            "speedup_vs_dense_masked": vs_b,
            "meets": vs_a <= 1.3 and vs_b >= 3.0,
        }
    return row


def profile(args: argparse.Namespace, experts: int, x: Tensor) -> None:
    """Where a dynmoe forward + backward spends its time: GPU kernels against wall clock."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    moe = build_dynmoe(args, experts, x, "auto", args.dispatch)
    if args.profile == "dense":  # (a), for the cost of its GEMMs and SwiGLU
        with torch.no_grad():
            mean_k = float(moe.router(x).mask.sum(-1).float().mean())
        hidden = max(16, round(mean_k * args.hidden / 16) * 16)
        moe = SwiGLU(args.d_model, hidden).to(device=x.device, dtype=x.dtype)
    h = x.unsqueeze(0).detach().requires_grad_()
    grad = torch.randn_like(h)
    params = [h, *moe.parameters()]

    def step() -> None:
        for p in params:  # as the timed steps: no gradient accumulation
            p.grad = None
        moe(h, ForwardContext()).backward(grad)

    for _ in range(args.warmup):
        step()
    sync(x.device)
    steps = 5
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    t = time.perf_counter()
    with torch_profile(activities=activities, with_stack=args.trace is not None) as prof:
        for _ in range(steps):
            step()
        sync(x.device)
    wall = (time.perf_counter() - t) / steps
    if args.trace is not None:
        prof.export_chrome_trace(str(args.trace))
    events = prof.key_averages()
    key = "self_device_time_total" if x.is_cuda else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=args.profile_rows))
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in kernels) / steps / 1e3 if kernels else float("nan")
    print(
        f"E={experts}: wall {1e3 * wall:.2f} ms/step (profiled), GPU kernels {busy:.2f} ms/step, "
        f"{len(kernels) / steps:.0f} kernels/step"
    )


def overhead(args: argparse.Namespace, experts: int, x: Tensor) -> None:
    """Host time per call of each piece of a dynmoe layer on few tokens (GPU work tiny, so the
    time per call is what the CPU spends launching it)."""
    from ponderkit.plugins.dynmoe.dispatch import combine, gather, grouped_linear, plan_dispatch

    x = x[:1024]
    moe = build_dynmoe(args, experts, x, "auto")
    dense = SwiGLU(args.d_model, args.hidden * 2).to(device=x.device, dtype=x.dtype)
    h = x.unsqueeze(0).detach().requires_grad_()
    routing = moe.router(x)
    plan = plan_dispatch(routing.weights, routing.mask)
    xs = gather(x, plan)
    hidden = grouped_linear(xs, moe.experts.gate_up, plan)
    ys = grouped_linear(hidden[:, : args.hidden].contiguous(), moe.experts.down, plan)
    grad = torch.randn_like(h)

    def fwd_bwd(layer: Callable) -> Callable:
        def run() -> None:
            layer(h, ForwardContext()).backward(grad)

        return run

    pieces = {
        "router forward": lambda: moe.router(x, ForwardContext()),
        "plan_dispatch (incl. sync)": lambda: plan_dispatch(routing.weights, routing.mask),
        "gather": lambda: gather(x, plan),
        "grouped_linear": lambda: grouped_linear(xs, moe.experts.gate_up, plan),
        "combine": lambda: combine(ys, plan),
        "layer forward": lambda: moe(h, ForwardContext()),
        "layer forward + backward": fwd_bwd(moe),
        "dense forward + backward": fwd_bwd(dense),
    }
    print(f"host time per call, N={len(x)} tokens, E={experts}")
    for name, fn in pieces.items():
        for _ in range(5):
            fn()
        sync(x.device)
        t = time.perf_counter()
        for _ in range(100):
            fn()
        sync(x.device)
        print(f"{name:>28}: {1e6 * (time.perf_counter() - t) / 100:8.1f} us")


def capture_check(args: argparse.Namespace, experts: int, x: Tensor) -> None:
    """Which pieces of a static dynmoe forward a CUDA graph can capture, each on its own with
    ``torch.cuda.graph`` (forward and backward together are captured by
    ``make_graphed_callables`` in the timed ``cuda_graph`` rows; a plain capture of a backward
    pass trips over autograd's gradient accumulation on another stream)."""
    from ponderkit.plugins.dynmoe.dispatch import combine, gather, grouped_linear, plan_dispatch

    moe = build_dynmoe(args, experts, x, "auto", dispatch="static")
    h = x.unsqueeze(0).detach().requires_grad_()
    routing = moe.router(x)
    plan = plan_dispatch(routing.weights.detach(), routing.mask, len(x) * experts)
    xs = gather(x, plan)
    gu = grouped_linear(xs, moe.experts.gate_up, plan)
    from ponderkit import swiglu

    hidden = swiglu(gu, plan.filled)
    ys = grouped_linear(hidden, moe.experts.down, plan)
    pieces = {
        "router forward": lambda: moe.router(x),
        "plan_dispatch static": lambda: plan_dispatch(
            routing.weights.detach(), routing.mask, len(x) * experts
        ),
        "gather": lambda: gather(x, plan),
        "grouped_linear": lambda: grouped_linear(xs, moe.experts.gate_up, plan),
        "swiglu rows": lambda: swiglu(gu, plan.filled),
        "combine": lambda: combine(ys, plan),
        "layer forward": lambda: moe(h, None),
    }
    for name, fn in pieces.items():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            print(f"capture {name:>26}: ok")
        except Exception as exc:  # report and go on with the next piece
            print(f"capture {name:>26}: FAILED {type(exc).__name__}: {str(exc)[:200]}")
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=768, help="each expert's SwiGLU width")
    parser.add_argument("--experts", default="8,16,32")
    parser.add_argument("--k", type=float, default=2.0, help="target mean experts per token")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--no-loop",
        dest="with_loop",
        action="store_false",
        help="skip timing the loop fallback on CUDA",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every layer")
    parser.add_argument(
        "--no-graphs", dest="graphs", action="store_false", help="skip the CUDA-graph timings"
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="dynmoe",
        choices=["dynmoe", "dense"],
        help="profile dynmoe at the first E (or the dense layer (a)) instead of the table",
    )
    parser.add_argument("--overhead", action="store_true", help="host time per piece")
    parser.add_argument(
        "--capture-check", action="store_true", help="which pieces a CUDA graph captures"
    )
    parser.add_argument("--trace", type=Path, default=None, help="with --profile: a trace file")
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument("--dispatch", default="exact", help="with --profile: exact or static")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU, a few reps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.d_model, args.hidden, args.experts = 1024, 64, 96, "4,8"
        args.reps, args.warmup, args.device = 3, 1, "cpu"
    args.experts = [int(e) for e in args.experts.split(",")]
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    suffix = ("_smoke" if args.smoke else "") + ("_compiled" if args.compile else "")
    default_out = f"moe_dispatch{suffix}.json"
    out_path = args.out or REPO / "benchmarks" / "results" / default_out

    x = torch.randn(args.tokens, args.d_model, generator=torch.Generator().manual_seed(0))
    x = x.to(device=device, dtype=dtype)
    if args.capture_check:
        capture_check(args, args.experts[0], x)
        return
    if args.profile or args.overhead:
        (overhead if args.overhead else profile)(args, args.experts[0], x)
        return
    check = check_grouped_against_loop(args, x)
    rows = [measure(args, e, x) for e in args.experts]
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    result = {
        "device": name,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "tokens": args.tokens,
        "d_model": args.d_model,
        "expert_hidden": args.hidden,
        "target_k": args.k,
        "compiled": args.compile,
        "check_grouped_vs_loop": check,
        "rows": rows,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nDynMoE dispatch, fwd+bwd, N={args.tokens}, D={args.d_model}, expert hidden "
        f"{args.hidden}, {dtype}, {'torch.compile' if args.compile else 'eager'}, {name}, "
        f"torch {torch.__version__}"
    )
    print(
        "grouped vs loop: "
        + ", ".join(
            f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in check.items()
        )
    )
    head = (
        f"{'E':>4}{'mean k':>8}  {'mode':<13}{'dynmoe ms':>10}{'(a) dense':>11}{'(b) masked':>12}"
        f"{'vs (a)':>8}{'vs (b)':>8}  targets (<=1.3x (a), >=3x faster than (b))"
    )
    print(head)
    for r in rows:
        for mode, (name, suffix) in {
            "eager": ("dynmoe", ""),
            "eager_static": ("dynmoe_static", ""),
            "cuda_graph": ("dynmoe_static", "_graph"),
        }.items():
            if mode not in r:
                continue
            m = r[mode]
            print(
                f"{r['experts']:>4}{r['mean_k']:>8.2f}  {mode:<13}{r[f'{name}{suffix}_ms']:>10.2f}"
                f"{r[f'dense_ffn{suffix}_ms']:>11.2f}{r[f'dense_masked{suffix}_ms']:>12.2f}"
                f"{m['vs_dense_ffn']:>7.2f}x{m['speedup_vs_dense_masked']:>7.2f}x  "
                f"{'met' if m['meets'] else 'MISSED'}"
            )
        if r["graph_error"]:
            print(f"{'':>14}CUDA graph capture failed: {r['graph_error']}")
        if "dynmoe_loop_ms" in r:
            print(f"{'':>14}loop fallback {r['dynmoe_loop_ms']:.2f} ms")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
