"""ponderkit's TRM against the TRM authors' own model, side by side in one process (GPU; a tiny
CPU smoke run with ``--smoke``).

The authors' code is never committed or vendored: ``--reference PATH`` points at a checkout of
their repository (the folder holding ``models/recursive_reasoning/trm.py``), whose ``models``
package is imported from there. Their model needs ``pydantic`` and ``einops``.

For each recipe (``att``: trm_sudoku_att.yaml, ``mlp``: trm_sudoku_mlp.yaml):

1. **Equivalence.** ponderkit's model is built with its initial weights (the puzzle row given
   random values in its first D numbers, as the authors' D-wide row is), the weights are copied
   into the authors' model, and one supervision step from a fresh carry runs in both in float32
   (TF32 off): the largest logit difference, the q-halt logits' and the loss's (theirs is
   summed over the batch; divided by B here) are printed and must be below ``--tolerance``.
2. **Speed.** Each trains on the same synthetic batch stream, batch 768, in its own
   precision recipe for bf16 (the authors cast weights and activations to bf16; ponderkit runs
   under autocast), with the same optimizer: fused AdamW (lr 1e-4, betas 0.9/0.95, weight
   decay 0.1 or 1.0 per recipe) over the dense weights and a sign-SGD step on the batch's puzzle
   rows (the authors' AdamATan2 is a CUDA extension we do not assume; AdamW costs the same
   number of elementwise passes). The authors' step is their ``pretrain.py`` step: carry kept
   across steps, ``ACTLossHead`` loss scaled by 1/B, backward, optimizer steps. Modes: ``eager``
   and ``compiled`` (theirs: ``torch.compile`` of the loss head, as ``pretrain.py``; ours:
   ``train.compile: true``), optionally ``block`` (ours only). Median step time over
   ``--steps`` after ``--warmup`` steps, which include compilation.

Prints a markdown table (samples/s, ratio ours/theirs per mode, each one's share of the kernel
floor given with ``--floor-ms recipe=MS``, from ``trm_bound.py`` on the same card) and writes
JSON and markdown beside ``--out``.

    python benchmarks/trm_vs_reference.py --reference PATH [--recipes att,mlp]
        [--modes eager,compiled] [--batch 768] [--steps 20] [--floor-ms att=76.5]
    python benchmarks/trm_vs_reference.py --reference PATH --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import add_device_options, sync, synthetic_batches, timed
from ponderkit.contract.experiment import load_experiment
from ponderkit.contract.loading import Plugins
from ponderkit.engine.train import Trainer

REPO = Path(__file__).resolve().parent.parent
RECIPES = {"att": "trm_sudoku_att.yaml", "mlp": "trm_sudoku_mlp.yaml"}
OURS_COMPILE = {"eager": "false", "compiled": "true", "block": "block"}
# the batches are synthetic: the task gives shapes only, so generate a handful of puzzles
TASK = ["task.train_size=16", "task.eval_size=16"]
SMOKE = ["model.d_model=64", "model.recursion.H_cycles=2", "model.recursion.L_cycles=2"]


# -- the authors' model -------------------------------------------------------------------------


def import_reference(path: Path) -> tuple[Any, Any]:
    """The authors' ``TinyRecursiveReasoningModel_ACTV1`` and ``ACTLossHead``."""
    if not (path / "models" / "recursive_reasoning" / "trm.py").is_file():
        sys.exit(f"--reference {path}: no models/recursive_reasoning/trm.py there")
    sys.path.insert(0, str(path))
    try:
        trm = importlib.import_module("models.recursive_reasoning.trm")
        losses = importlib.import_module("models.losses")
    except ImportError as exc:
        sys.exit(f"--reference {path}: importing the authors' model failed: {exc}")
    return trm.TinyRecursiveReasoningModel_ACTV1, losses.ACTLossHead


