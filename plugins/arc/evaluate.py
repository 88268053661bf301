"""Predict every view of the scored puzzles, map the predictions back, vote, score pass@k."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from ponderkit import Batch
from torch import Tensor

from . import voting
from .grids import decode_sizes
from .grids import inverse_dihedral as _inverse_dihedral

_CHUNK = 4096  # canvases decoded at once (bounds the temporary (N, C, C) arrays)


def replace_ids(task: Any, pairs: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """Puzzle identifiers for scored ``pairs``: each view's ``own``, the ``blank`` one (0,
    never trained), or a ``random`` identifier of a view of a training-set task."""
    views = task.views
    own = views.ids[pairs[:, 1]]
    if mode == "own":
        return own
    if mode == "blank":
        return np.zeros_like(own)
    if mode == "random":
        pool = views.ids[~task.puzzles.is_eval[views.task]]
        return np.random.default_rng(seed).choice(pool, size=len(own))
    raise ValueError(f"unknown puzzle_ids {mode!r} (own, blank or random)")


@torch.no_grad()
def final_step(model: Any, batch: Batch) -> tuple[Tensor, Tensor]:
    """Logits (B,T,V) after every step (as TRM evaluates) and a confidence (B,) in [0, 1]:
    sigmoid(q_halt) of the last step, 1 when the halting policy has no q_halt. ``infer``
    returns no halting signals, so this walks the model's one step loop (``start`` then
    ``unroll``, as ``infer`` does) to read the last step's; a policy that weighs its steps
    (ACT, PonderNet) goes through ``infer``, with confidence 1."""
    b = batch["inputs"].shape[0]
    ones = torch.ones(b, device=batch["inputs"].device)
    if hasattr(model.halting, "combine"):
        return model.infer(batch)[0], ones
    carry, x, ctx = model.start(batch)
    steps = model.unroll(carry, x, ctx, model.halting.max_steps)
    (_, logits, signals) = deque(steps, maxlen=1)[0]  # the last step's (runs every step)
    q = signals.get("q_halt")
    return logits, torch.sigmoid(q.float()) if q is not None else ones


def predict(
    model: Any, batches: Iterable[Batch], device: torch.device, autocast: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted tokens (N, T) int8 and confidences (N,) float32 for every batch."""
    tokens, confs = [], []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits, conf = final_step(model, batch)
        tokens.append(logits.argmax(-1).to(torch.int8).cpu().numpy())
        confs.append(conf.float().cpu().numpy())
    if not tokens:
        return np.zeros((0, 0), np.int8), np.zeros(0, np.float32)
    return np.concatenate(tokens), np.concatenate(confs)


def ranked_candidates(
    views: Any, pairs: np.ndarray, tokens: np.ndarray, conf: np.ndarray, vote: str
) -> tuple[dict[str, list[list[np.ndarray]]], dict[str, list[np.ndarray]]]:
    """Map each pair's prediction back to its puzzle and vote per test input.

    Returns ``ranked[task_id][j]`` (candidates for test input j, best first) and
    ``truth[task_id][j]`` (its true output)."""
    p = views.puzzles
    canvas = int(round(np.sqrt(tokens.shape[1]))) if len(tokens) else 1
    per_test: dict[tuple[int, int], list[tuple[np.ndarray, float]]] = {}
    for s in range(0, len(pairs), _CHUNK):
        block = tokens[s : s + _CHUNK].reshape(-1, canvas, canvas)
        heights, widths = decode_sizes(block)
        for i in range(len(block)):
            e, v = pairs[s + i]
            grid = block[i, : heights[i], : widths[i]] - 2
            back = _inverse_dihedral(views.inverse_perm[v][grid], int(views.dihedral[v]))
            key = (int(p.ex_task[e]), int(e))
            per_test.setdefault(key, []).append((back, float(conf[s + i])))
    ranked: dict[str, list[list[np.ndarray]]] = {}
    truth: dict[str, list[np.ndarray]] = {}
    for (t, e), preds in sorted(per_test.items()):
        tid = str(p.ids[t])
        ranked.setdefault(tid, []).append(voting.rank(preds, vote))  # type: ignore[arg-type]
        truth.setdefault(tid, []).append(p.grid(p.ex_out[e]))
    return ranked, truth


def evaluate_puzzles(
    task: Any, trainer: Any, puzzle_ids: str | None, vote: str, splits: Iterable[str]
) -> dict[str, Any]:
    """pass@k per split (``eval``: the evaluation tasks; ``train``: the training-set check)
    and, for ``eval``, the Kaggle submission object."""
    cfg = task.cfg
    if puzzle_ids:
        task.eval_puzzle_ids = puzzle_ids
    mode = task.eval_puzzle_ids
    size = trainer.config.train.eval_batch_size
    out: dict[str, Any] = {"puzzle_ids": mode, "vote": vote}
    model = trainer.model
    was_training = model.training
    model.eval()
    with trainer.eval_weights():  # EMA's weights where a callback keeps them
        for split in splits:
            pairs = task.scored_pairs(split)
            if not len(pairs):
                continue
            ids = replace_ids(task, pairs, mode, cfg.data_seed)

            def batches(pairs=pairs, ids=ids) -> Iterator[Batch]:
                for i in range(0, len(pairs), size):
                    arrays = task.views.layout(pairs[i : i + size], cfg.canvas)
                    arrays["puzzle_ids"] = ids[i : i + size]
                    yield {k: torch.from_numpy(a) for k, a in arrays.items()}

            tokens, conf = predict(model, batches(), trainer.device, trainer.autocast)
            ranked, truth = ranked_candidates(task.views, pairs, tokens, conf, vote)
            out[split] = {**voting.scores(ranked, truth), "views": int(len(pairs))}
            out[f"{split}_solved"] = {
                f"pass@{k}": sorted(t for t, ok in voting.pass_at_k(ranked, truth, k).items() if ok)
                for k in (1, 2)
            }
            if split == "eval":
                out["submission"] = voting.submission(ranked)
                out["tests_per_task"] = {k: len(v) for k, v in truth.items()}
    model.train(was_training)
    return out
