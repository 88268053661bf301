"""What a finished run is: halting depth per sample, active parameters, and a summary of its
metrics, read back from the run directory (the source of truth for reports).

``analyse_run`` loads the final checkpoint and evaluates the held-out set twice, once with
early exit (each sample stops when its halting policy says so) and once with every step, and
writes ``active_params.json`` then ``halting.json`` into the run directory.
"""

from __future__ import annotations

import json
import math
import statistics
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..engine.runs import (
    checkpoint_problem,
    read_metrics_file,
    write_json_atomic,
    write_text_atomic,
)
from .stats import Puzzles

DENSE = "dense: every parameter is used by every token"
ROUTED = (
    "routed: the stacked expert weights of each routed layer scaled by (mean experts per "
    "token / experts), measured on the held-out set"
)
BY_MODULE = "reported by the modules' active_parameters()"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``; lines that are none are skipped."""
    return read_metrics_file(Path(run_dir) / "metrics.jsonl")[0]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def training_seconds(records: list[dict[str, Any]]) -> float:
    """Training wall time summed over resumed segments (``elapsed_s`` restarts at a resume)."""
    total, last = 0.0, 0.0
    for r in records:
        if "elapsed_s" not in r:
            continue
        if r["elapsed_s"] < last:
            total += last
        last = r["elapsed_s"]
    return total + last


def analyse_run(run_dir: Path, registry: Any) -> dict[str, Any]:
    """Per-sample halting steps and active parameters of ``run_dir``'s final checkpoint."""
    import torch

    from ..engine.evaluate import load_model
    from ..engine.losses import accuracy

    run = load_model(run_dir, registry)
    model = run.model
    counter = _RoutingCounter(model)
    adaptive = model.halting.max_steps > 1
    steps, exact, token, exact_all, token_all = [], [], [], [], []
    with torch.no_grad(), run.autocast():
        for batch in run.task.eval_batches(run.config.train.eval_batch_size):
            batch = run.to_device(batch)
            counter.enabled = not adaptive  # count routing in the all-steps pass
            logits, used = model.infer(batch, early_exit=True)
            correct, ok, valid = accuracy(logits, batch["labels"])
            steps += used.tolist()
            exact += ok.float().tolist()
            token += (correct.sum(-1) / valid.sum(-1).clamp(min=1)).tolist()
            if adaptive:
                counter.enabled = True
                logits, _ = model.infer(batch, early_exit=False)
                correct, ok, valid = accuracy(logits, batch["labels"])
            exact_all += ok.float().tolist()
            token_all += (correct.sum(-1) / valid.sum(-1).clamp(min=1)).tolist()
    counter.close()
    routing = counter.totals
    routers = {
        name: {
            "num_experts": len(counts),
            "experts_per_token": sum(counts) / max(tokens, 1),
            "utilisation": [c / max(tokens, 1) for c in counts],
        }
        for name, (counts, tokens) in routing.items()
    }
    from ..engine.nn import parameter_count

    active, method = active_parameters(model, routers)
    params = {
        "parameters": parameter_count(model),
        "active_parameters": active,
        "method": method,
        "routing": routers,
    }
    write_json_atomic(Path(run_dir) / "active_params.json", params)
    n = max(len(steps), 1)
    halting = {
        "checkpoint": "final",
        "max_steps": model.halting.max_steps,
        "steps": steps,
        "mean_steps": sum(steps) / n,
        "exact_acc": sum(exact) / n,
        "token_acc": sum(token) / n,
        "exact_acc_all_steps": sum(exact_all) / n,
        "token_acc_all_steps": sum(token_all) / n,
    }
    # one line: the per-sample list would take a line per sample with indentation
    write_text_atomic(Path(run_dir) / "halting.json", json.dumps(halting) + "\n")
    return halting