def reference_config(cfg: Any, batch: int, seq_len: int, vocab: int, dtype: str) -> dict:
    """The authors' arch config for ponderkit's experiment ``cfg``."""
    rec = cfg.model.recursion.config
    block = rec.block.config
    mlp_t = block.mixer.name == "mlp_t"
    halting = cfg.model.halting.config
    return {
        "batch_size": batch,
        "seq_len": seq_len,
        "puzzle_emb_ndim": cfg.model.d_model,
        "num_puzzle_identifiers": 1,
        "vocab_size": vocab,
        "H_cycles": rec.H_cycles,
        "L_cycles": rec.L_cycles,
        "H_layers": 0,
        "L_layers": rec.layers,
        "hidden_size": cfg.model.d_model,
        "expansion": block.ffn.config.expansion,
        "num_heads": 1 if mlp_t else block.mixer.config.heads,
        "pos_encodings": "rope" if cfg.model.positions == "rope" else "none",
        "rms_norm_eps": block.eps,
        "rope_theta": cfg.model.rope_theta,
        "halt_max_steps": halting.max_steps,
        "halt_exploration_prob": halting.exploration,
        "forward_dtype": dtype,
        "mlp_t": mlp_t,
        "puzzle_emb_len": cfg.model.puzzle_emb_len,
        "no_ACT_continue": True,
    }


def weight_map(ours: torch.nn.Module, layers: int, mlp_t: bool) -> dict[str, str]:
    """ponderkit parameter or buffer name -> the authors' name (both models' TRM)."""
    names = {
        "token_emb.weight": "inner.embed_tokens.embedding_weight",
        "head.weight": "inner.lm_head.weight",
        "halting.q.weight": "inner.q_head.weight",
        "halting.q.bias": "inner.q_head.bias",
        "recursion.init.y_init": "inner.H_init",  # y, the answer, is their z_H
        "recursion.init.z_init": "inner.L_init",  # z, the latent, is their z_L
    }
    for i in range(layers):
        ours_block, theirs = f"recursion.net.blocks.{i}", f"inner.L_level.layers.{i}"
        if mlp_t:
            names[f"{ours_block}.mixer.mlp.gate_up.weight"] = f"{theirs}.mlp_t.gate_up_proj.weight"
            names[f"{ours_block}.mixer.mlp.down.weight"] = f"{theirs}.mlp_t.down_proj.weight"
        else:
            names[f"{ours_block}.mixer.qkv.weight"] = f"{theirs}.self_attn.qkv_proj.weight"
            names[f"{ours_block}.mixer.out.weight"] = f"{theirs}.self_attn.o_proj.weight"
        names[f"{ours_block}.ffn.gate_up.weight"] = f"{theirs}.mlp.gate_up_proj.weight"
        names[f"{ours_block}.ffn.down.weight"] = f"{theirs}.mlp.down_proj.weight"
    missing = set(names) - set(ours.state_dict())
    if missing:
        raise KeyError(f"ponderkit's model has no {sorted(missing)}")
    return names


@torch.no_grad()
def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module, mlp_t: bool, layers: int) -> None:
    """Copy every weight of ``ours`` into ``theirs``; the puzzle row's first D numbers become
    the authors' D-wide row (the rest of ours must be zero, as their padding is)."""
    src, dst = ours.state_dict(), theirs.state_dict()
    for a, b in weight_map(ours, layers, mlp_t).items():
        if src[a].shape != dst[b].shape:
            raise ValueError(f"{a} {tuple(src[a].shape)} vs {b} {tuple(dst[b].shape)}")
        dst[b].copy_(src[a])
    d = dst["inner.puzzle_emb.weights"].shape[-1]
    row = src["puzzle_emb.weight"]
    if row[:, d:].abs().max() > 0:
        raise ValueError("ponderkit's puzzle row is non-zero past the authors' width")
    dst["inner.puzzle_emb.weights"].copy_(row[:, :d])


# -- one supervision step in each -----------------------------------------------------------------


