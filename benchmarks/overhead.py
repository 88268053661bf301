"""Per-token overhead of KV-cache generation and the fixed cost of an ``nsa`` mixer, counted in
tensor operations (runs on CPU; every op is at least one kernel launch on a GPU).

At tiny widths the arithmetic is negligible and what a step costs is Python and the number of
operations it dispatches, which is what bounds a GPU decode step of the seed-003 model (about
14 ms per generated token on the H200, benchmarks/README.md "NSA and EAVI"). Two parts:

1. ``generate`` (greedy, KV cache) with the model of experiments/seed003_nsa_dynmoe.yaml shrunk
   to ``--d-model`` 32 (NSA + DynMoE, ``--layers`` 2, the same block, selection and window),
   batch 8, on serialized sorting with a ``--prompt``-token prompt: aten operations and CPU
   milliseconds per generated token: ops marginal (``generate(n)`` minus ``generate(1)``, over
   n - 1), time from the first one-token step to the end, over n - 1, so the prompt's one
   parallel pass is not counted; both also split by part (the mixers, the FFNs, the rest).
2. Forward + backward of one causal ``nsa`` mixer at T = ``--length`` with its attention
   kernels replaced by a stand-in (``q * 1``): what is left is the fixed path (projections,
   RoPE, compression, block ranking and selection, the FlexAttention block masks, gates),
   counted in operations and timed.

Operations are counted by a ``TorchDispatchMode`` below autograd: ``ops`` counts every aten
call, ``kernels`` the ones that are not views (a view launches nothing).

    python benchmarks/overhead.py                 # writes results/overhead.{json,md}
    python benchmarks/overhead.py --tokens 64     # quicker
    python benchmarks/overhead.py --label before  # results/overhead_before.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import Counter
from pathlib import Path
from unittest import mock

import torch
from ponderkit import ForwardContext, generate
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.build import build_components
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent


class OpCounter(TorchDispatchMode):
    """Counts aten operations (all, and those that are not views) by name, and by the part
    of the model that ran them (``part``, set by :func:`attribute_parts`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.by_part: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        self.by_part[PART[-1]] += 1
        if func.is_view:
            self.views += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


#: the part of the model running now (a stack: parts do not nest in these models), and the
#: seconds spent in each part
PART = ["other"]
PART_SECONDS: Counter[str] = Counter()


def attribute_parts(model: torch.nn.Module) -> None:
    """Count the ops of every block's mixer and FFN apart from the rest (embedding, norms,
    residuals, head, the generation loop), by the mixer's or FFN's class name."""
    for name, module in model.named_modules():
        part = name.rsplit(".", 1)[-1]
        if part in ("mixer", "ffn"):
            label = f"{part} ({type(module).__name__})"
            module.register_forward_pre_hook(lambda m, a, label=label: enter(label, a[0]))
            module.register_forward_hook(lambda m, a, o: leave(a[0]))
    model.recursion.register_forward_pre_hook(lambda m, a: mark_decoding(a[1]))


#: when the first decoding step (one token after the prompt) of the current call began
DECODING: list[float] = []


def mark_decoding(x: torch.Tensor) -> None:
    if x.shape[1] == 1 and not DECODING:
        DECODING.append(time.perf_counter())


def enter(label: str, h: torch.Tensor) -> None:
    PART.append(label)
    if h.shape[1] == 1:  # time the decoding steps only, not the prompt's parallel pass
        PART_SECONDS[label] -= time.perf_counter()


def leave(h: torch.Tensor) -> None:
    label = PART.pop()
    if h.shape[1] == 1:
        PART_SECONDS[label] += time.perf_counter()


def counted(fn) -> OpCounter:
    with OpCounter() as counter:
        fn()
    return counter


def median_seconds(fn, reps: int, decoding_only: bool = False) -> float:
    """Median seconds of ``fn()``; ``decoding_only``: from its first decoding step on."""
    times = []
    for _ in range(reps):
        DECODING.clear()
        t = time.perf_counter()
        fn()
        end = time.perf_counter()
        times.append(end - (DECODING[0] if decoding_only else t))
    return statistics.median(times)


def seed003_model(args, registry):
    """The seed-003 model at ``--d-model`` width on serialized sorting, and a prompt batch."""
    mixer = (
        f"{{name: nsa, heads: {args.heads}, block: {args.block}, selected: {args.selected}, "
        f"window: {args.window}, causal: true}}"
    )
    overrides = [
        f"task={{name: seq2seq, task: {{name: sort, length: {args.prompt - 1}, values: 10}}}}",
        f"model.d_model={args.d_model}",
        f"model.recursion.layers={args.layers}",
        f"model.recursion.block.mixer={mixer}",
        f"model.recursion.block.ffn.hidden={args.hidden}",
        "callbacks=[]",
        "train.device=cpu",
        "train.precision=fp32",
    ]
    cfg = load_experiment(
        REPO / "experiments" / "seed003_nsa_dynmoe.yaml", overrides, registry=registry
    ).config
    parts = build_components(cfg, registry)
    batch = next(parts.task.train_batches(args.batch, 0))
    return parts.model, batch["inputs"][:, : parts.task.prompt_len]


def generation_row(args, registry) -> dict:
    model, prompt = seed003_model(args, registry)
    model.train()  # as EAVI generates (routers count activations)
    attribute_parts(model)
    n = args.tokens

    def run(length: int):
        return lambda: generate(model, prompt, length)

    generate(model, prompt, 2)  # warm-up
    ops_n, ops_1 = counted(run(n)), counted(run(1))
    per_token = Counter({k: (ops_n.ops[k] - ops_1.ops[k]) / (n - 1) for k in ops_n.ops})
    # the decoding steps only (n - 1 of them and the last token's pick): the prompt's pass
    # costs seconds on the CPU and would drown them in its noise
    PART_SECONDS.clear()
    decoding = median_seconds(run(n), args.reps, decoding_only=True)
    row = {
        "prompt": prompt.shape[1],
        "batch": prompt.shape[0],
        "tokens": n,
        "ops_per_token": (ops_n.total - ops_1.total) / (n - 1),
        "kernels_per_token": (ops_n.total - ops_n.views - ops_1.total + ops_1.views) / (n - 1),
        "ms_per_token": 1e3 * decoding / (n - 1),
        "prefill_ops": ops_1.total,
        "ops_per_token_by_part": {
            part: (ops_n.by_part[part] - ops_1.by_part[part]) / (n - 1) for part in ops_n.by_part
        },
        "top_ops": dict(per_token.most_common(15)),
        # mean over the repetitions (the total above is a median)
        "ms_per_token_by_part": {
            part: 1e3 * seconds / args.reps / (n - 1) for part, seconds in PART_SECONDS.items()
        },
    }
    return row


def nsa_row(args, registry) -> dict:
    from ponderkit.contract.config import Structurer
    from ponderkit.engine.context import BuildContext

    spec = {"name": "nsa", "heads": args.heads, "block": args.block, "selected": args.selected,
            "window": args.window, "causal": True, "kernel": "flex", "tile": args.tile}  # fmt: skip
    s = Structurer(registry)
    built = s.structure_spec("mixer", spec, ())
    assert built is not None, s.issues
    module = BuildContext(registry, d_model=args.d_model).build(built)
    h = torch.randn(args.nsa_batch, args.length, args.d_model, requires_grad=True)

    def step() -> None:
        module(h, ForwardContext(positions="rope")).square().mean().backward()

    # the attention itself (FlexAttention, which has no CPU backward) replaced by q * 1: what
    # remains is the fixed path around it
    with mock.patch("ponderkit.plugins.nsa.flex.flex", lambda q, k, v, mask: q * 1.0):
        step()  # warm-up
        ops = counted(step)
        ms = 1e3 * median_seconds(step, args.reps)
    return {
        "T": args.length,
        "batch": args.nsa_batch,
        "ops": ops.total,
        "kernels": ops.total - ops.views,
        "ms": ms,
        "top_ops": dict(ops.ops.most_common(15)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64, help="DynMoE expert width")
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--selected", type=int, default=8)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=901, help="prompt tokens (x and separator)")
    p.add_argument("--tokens", type=int, default=256, help="generated tokens measured")
    p.add_argument("--length", type=int, default=1024, help="T of the nsa mixer part")
    p.add_argument("--nsa-batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="", help="suffix of the result files")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    registry = Plugins(autoload=False).registry
    gen = generation_row(args, registry)
    nsa = nsa_row(args, registry)
    lines = [
        f"device: CPU ({platform.machine()}), torch {torch.__version__}, {args.threads} thread(s)",
        "",
        "| part | ops | kernels (non-view ops) | CPU ms |",
        "| --- | --- | --- | --- |",
        f"| generate, per token (prompt {gen['prompt']}, batch {gen['batch']}, "
        f"{gen['tokens']} tokens) | {gen['ops_per_token']:.0f} | "
        f"{gen['kernels_per_token']:.0f} | {gen['ms_per_token']:.2f} |",
        f"| nsa fixed path fwd+bwd (T {nsa['T']}, batch {nsa['batch']}) | {nsa['ops']} | "
        f"{nsa['kernels']} | {nsa['ms']:.2f} |",
    ]
    parts = ", ".join(f"{k} {v:.0f}" for k, v in gen["ops_per_token_by_part"].items())
    lines.append(f"\ngenerate, ops per token by part (all layers): {parts}")
    ms = ", ".join(f"{k} {v:.2f}" for k, v in gen["ms_per_token_by_part"].items())
    lines.append(f"generate, CPU ms per token in the mixers and FFNs (all layers): {ms}")
    table = "\n".join(lines)
    print(table)
    print("generate, most frequent ops per token:", gen["top_ops"])
    print("nsa fixed path, most frequent ops:", nsa["top_ops"])
    results = {
        "torch": torch.__version__,
        "settings": vars(args),
        "generate": gen,
        "nsa_fixed_path": nsa,
    }
    stem = "overhead" + (f"_{args.label}" if args.label else "")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table + "\n")
    print(f"wrote benchmarks/results/{stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