class _RoutingCounter:
    """Forward hooks that add up how many tokens each expert received, for every router: any
    module whose forward returns a :class:`~ponderkit.Routing` (the contract's router output),
    whether or not it keeps counts of its own (``CountsActivations``):
    name -> [per-expert counts, tokens]."""

    def __init__(self, model: Any):
        self.enabled = True
        self.totals: dict[str, list] = {}
        # every module: which ones route is known from what they return, not from a member
        self.hooks = [
            module.register_forward_hook(self._hook(name)) for name, module in model.named_modules()
        ]

    def _hook(self, name: str):
        from ..contract.interfaces import Routing

        def hook(module: Any, args: Any, output: Any) -> None:
            if not self.enabled or not isinstance(output, Routing):
                return
            mask = output.mask.reshape(-1, output.mask.shape[-1])  # (N, E)
            counts, tokens = self.totals.get(name, [[0.0] * mask.shape[-1], 0])
            per_expert = mask.sum(0).tolist()
            summed = [a + b for a, b in zip(counts, per_expert, strict=True)]
            self.totals[name] = [summed, tokens + mask.shape[0]]

        return hook

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def active_parameters(model: Any, routers: dict[str, dict]) -> tuple[float, str]:
    """Parameters a token uses on average: all, minus the experts it does not use.

    A module with an ``active_parameters()`` method (``ReportsActiveParameters``) reports its
    own count; a module with a child ``router`` over E experts whose mean experts per token k
    was measured (``routers[name]``: ``num_experts`` E, ``experts_per_token`` k) contributes its
    parameters with leading dimension E (the stacked expert weights) scaled by k/E. A weight
    that several routed modules share (a shared expert library, ADR-0005) is counted once, as
    active for the fraction ``1 - prod(1 - k_i/E)`` of its experts: the union of the experts
    its consumers pick, each picking independently."""
    from ..contract.interfaces import ReportsActiveParameters
    from ..engine.nn import parameter_count

    total = float(parameter_count(model))
    inactive, methods, handled = 0.0, set(), []
    shared: dict[int, tuple[int, list[float]]] = {}  # id -> (numel, active fraction per user)
    for name, module in model.named_modules():
        if module is model or any(name.startswith(h + ".") for h in handled):
            continue
        measured = routers.get(f"{name}.router" if name else "router")
        if isinstance(module, ReportsActiveParameters):
            inactive += parameter_count(module) - float(module.active_parameters())
            methods.add(BY_MODULE)
        elif measured and measured.get("num_experts"):
            e = int(measured["num_experts"])
            k = measured["experts_per_token"]
            for pn, p in module.named_parameters():
                if not pn.startswith("router.") and p.ndim >= 2 and p.shape[0] == e:
                    shared.setdefault(id(p), (p.numel(), []))[1].append(min(k, e) / e)
            methods.add(ROUTED)
        else:
            continue
        handled.append(name)
    for numel, fractions in shared.values():
        idle = 1.0
        for f in fractions:
            idle *= 1.0 - f
        inactive += numel * idle
    return total - inactive, "; ".join(sorted(methods)) or DENSE


@attrs.frozen
class RunSummary:
    """One run directory read back: its final numbers and curves."""

    path: Path
    status: str  # finished | time limit | incomplete
    step: int
    values: dict[str, float]  # exact_acc, token_acc, loss, ... (see summarize_run)
    records: list[dict[str, Any]]
    halting: dict[str, Any]
    params: dict[str, Any]
    meta: dict[str, Any]
    problems: tuple[str, ...] = ()  # skipped metrics lines, a damaged final checkpoint
    # metric (exact_acc, token_acc, raw_exact_acc, raw_token_acc) -> per-puzzle outcomes of
    # the last evaluation (eval/puzzles.npz); empty for runs that saved none
    puzzles: dict[str, Puzzles] = attrs.field(factory=dict)

    @property
    def complete(self) -> bool:
        return self.status != "incomplete"


def epoch_mean_losses(records: Sequence[dict[str, Any]]) -> list[float]:
    """The mean logged training loss of each full epoch, from the ``epoch`` each record was
    logged at (fresh samples / training-set size): epoch k holds the records logged at
    k <= epoch < k + 1, and the few logged after the last whole epoch (a budget of N epochs
    stops once N were drawn, a step or so past) join epoch N - 1. Empty when the run logged no
    epochs or did not finish one."""
    logged = [(r["epoch"], r["loss"]) for r in records if "loss" in r and "epoch" in r]
    if not logged:
        return []
    full = int(math.floor(logged[-1][0] + 1e-9))
    if full < 1:
        return []
    groups: list[list[float]] = [[] for _ in range(full)]
    for epoch, loss in logged:
        groups[min(int(math.floor(epoch + 1e-9)), full - 1)].append(loss)
    return [sum(g) / len(g) for g in groups if g]