def ours_first_step(model: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ponderkit: (logits, q-halt logits, loss) of one supervision step from a fresh carry,
    the loss as deep supervision forms it."""
    from ponderkit import accuracy, sequence_loss

    ctx = model.context()
    x = model.embed(batch)
    _, logits, signals = model.step(model.initial_carry(x), x, ctx)
    lm = sequence_loss(logits, batch["labels"], model.loss_kind).mean()
    _, exact, _ = accuracy(logits.detach(), batch["labels"])
    steps = torch.ones(len(logits), dtype=torch.long, device=logits.device)
    halt_loss, _ = model.halting.loss(signals, exact, next_signals=None, steps=steps)
    q_halt = next(iter(signals.values()))
    return logits, q_halt, lm + halt_loss


def theirs_first_step(head: Any, batch: dict, device: torch.device) -> tuple:
    with torch.device(device):
        carry = head.initial_carry(batch)
    _, loss, _, outputs, _ = head(return_keys=["logits", "q_halt_logits"], carry=carry, batch=batch)
    return outputs["logits"], outputs["q_halt_logits"], loss / len(batch["inputs"])


def equivalence(
    recipe: str, args: argparse.Namespace, registry: Any, ref: tuple, variant: tuple = ()
) -> dict:
    """Float32 logits, q-halt logits and loss of one supervision step, both models; with a
    ``variant`` (ponderkit overrides), both in bf16 instead: ours under autocast with those
    overrides, theirs with ``forward_dtype: bfloat16`` (reported, not asserted)."""
    model_cls, head_cls = ref
    device = torch.device(args.device_resolved)
    bf16 = bool(variant)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        trainer = _trainer(recipe, "eager", "bf16" if bf16 else "fp32", args, registry, variant)
        ours = trainer.model.train()
        with torch.no_grad():  # a puzzle row that is not all zeros, in the authors' width
            d = trainer.config.model.d_model
            ours.puzzle_emb.weight[:, :d].normal_(0, 0.02)
        seq, vocab = trainer.task.seq_len, trainer.task.vocab_size
        mlp_t = trainer.config.model.recursion.config.block.config.mixer.name == "mlp_t"
        dtype = "bfloat16" if bf16 else "float32"
        theirs = model_cls(reference_config(trainer.config, 8, seq, vocab, dtype))
        theirs = theirs.to(device).train()
        copy_weights(ours, theirs, mlp_t, trainer.config.model.recursion.config.layers)
        batch = next(synthetic_batches(8, seq, vocab, device))
        batch = {**batch, "puzzle_identifiers": torch.zeros(8, dtype=torch.int32, device=device)}
        ours_batch = {**batch, "puzzle_ids": torch.zeros(8, dtype=torch.long, device=device)}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            a_logits, a_q, a_loss = ours_first_step(ours, ours_batch)
        b_logits, b_q, b_loss = theirs_first_step(
            head_cls(theirs, _loss_name(trainer)), batch, device
        )
        scale = b_logits.abs().max().item()
        return {
            "recipe": recipe + (f" [{' '.join(variant)}] bf16" if bf16 else ""),
            "max_abs_logit_diff": (a_logits.float() - b_logits.float()).abs().max().item(),
            "logit_scale": scale,
            "max_abs_q_halt_diff": (a_q.float() - b_q.float()).abs().max().item(),
            "loss_ours": a_loss.item(),
            "loss_theirs": b_loss.item(),
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _loss_name(trainer: Trainer) -> str:
    return {"stablemax": "stablemax_cross_entropy", "softmax": "softmax_cross_entropy"}[
        trainer.config.model.loss
    ]


# -- timing -----------------------------------------------------------------------------------------


def _trainer(
    recipe: str, mode: str, precision: str, args: argparse.Namespace, registry, variant=()
) -> Trainer:
    overrides = [
        f"train.batch_size={args.batch}",
        f"train.precision={precision}",
        f"train.compile={OURS_COMPILE[mode]}",
        f"train.device={args.device_resolved}",
        "optimizer.grad_clip=null",  # the authors clip nothing
        *TASK,
        *(SMOKE if args.smoke else []),
        *args.override,
        *variant,
    ]
    cfg = load_experiment(REPO / "experiments" / RECIPES[recipe], overrides, registry=registry)
    torch._dynamo.reset()
    return Trainer(cfg.config, registry, quiet=True)


def time_ours(recipe: str, mode: str, args: argparse.Namespace, registry, variant=()) -> dict:
    trainer = _trainer(recipe, mode, args.precision, args, registry, variant)
    device = trainer.device
    batches = synthetic_batches(args.batch, trainer.task.seq_len, trainer.task.vocab_size, device)
    step = lambda: trainer.schedule.train_step(trainer.model, batches, trainer)  # noqa: E731
    return _time(step, device, args)


class SignSGDRows:
    """The authors' puzzle-embedding update: sign-SGD with decoupled weight decay on the rows
    of the batch (their ``CastedSparseEmbeddingSignSGD_Distributed``, one process)."""

    def __init__(self, emb: Any, lr: float, weight_decay: float) -> None:
        self.emb, self.lr, self.wd = emb, lr, weight_decay

    @torch.no_grad()
    def step(self) -> None:
        grad = self.emb.local_weights.grad
        if grad is None:
            return
        ids, inverse = self.emb.local_ids.unique(return_inverse=True)
        summed = torch.zeros(len(ids), grad.shape[-1], device=grad.device, dtype=grad.dtype)
        summed.index_add_(0, inverse, grad)
        rows = self.emb.weights[ids]
        rows.mul_(1.0 - self.lr * self.wd).add_(torch.sign(summed), alpha=-self.lr)
        self.emb.weights[ids] = rows
        self.emb.local_weights.grad = None


def time_theirs(recipe: str, mode: str, args: argparse.Namespace, registry, ref: tuple) -> dict:
    model_cls, head_cls = ref
    trainer = _trainer(recipe, "eager", args.precision, args, registry)  # its config and task
    device = trainer.device
    seq, vocab = trainer.task.seq_len, trainer.task.vocab_size
    dtype = "bfloat16" if args.precision == "bf16" else "float32"
    opt_cfg = trainer.config.optimizer
    opt_cfg = getattr(opt_cfg, "config", opt_cfg)  # an `optimizer:` component or plain fields
    del trainer
    gc.collect()
    with torch.device(device):
        model = model_cls(
            reference_config(_config(recipe, args, registry), args.batch, seq, vocab, dtype)
        )
    head = head_cls(model, _loss_name_for(recipe, args, registry)).to(device).train()
    dense = [p for p in head.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW(
        dense, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), weight_decay=opt_cfg.weight_decay,
        fused=device.type == "cuda",
    )  # fmt: skip
    sparse = SignSGDRows(model.inner.puzzle_emb, opt_cfg.lr, opt_cfg.weight_decay)
    forward = torch.compile(head) if mode == "compiled" else head
    stream = synthetic_batches(args.batch, seq, vocab, device)
    ids = torch.zeros(args.batch, dtype=torch.int32, device=device)
    first = {**next(stream), "puzzle_identifiers": ids}  # drawn outside the device context:
    with torch.device(device):  # the stream's generator lives on the CPU
        state = {"carry": head.initial_carry(first)}

    def step() -> None:
        batch = {**next(stream), "puzzle_identifiers": ids}
        carry, loss, _, _, _ = forward(return_keys=[], carry=state["carry"], batch=batch)
        state["carry"] = carry
        (loss / args.batch).backward()
        adamw.step()
        sparse.step()
        adamw.zero_grad(set_to_none=True)

    return _time(step, device, args)


def _config(recipe: str, args: argparse.Namespace, registry) -> Any:
    overrides = [*TASK, *(SMOKE if args.smoke else []), *args.override]
    return load_experiment(
        REPO / "experiments" / RECIPES[recipe], overrides, registry=registry
    ).config


def _loss_name_for(recipe: str, args: argparse.Namespace, registry) -> str:
    loss = _config(recipe, args, registry).model.loss
    return {"stablemax": "stablemax_cross_entropy", "softmax": "softmax_cross_entropy"}[loss]


def _time(step: Any, device: torch.device, args: argparse.Namespace) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warmup = timed(step, args.warmup, device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    return {
        "median_step_s": median,
        "samples_per_s": args.batch / median,
        "warmup_s": warmup,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
    }


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="the authors' checkout")
    parser.add_argument("--recipes", default="att,mlp")
    parser.add_argument("--modes", default="eager,compiled", help="eager,compiled[,block]")
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="float32 agreement")
    parser.add_argument("--floor-ms", action="append", default=[], metavar="RECIPE=MS")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--ours-variant",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
        help="an extra ponderkit row per mode with these overrides, and its bf16 agreement with "
        "the authors' bf16 model, e.g. bf16-stream:model.recursion.precision=bf16",
    )
    add_device_options(parser, "a tiny TRM on the CPU, both models")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.precision, args.batch, args.steps, args.warmup = "cpu", "fp32", 8, 2, 1
    args.device_resolved = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    floors = {k: float(v) for k, v in (f.split("=", 1) for f in args.floor_ms)}
    ref = import_reference(args.reference.resolve())
    registry = Plugins(autoload=False).registry
    out = args.out or REPO / "benchmarks/results" / (
        "trm_vs_reference_smoke.json" if args.smoke else "trm_vs_reference.json"
    )
    variants = {}
    for text in args.ours_variant:
        label, _, overrides = text.partition(":")
        variants[label] = tuple(o for o in overrides.split(",") if o)
    checks, rows = [], []
    for recipe in args.recipes.split(","):
        check = equivalence(recipe, args, registry, ref)
        rel = check["max_abs_logit_diff"] / max(check["logit_scale"], 1e-12)
        check["ok"] = bool(
            rel < args.tolerance
            and check["max_abs_q_halt_diff"] < args.tolerance * 10
            and math.isclose(check["loss_ours"], check["loss_theirs"], rel_tol=args.tolerance)
        )
        print(json.dumps(check), flush=True)
        checks.append(check)
        for variant in variants.values():  # the same work in bf16, reported only
            extra = equivalence(recipe, args, registry, ref, variant) | {"ok": True}
            print(json.dumps(extra), flush=True)
            checks.append(extra)
        _free()
        for mode in args.modes.split(","):
            impls = [("ponderkit", ())] + [(f"ponderkit {k}", v) for k, v in variants.items()]
            if mode != "block":
                impls.insert(0, ("authors", ()))
            for impl, variant in impls:
                try:
                    if impl == "authors":
                        row = time_theirs(recipe, mode, args, registry, ref)
                    else:
                        row = time_ours(recipe, mode, args, registry, variant)
                except Exception as exc:  # a mode that fails here: say so, keep the rest
                    row = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                row |= {"impl": impl, "recipe": recipe, "mode": mode}
                print(json.dumps(row), flush=True)
                rows.append(row)
                _free()
    name = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available() and args.device_resolved == "cuda"
        else platform.machine()
    )
    result = {"device": name, "torch": torch.__version__, "batch": args.batch,
              "precision": args.precision, "equivalence": checks, "rows": rows}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = render(result, floors)
    out.with_suffix(".md").write_text(table)
    print("\n" + table)
    if not all(c["ok"] for c in checks):
        sys.exit("the two models disagree beyond --tolerance: the timings compare different work")


def render(result: dict, floors: dict[str, float]) -> str:
    lines = [
        f"TRM, ponderkit vs the authors' model: batch {result['batch']}, {result['precision']}, "
        f"{result['device']}, torch {result['torch']}",
        "",
        "| recipe | max logit diff (fp32) | q-halt diff | loss ours | loss theirs | agree |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in result["equivalence"]:
        lines.append(
            f"| {c['recipe']} | {c['max_abs_logit_diff']:.2e} (of {c['logit_scale']:.2f}) "
            f"| {c['max_abs_q_halt_diff']:.2e} | {c['loss_ours']:.6f} | {c['loss_theirs']:.6f} "
            f"| {'yes' if c['ok'] else 'NO'} |"
        )
    lines += [
        "",
        "| recipe | mode | authors samples/s | ponderkit samples/s | ours / theirs "
        "| authors warm-up s | ponderkit warm-up s | floor share authors | floor share ponderkit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(r["recipe"], r["mode"], r["impl"]): r for r in result["rows"]}
    ours = dict.fromkeys(r["impl"] for r in result["rows"] if r["impl"] != "authors")
    for recipe, mode, impl in (
        (recipe, mode, impl)
        for recipe, mode in dict.fromkeys((r["recipe"], r["mode"]) for r in result["rows"])
        for impl in ours
        if (recipe, mode, impl) in by
    ):
        a, b = by.get((recipe, mode, "authors"), {}), by[(recipe, mode, impl)]
        mode = mode if impl == "ponderkit" else f"{mode}, {impl.removeprefix('ponderkit ')}"
        ratio = (
            f"{b['samples_per_s'] / a['samples_per_s']:.3f}x"
            if "samples_per_s" in a and "samples_per_s" in b
            else "-"
        )
        floor = floors.get(recipe)
        lines.append(
            f"| {recipe} | {mode} | {_sps(a)} | {_sps(b)} | {ratio} | {_warm(a)} | {_warm(b)} "
            f"| {_share(a, floor)} | {_share(b, floor)} |"
        )
    return "\n".join(lines) + "\n"


def _sps(row: dict) -> str:
    return f"{row['samples_per_s']:,.0f}" if "samples_per_s" in row else row.get("error", "-")


def _warm(row: dict) -> str:
    return f"{row['warmup_s']:.1f}" if "warmup_s" in row else "-"


def _share(row: dict, floor_ms: float | None) -> str:
    """The kernel floor's share of a step: floor time over step time."""
    if not floor_ms or "median_step_s" not in row:
        return "-"
    return f"{floor_ms / (row['median_step_s'] * 1e3):.0%}"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
