"""The Triton kernels of sparse dispatch one at a time, against the memory they must move (GPU).

For a routing of N tokens over E experts with about k active per token (a random mask: one
expert per token, and each other pair on with probability (k - 1) / E), times with CUDA
events, the GPU's time only:

- ``plan``: :func:`plan_dispatch` with a capacity (position map, offsets, slots);
- ``scatter``: x (N, D) -> expert-sorted rows (P, D);
- ``combine``: per token, the weighted sum of its rows (P, D) -> (N, D);
- ``scatter_bwd``: per token, the sum of its rows (the input gradient);
- ``combine_bwd``: row gradients (P, D) and weight gradients (N, E).

Each runs with several token-block sizes (tokens per program, ``--tokens-per-program``), and
its time is shown with the bandwidth it reaches over the bytes it must read and write (the
H200's HBM3e peak is 4.8 TB/s; a copy reaches about 3.3). The fastest block size is what
``ponderkit.plugins.dynmoe.dispatch_kernels.TOKENS`` should hold. Then, on CUDA:

- the expert GEMMs: torch's grouped GEMM against a dense GEMM of the same FLOPs;
- the ``cosine_threshold`` kernels over their launch settings
  (``ponderkit.plugins.routing.cosine_kernel.TUNING``).

    python benchmarks/dispatch_kernels.py                   # N=32768, D=512, E=8,16,32
    python benchmarks/dispatch_kernels.py --smoke           # tiny, under TRITON_INTERPRET=1

Prints a table and writes benchmarks/results/dispatch_kernels.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import attrs
import torch
from ponderkit.plugins.dynmoe import dispatch_kernels as kernels
from ponderkit.plugins.dynmoe.dispatch import _GROUPED_MM, combine, gather, plan_dispatch
from ponderkit.plugins.routing.cosine_kernel import TUNING, CosineRoute
from ponderkit.plugins.routing.cosine_threshold import CosineThresholdConfig, CosineThresholdRouter
from torch.nn import functional as F

REPO = Path(__file__).resolve().parent.parent


def time_us(fn: Callable[[], object], reps: int) -> float:
    """Microseconds per call of ``fn``, the GPU's time only: ``reps`` calls are queued behind
    a sleeping kernel, so the host's launch costs overlap it, and timed with CUDA events
    (wall clock per call on CPU)."""
    for _ in range(3):
        fn()
    if not torch.cuda.is_available():
        import time

        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e6 * (time.perf_counter() - t) / reps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        torch.cuda._sleep(100_000_000)  # ~50 ms: time for the host to queue every call
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        best = min(best, 1e3 * start.elapsed_time(end) / reps)
    return best


def routing(n: int, e: int, k: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(n, e, generator=gen) < (k - 1) / e
    mask[torch.arange(n), torch.randint(0, e, (n,), generator=gen)] = True  # k >= 1
    weights = torch.rand(n, e, generator=gen) * mask
    weights = weights / weights.sum(-1, keepdim=True)
    return weights.to(device), mask.to(device)


def measure(args: argparse.Namespace, e: int, device: torch.device, dtype: torch.dtype) -> list:
    n, d = args.tokens, args.d_model
    weights, mask = routing(n, e, args.k, device)
    x = torch.randn(n, d, device=device, dtype=dtype)
    plan = plan_dispatch(weights, mask, n * e)
    pairs = int(mask.sum())
    ys = torch.randn(plan.rows, d, device=device, dtype=dtype)
    g = torch.randn(n, d, device=device, dtype=dtype)
    size = torch.tensor([], dtype=dtype).element_size()
    row, idx = d * size, 4 * 3  # bytes of a row; of a pair's slot entries (row, expert, k)
    # what each must read + write at the least
    need = {
        "plan": n * e * (1 + 4 + 4 + 4),  # mask in; position map and the two slot maps out
        "scatter": n * row + pairs * (row + idx),
        "combine": pairs * (row + idx + 4) + n * row,
        "scatter_bwd": pairs * (row + idx) + n * row,
        "combine_bwd": n * row + pairs * (2 * row + idx + 8),
    }
    wq = weights.requires_grad_()
    ysq = ys.clone().requires_grad_()
    out = combine(ysq, attrs.evolve(plan, weights=wq))
    fns = {
        "plan": lambda: plan_dispatch(weights, mask, n * e),
        "scatter": lambda: gather(x, plan),
        "combine": lambda: combine(ys, plan),
        "scatter_bwd": lambda: kernels.gather_sum(ys, plan.slots, None, dtype),
        "combine_bwd": lambda: torch.autograd.grad(out, (ysq, wq), g, retain_graph=True),
    }
    rows = []
    for name, fn in fns.items():
        sizes = args.tokens_per_program if name != "plan" else [0]
        for tokens in sizes:
            key = {"scatter_bwd": "gather_sum", "combine": "gather_sum"}.get(name, name)
            saved = dict(kernels.TOKENS)
            if tokens:
                kernels.TOKENS[key] = tokens
            us = time_us(fn, args.reps)
            kernels.TOKENS.update(saved)
            rows.append(
                {
                    "experts": e,
                    "kernel": name,
                    "tokens_per_program": tokens or None,
                    "us": us,
                    "bytes": need[name],
                    "tb_per_s": need[name] / us / 1e6,
                }
            )
    return rows


def gemms(args: argparse.Namespace, e: int, device: torch.device) -> list:
    """Forward + backward of the two expert GEMMs as one grouped GEMM each, with the expert
    weights stored (E, in, out) (ponderkit's layout) or (E, out, in) (nn.Linear's, passed
    transposed), or with the rows in a buffer of N * E rows (``static``), against one dense GEMM of the same rows and FLOPs (weight (out, in), as
    nn.Linear)."""
    weights, mask = routing(args.tokens, e, args.k, device)
    plan = plan_dispatch(weights, mask)
    p, d, h = plan.rows, args.d_model, args.hidden
    bf16 = dict(device=device, dtype=torch.bfloat16)
    rows = []
    for name, (k, n) in {"gate_up": (d, 2 * h), "down": (h, d)}.items():
        a = torch.randn(p, k, **bf16, requires_grad=True)
        g = torch.randn(p, n, **bf16)
        # the same rows at the start of a buffer sized for N * E pairs (dispatch: static)
        a_cap = torch.zeros(args.tokens * e, k, **bf16)
        a_cap[:p] = a.detach()
        a_cap.requires_grad_()
        g_cap = torch.zeros(args.tokens * e, n, **bf16)
        g_cap[:p] = g
        cases = {
            "grouped (E,in,out)": torch.randn(e, k, n, **bf16),
            "grouped static": torch.randn(e, k, n, **bf16),
            "grouped (E,out,in)^T": torch.randn(e, n, k, **bf16),
            "dense (out,in)": torch.randn(n, k, **bf16),
        }
        for case, w in cases.items():
            w.requires_grad_()

            static = case == "grouped static"

            def fn(a=a_cap if static else a, w=w, g=g_cap if static else g, case=case) -> None:
                a.grad = w.grad = None  # no accumulation kernels
                if case.startswith("dense"):
                    out = F.linear(a, w)
                else:
                    b = w.transpose(1, 2) if "^T" in case else w
                    out = _GROUPED_MM(a, b, offs=plan.offsets)
                out.backward(g)

            us = time_us(fn, args.reps)
            flops = 3 * 2 * p * k * n
            rows.append(
                {"experts": e, "gemm": name, "case": case, "us": us, "tflops": flops / us / 1e6}
            )
    return rows


def router(args: argparse.Namespace, e: int, device: torch.device) -> list:
    """The cosine_threshold kernels, forward and backward (with the backward's torch ops),
    over launch settings (:data:`ponderkit.plugins.routing.cosine_kernel.TUNING`)."""
    n, d = args.tokens, args.d_model
    cfg = CosineThresholdConfig(weighting="softmax", fallback="topk")
    layer = CosineThresholdRouter(d, e, cfg).to(device)
    x = torch.randn(n, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    w = layer.weight.detach().requires_grad_()
    g = torch.randn(n, e, device=device)

    def forward():  # with the SDL loss's terms, as the router runs it
        return CosineRoute.apply(x, w, layer.threshold, layer.enabled, 10.0, 1, True, True, 0.01)

    weights = forward()[0]
    sweeps = {
        "route_fwd": [
            {"fwd_tokens": t, "fwd_cols": c, "fwd_precision_half": p}
            for t in (32, 64, 128) for c in (32, 64) for p in ("ieee", "tf32", "tf32x3")
        ],
        "route_bwd": [
            {"bwd_tokens": t, "bwd_cols": c, "bwd_precision_half": p}
            for t in (32, 64, 128) for c in (32, 64, 128) for p in ("ieee", "tf32")
        ],
    }  # fmt: skip
    fns = {
        "route_fwd": forward,
        "route_bwd": lambda: torch.autograd.grad(weights, (x, w), g, retain_graph=True),
    }
    rows = []
    for name, settings in sweeps.items():
        for setting in settings:
            saved = dict(TUNING)
            TUNING.update(setting)
            try:
                us = time_us(fns[name], args.reps)
            except Exception as exc:  # a setting Triton cannot compile: report, go on
                us = float("nan")
                print(f"{name} {setting}: {type(exc).__name__}: {str(exc)[:120]}")
            TUNING.clear()
            TUNING.update(saved)
            rows.append({"experts": e, "kernel": name, **setting, "us": us})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--experts", default="8,16,32")
    parser.add_argument("--k", type=float, default=2.0)
    parser.add_argument("--hidden", type=int, default=768, help="each expert's SwiGLU width")
    parser.add_argument("--tokens-per-program", default="1,2,4,8,16")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU interpreter)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.d_model, args.experts, args.reps = 64, 32, "4", 2
        args.tokens_per_program = "1,4"
    args.tokens_per_program = [int(t) for t in args.tokens_per_program.split(",")]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    experts = [int(e) for e in args.experts.split(",")]
    rows = [r for e in experts for r in measure(args, e, device, dtype)]
    gemm_rows = [r for e in experts for r in gemms(args, e, device)] if cuda else []
    route_rows = [r for e in experts for r in router(args, e, device)] if cuda else []
    name = torch.cuda.get_device_name() if cuda else "cpu (interpreter)"
    out = args.out or REPO / "benchmarks" / "results" / (
        "dispatch_kernels" + ("_smoke" if args.smoke else "") + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": name, "torch": torch.__version__, "tokens": args.tokens}
    out.write_text(
        json.dumps(
            {
                **meta,
                "d_model": args.d_model,
                "rows": rows,
                "gemms": gemm_rows,
                "router": route_rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"dispatch kernels, N={args.tokens}, D={args.d_model}, {dtype}, {name}")
    print(f"{'E':>4} {'kernel':<12}{'tokens/prog':>12}{'us':>9}{'MB':>8}{'TB/s':>7}")
    for r in rows:
        tokens = r["tokens_per_program"] or "-"
        print(
            f"{r['experts']:>4} {r['kernel']:<12}{tokens:>12}{r['us']:>9.1f}"
            f"{r['bytes'] / 1e6:>8.1f}{r['tb_per_s']:>7.2f}"
        )
    if gemm_rows:
        print(f"\nexpert GEMMs, forward + backward, hidden {args.hidden}")
        print(f"{'E':>4} {'gemm':<20}{'case':<26}{'us':>9}{'TFLOP/s':>9}")
        for r in gemm_rows:
            print(
                f"{r['experts']:>4} {r['gemm']:<20}{r['case']:<26}{r['us']:>9.1f}{r['tflops']:>9.0f}"
            )
    for e in experts:
        for name in ("route_fwd", "route_bwd"):
            cases = sorted(
                (r for r in route_rows if r["experts"] == e and r["kernel"] == name),
                key=lambda r: r["us"],
            )
            if cases:
                settings = [
                    f"{c['us']:.1f} us { ({k: v for k, v in c.items() if k not in ('experts', 'kernel', 'us')}) }"
                    for c in cases[:3]
                ]
                print(f"E={e} {name}: best " + "; ".join(settings))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