def summarize_run(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    records, bad = read_metrics_file(path)
    problems = [b.describe(path) for b in bad]
    meta, halting = read_json(run_dir / "meta.json"), read_json(run_dir / "halting.json")
    params = read_json(run_dir / "active_params.json")
    evals = [r for r in records if "eval/exact_acc" in r]
    losses = [r["loss"] for r in records if "loss" in r]
    speeds = [r["samples_per_s"] for r in records if "samples_per_s" in r]
    values: dict[str, float] = {}
    if evals:
        values["exact_acc"] = evals[-1]["eval/exact_acc"]
        values["token_acc"] = evals[-1]["eval/token_acc"]
        for key in ("free_exact_acc", "free_token_acc"):  # serialized tasks: generated outputs
            if f"eval/{key}" in evals[-1]:
                values[key] = evals[-1][f"eval/{key}"]
        for weights in ("raw", "ema"):  # both weight sets where a run keeps an average
            for key in ("exact_acc", "token_acc"):
                if f"eval/{weights}/{key}" in evals[-1]:
                    values[f"{weights}_{key}"] = evals[-1][f"eval/{weights}/{key}"]
    if losses:
        values.update(loss=losses[-1], initial_loss=losses[0], min_loss=min(losses))
        values["loss_improvement"] = (losses[0] - losses[-1]) / losses[0] if losses[0] else 0.0
        means = epoch_mean_losses(records)
        if means:  # the training loss per epoch, as papers and tutorials plot it
            values.update(last_epoch_loss=means[-1], min_epoch_loss=min(means))
            values["epoch_loss_improvement"] = (
                (losses[0] - means[-1]) / losses[0] if losses[0] else 0.0
            )
    if halting:
        values["halting_steps"] = halting["mean_steps"]
        values["exact_acc_early_exit"] = halting["exact_acc"]
    elif evals and "eval/steps" in evals[-1]:
        values["halting_steps"] = evals[-1]["eval/steps"]
    if "parameters" in meta:
        values["parameters"] = float(meta["parameters"])
        values["active_parameters"] = float(params.get("active_parameters", meta["parameters"]))
    if records:
        values["wall_s"] = training_seconds(records)
        values["steps"] = float(max(r.get("step", 0) for r in records))
        spent = [r for r in records if "samples" in r]
        if spent:  # what the run spent: fresh samples, epochs of them, training FLOPs
            for key in ("samples", "flops", "epoch"):
                if key in spent[-1]:
                    values[key] = float(spent[-1][key])
    if speeds:
        values["samples_per_s"] = statistics.median(speeds)
    stopped = bool(records and records[-1].get("stopped") == "time limit")
    # halting.json is written from the final checkpoint, so it also marks a finished run
    # whose checkpoints were left behind (a run directory copied without them)
    final_dir = run_dir / "checkpoints" / "final"
    final = bool(halting) or (final_dir / "model.safetensors").exists()
    damage = checkpoint_problem(final_dir) if final_dir.exists() else None
    if damage:  # a final checkpoint that does not load is no finished run
        final = False
        problems.append(f"final checkpoint damaged, run counted incomplete: {damage}")
    status = "time limit" if stopped and final else "finished" if final else "incomplete"
    step = max((r.get("step", 0) for r in records), default=0)
    puzzles, problem = read_puzzles(run_dir, evals[-1] if evals else None)
    if problem:
        problems.append(problem)
    return RunSummary(
        run_dir, status, step, values, records, halting, params, meta, tuple(problems), puzzles
    )


PUZZLE_METRICS = ("exact_acc", "token_acc", "raw_exact_acc", "raw_token_acc")


def read_puzzles(
    run_dir: Path, last_eval: dict[str, Any] | None
) -> tuple[dict[str, Puzzles], str | None]:
    """The per-puzzle outcomes of ``run_dir``'s last evaluation, by metric, and a problem when
    the file exists but cannot be used: damaged, from another step than the last evaluation
    logged, or with means that are not the logged ones (the report then falls back to the
    seed-only interval for this run)."""
    from ..engine.evaluate import PUZZLES_FILE  # engine.evaluate imports torch: only here

    path = Path(run_dir) / PUZZLES_FILE
    if not path.exists() or last_eval is None:
        return {}, None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return {}, f"{path}: unreadable ({exc}); seed-only intervals for this run"
    step = int(arrays.get("step", -1))
    if step != last_eval.get("step"):
        return {}, (
            f"{path}: outcomes of step {step}, but the last evaluation logged is step "
            f"{last_eval.get('step')}; seed-only intervals for this run"
        )
    eval_set = str(arrays.get("eval_set", ""))
    out = {}
    for metric in PUZZLE_METRICS:
        if metric not in arrays:
            continue
        values = arrays[metric].astype(np.float64)
        raw = metric.startswith("raw_")
        logged = last_eval.get(f"eval/raw/{metric[4:]}" if raw else f"eval/{metric}")
        if logged is not None and abs(values.mean() - logged) > 1e-4:
            return {}, (
                f"{path}: mean {metric} {values.mean():.6f} is not the logged {logged:.6f}; "
                "seed-only intervals for this run"
            )
        out[metric] = Puzzles(eval_set, values)
    return out, None
