"""Run under TRITON_INTERPRET=1 (Triton's interpreter on CPU tensors) by test_kernels.py:
every Triton kernel against the torch expressions it replaces, outputs and gradients.
Prints one line per check and exits non-zero on the first mismatch."""

from __future__ import annotations

import os
import sys

import torch
from ponderkit import kernels, swiglu
from ponderkit.plugins.dynmoe.dispatch import combine, gather, grouped_linear, plan_dispatch
from ponderkit.plugins.dynmoe.dispatch_kernels import plan_positions
from ponderkit.plugins.routing.cosine_threshold import CosineThresholdConfig, CosineThresholdRouter

assert kernels.INTERPRET, "run with TRITON_INTERPRET=1"


def run(fn, *inputs, triton: bool):
    """fn's output and input gradients, with the Triton kernels on or off."""
    os.environ["PONDERKIT_TRITON"] = "1" if triton else "0"
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype))
    return [out.detach()] + [t.grad for t in leaves if t.is_floating_point()]


def check(name: str, fn, *inputs, tol: float) -> None:
    got = run(fn, *inputs, triton=True)
    ref = run(fn, *(t.double() if t.is_floating_point() else t for t in inputs), triton=False)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        err = (a.double() - b).abs().max().item() if a.numel() else 0.0
        if not err <= tol:
            sys.exit(f"{name}: tensor {i} differs by {err} (tolerance {tol})")
    print(f"ok {name}")


gen = torch.Generator().manual_seed(0)
torch.manual_seed(0)  # the routers' own initialisation too: the same checks every run
for shape in [(5, 2 * 24), (3, 4, 2 * 40), (0, 2 * 8)]:
    x = torch.randn(*shape, generator=gen)
    check(f"swiglu {shape}", swiglu, x, tol=1e-5)
check("swiglu bf16", swiglu, torch.randn(7, 2 * 16, generator=gen).bfloat16(), tol=0.05)


def swiglu_filled(filled: int, spare: int):
    """swiglu of a buffer whose first ``filled`` rows hold data (a device-side count)."""

    def fn(x):
        buffer = torch.cat([x, torch.full((spare, x.shape[1]), float("nan"), dtype=x.dtype)])
        return swiglu(buffer, torch.tensor([filled], dtype=torch.int32))[:filled]

    return fn


check("swiglu 5 filled rows of 12", swiglu_filled(5, 7), torch.randn(5, 2 * 24), tol=1e-5)
check("swiglu 0 filled rows of 3", swiglu_filled(0, 3), torch.randn(0, 2 * 8), tol=1e-5)


def dispatch(mask):
    def fn(x, w, y_scale):
        plan = plan_dispatch(w * mask, mask)
        rows = gather(x, plan) * y_scale  # a per-row change, so the combine sees other rows
        return combine(rows, plan)

    return fn


for n, e, d, density in [(9, 4, 24, 0.4), (1, 3, 16, 1.0), (6, 5, 40, 0.0), (12, 8, 1100, 0.3)]:
    mask = torch.rand(n, e, generator=gen) < density
    mask[0] = False  # a token without experts
    if e > 1:
        mask[:, 1] = False  # an expert without tokens
    x = torch.randn(n, d, generator=gen)
    w = torch.rand(n, e, generator=gen)
    check(f"dispatch n={n} e={e} d={d}", dispatch(mask), x, w, torch.tensor(1.5), tol=1e-4)


def check_plan(n: int, e: int, density: float, scan_chunk: int = 4096) -> None:
    """The Triton plan (block counts, scan, maps) against the torch cumsum: the same position
    map and offsets, and slots that list each token's pairs in expert order."""
    mask = torch.rand(n, e, generator=gen) < density
    if n:
        mask[0] = False
    os.environ["PONDERKIT_TRITON"] = "0"
    ref = plan_dispatch(mask.float(), mask)
    pos, offsets, (rows, experts, k) = plan_positions(mask, scan_chunk)
    name = f"plan n={n} e={e} density={density} scan_chunk={scan_chunk}"
    if not (torch.equal(pos, ref.pos) and torch.equal(offsets, ref.offsets)):
        sys.exit(f"{name}: position map or offsets differ from the torch cumsum")
    for t in range(n):
        active = mask[t].nonzero().flatten()
        if not (
            k[t] == len(active)
            and torch.equal(experts[t, : len(active)].long(), active)
            and torch.equal(rows[t, : len(active)], pos[t, active])
        ):
            sys.exit(f"{name}: slots of token {t} are wrong")
    print(f"ok {name}")


os.environ["PONDERKIT_TRITON"] = "1"
many = torch.rand(3, 1100, generator=gen) < 0.01  # past the kernels' expert limit
if (
    plan_dispatch(many.float(), many).slots is not None
    or plan_dispatch(many[:, :1024].float(), many[:, :1024]).slots is None
):
    sys.exit("plan: expected the kernels up to 1024 experts and torch past them")
print("ok plan: kernels for 1024 experts, torch for 1100")

for n, e, density, chunk in [
    (0, 4, 0.5, 4096), (1, 3, 1.0, 4096), (700, 5, 0.3, 4096), (700, 5, 0.3, 32),
    (300, 40, 0.1, 4096), (257, 16, 0.0, 4096),
]:  # fmt: skip
    check_plan(n, e, density, chunk)


