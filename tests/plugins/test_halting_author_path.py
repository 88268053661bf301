"""The halting policy's author path (issue 32 item 3) and full_unroll's truncation (issue 31
item 5): a policy sees the step's logits, a trainable policy trains under full_unroll, and an
unroll stops at the batch's largest halting step when the later steps weigh nothing."""

from __future__ import annotations

import contextlib
import math

import attrs
import pytest
import torch
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer
from ponderkit.plugins.schedules.full_unroll import FullUnroll, FullUnrollConfig
from torch import nn

UNIVERSAL = """
name: author_path
task: {name: sort, length: 6, values: 8, eval_size: 64}
model:
  d_model: 16
  recursion:
    name: universal
    block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: {name: swiglu, expansion: 2}}
  halting: {name: act, max_steps: 6, training: act}
schedule: full_unroll
optimizer: {lr: 3.0e-3, weight_decay: 0.01, warmup_steps: 0}
train: {steps: 20, batch_size: 32, log_every: 10, eval_every: 0, threads: 1}
"""


@pytest.fixture
def universal_yaml(write):
    return write("universal.yaml", UNIVERSAL)


def trainer_for(path, registry, overrides=()):
    cfg = load_experiment(path, list(overrides), registry=registry).config
    return Trainer(cfg, registry, quiet=True)


class Services:
    """What a schedule needs of the trainer, in float64 and without an optimizer update."""

    def autocast(self):
        return contextlib.nullcontext()

    def optimize(self, loss):
        loss.backward()
        return loss.detach() * 0


def _step(model, batch, truncate: bool) -> tuple[dict, list[torch.Tensor], int]:
    """One full_unroll step: (metrics, gradients, block calls)."""
    calls = []
    hook = model.recursion.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    model.zero_grad()
    try:
        metrics = FullUnroll(FullUnrollConfig(truncate=truncate)).train_step(
            model, iter([batch]), Services()
        )
    finally:
        hook.remove()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return metrics, grads, len(calls)


def _model_and_batch(path, registry, overrides=()):
    trainer = trainer_for(path, registry, overrides)
    model = trainer.model.double().train()
    batch = next(trainer.task.train_batches(8, 0))
    return model, batch


def test_act_unroll_stops_at_the_hand_counted_halting_step(universal_yaml, registry):
    model, batch = _model_and_batch(universal_yaml, registry)
    with torch.no_grad():  # h = 0.3 for every sample: sum h = 0.3, 0.6, 0.9, 1.2 -> halts at 4
        model.halting.unit.weight.zero_()
        model.halting.unit.bias.fill_(math.log(0.3 / 0.7))
    _, _, truncated = _step(model, batch, truncate=True)
    _, _, full = _step(model, batch, truncate=False)
    assert (truncated, full) == (4, 6)  # one block call per universal step