def static_moe(mask):
    """Expert layer through a plan with spare rows (no host sync): buffers for N * E pairs."""

    def fn(x, w, gate_up, down):
        plan = plan_dispatch(w * mask, mask, capacity=mask.numel())
        hidden = swiglu(grouped_linear(gather(x, plan), gate_up, plan, "loop"), plan.filled)
        return combine(grouped_linear(hidden, down, plan, "loop"), plan)

    return fn


for n, e, d, h, density in [(10, 4, 24, 16, 0.4), (1, 3, 8, 8, 1.0), (5, 3, 8, 8, 0.0)]:
    mask = torch.rand(n, e, generator=gen) < density
    x, w = torch.randn(n, d, generator=gen), torch.rand(n, e, generator=gen)
    gate_up = torch.randn(e, d, 2 * h, generator=gen) / d**0.5
    down = torch.randn(e, h, d, generator=gen) / h**0.5
    check(f"static dispatch n={n} e={e}", static_moe(mask), x, w, gate_up, down, tol=1e-4)


def route_once(router, x, triton: bool):
    """Weights, mask, cos and the gradients of x, W and G through a loss on weights and cos."""
    os.environ["PONDERKIT_TRITON"] = "1" if triton else "0"
    router.zero_grad(set_to_none=True)
    xx = x.detach().clone().requires_grad_()
    routing = router(xx)
    r1 = torch.linspace(-1, 1, routing.weights.numel()).view_as(routing.weights)
    loss = (routing.weights * r1).sum() + (routing.logits * r1.flip(0)).sum()
    loss = loss + sum(routing.aux.values())
    loss.backward()
    return routing, [xx.grad, router.weight.grad, router.threshold.grad]


for n, e, d, cfg, state in [
    (40, 6, 24, {"weighting": "mean", "fallback": "topk", "min_experts": 1}, "live"),
    (33, 5, 70, {"weighting": "softmax", "fallback": "topk", "min_experts": 2}, "live"),
    (17, 8, 16, {"weighting": "softmax", "fallback": "zero"}, "live"),
    (9, 4, 8, {"weighting": "mean", "fallback": "topk", "min_experts": 3}, "dead"),
    (1, 3, 5, {"weighting": "softmax", "fallback": "topk", "min_experts": 1}, "removed"),
    (0, 3, 5, {"weighting": "mean", "fallback": "topk"}, "live"),
    (21, 6, 12, {"weighting": "mean", "sparsity_weight": 0.5, "sparsity_target": 1.0}, "live"),
    (12, 7, 9, {"weighting": "mean", "sdl_weight": 1.0}, "live"),
    (12, 4, 9, {"weighting": "mean", "sdl_weight": 0.0}, "live"),
    (20, 40, 600, {"weighting": "softmax", "sdl_weight": 0.5}, "removed"),  # D in 10 steps
    (
        15,
        5,
        10,
        {"weighting": "softmax", "fallback": "zero", "sparsity_weight": 0.3, "tau": 3.0},
        "removed",
    ),
]:
    router = CosineThresholdRouter(d, e, CosineThresholdConfig(**cfg)).train()
    with torch.no_grad():
        router.threshold.copy_(torch.rand(e, generator=gen) * 0.4 - 0.2)
        # off the orthogonal init, where W_n^T W_n - I is rounding noise and the diversity
        # term's gradient A / ||A||_F a direction of noise (each implementation its own)
        router.weight.add_(0.2 * torch.randn(d, e, generator=gen))
        if state == "dead":
            router.threshold.fill_(20.0)  # G = tanh(20) = 1: every token takes the fallback
        if state == "removed":
            router.enabled[0] = False
    x = torch.randn(n, d, generator=gen)
    got, got_grads = route_once(router, x, triton=True)
    ref, ref_grads = route_once(router, x, triton=False)
    name = f"cosine router n={n} e={e} {cfg} {state}"
    if not torch.equal(got.mask, ref.mask):
        sys.exit(f"{name}: masks differ")
    for what, a, b in [("weights", got.weights, ref.weights), ("cos", got.logits, ref.logits)] + [
        (f"grad {i}", a, b) for i, (a, b) in enumerate(zip(got_grads, ref_grads, strict=True))
    ]:
        err = (a - b).abs().max().item() if a.numel() else 0.0
        if not err <= 1e-4:
            sys.exit(f"{name}: {what} differs by {err}")
    if got.aux.keys() != ref.aux.keys():
        sys.exit(f"{name}: aux losses {sorted(got.aux)} != {sorted(ref.aux)}")
    for key in got.aux:  # the values (their gradients reach grad 1 through the loss)
        if abs(float(got.aux[key].detach()) - float(ref.aux[key].detach())) > 1e-5:
            sys.exit(f"{name}: aux loss {key} differs")
    for key in ("fallback_rate", "experts_per_token", "dead_experts"):
        if abs(float(got.stats[key]) - float(ref.stats[key])) > 1e-6:
            sys.exit(f"{name}: stat {key} differs")
    if not torch.equal(got.stats["expert_counts"].long(), ref.mask.sum(0)):
        sys.exit(f"{name}: expert counts differ from the mask's")
    print(f"ok {name}")