def test_truncated_unroll_equals_the_full_one_in_float64(universal_yaml, registry):
    model, batch = _model_and_batch(universal_yaml, registry)
    with torch.no_grad():  # samples halt at different steps, all before max_steps
        torch.manual_seed(0)
        model.halting.unit.weight.normal_(0, 0.5)
        model.halting.unit.bias.fill_(math.log(0.3 / 0.7))
    short, grads_short, calls = _step(model, batch, truncate=True)
    full, grads_full, _ = _step(model, batch, truncate=False)
    # brute force: the largest first step whose summed h reaches 1 - eps, from the full run
    with torch.no_grad():
        carry, x, ctx = model.start(batch)
        hs = [s["h"] for _, _, s in model.unroll(carry, x, ctx, 6)]
    last = 0
    for b in range(len(batch["inputs"])):
        total = 0.0
        for n, h in enumerate(hs, start=1):
            total += float(h[b])
            if total >= 1 - model.halting.eps or n == 6:
                last = max(last, n)
                break
    assert 1 < last < 6 and calls == last
    assert float(short["unrolled_steps"]) == last and float(full["unrolled_steps"]) == 6
    assert abs(float(short["loss"]) - float(full["loss"])) < 1e-12
    assert len(grads_short) == len(grads_full)
    for a, b in zip(grads_short, grads_full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_the_fixed_depth_default_runs_every_step(universal_yaml, registry):
    model, batch = _model_and_batch(universal_yaml, registry, ["model.halting.training=fixed"])
    with torch.no_grad():
        model.halting.unit.bias.fill_(30.0)  # h = 1: ACT would halt at step 1
    _, _, calls = _step(model, batch, truncate=True)
    assert calls == 6  # every step trains (ADR-0005 §4): nothing to skip


def test_a_trainable_policy_trains_under_full_unroll(universal_yaml, registry):
    model, batch = _model_and_batch(
        universal_yaml, registry, ["model.halting={name: q_head, max_steps: 3}"]
    )
    metrics, _, calls = _step(model, batch, truncate=True)
    assert calls == 3
    grad = model.halting.q.bias.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    # hand value: q = (weight 0, bias -5) -> q_halt = -5 at every step; no step is right yet
    # (random init on sort), so the loss is 0.5 * BCE(-5, 0) = 0.5 * log(1 + e^-5) a step
    # (q_head computes in float32)
    assert float(metrics["q_halt_loss"]) == pytest.approx(math.log1p(math.exp(-5)), abs=1e-7)
    lm = float(metrics["lm_loss"])
    assert float(metrics["loss"]) == pytest.approx(lm + 0.5 * math.log1p(math.exp(-5)), abs=1e-7)


# -- a halting policy written by a user: halt once the prediction stopped changing ------------


@attrs.frozen
class StableAnswerConfig:
    """Halt once a step predicts the same tokens as the step before (or at max_steps)."""

    max_steps: int = 6


class StableAnswer(nn.Module):
    def __init__(self, cfg: StableAnswerConfig):
        super().__init__()
        self.max_steps = cfg.max_steps

    def forward(self, y, ctx):
        pred = ctx.logits.detach().argmax(-1)  # (B, T)
        if ctx.previous_logits is None:
            return {"stable": torch.zeros(len(pred), dtype=torch.bool, device=pred.device)}
        return {"stable": (pred == ctx.previous_logits.argmax(-1)).all(-1)}

    def should_halt(self, signals, steps, training):
        return signals["stable"] | (steps >= self.max_steps)

    def loss(self, signals, correct, **_):
        return torch.zeros((), device=correct.device), {}


def test_a_policy_that_halts_when_the_prediction_stopped_changing(universal_yaml, registry):
    registry.add("halting", "stable_answer", StableAnswerConfig, lambda cfg, ctx: StableAnswer(cfg))
    trainer = trainer_for(universal_yaml, registry, ["model.halting={name: stable_answer}"])
    trainer.fit()  # trains end to end under full_unroll (loss on the last step)
    model = trainer.model.eval()
    batch = next(iter(trainer.task.eval_batches(64)))
    logits, steps = model.infer(batch, early_exit=True)
    # brute force: every step's prediction; a sample stops at the first n >= 2 whose
    # prediction equals step n-1's, else at 6
    with torch.no_grad():
        carry, x, ctx = model.start(batch)
        every = [lg for _, lg, _ in model.unroll(carry, x, ctx, 6)]
    preds = [lg.argmax(-1) for lg in every]
    for b in range(len(steps)):
        want = next((n for n in range(2, 7) if torch.equal(preds[n - 1][b], preds[n - 2][b])), 6)
        assert int(steps[b]) == want
        torch.testing.assert_close(logits[b], every[want - 1][b])
    assert int(steps.min()) < 6  # some sample stopped early


def test_the_conformance_kit_hands_a_policy_the_step_logits():
    from ponderkit.devkit.conformance import check_halting

    check_halting(lambda d_model: StableAnswer(StableAnswerConfig(max_steps=3)), max_examples=5)
