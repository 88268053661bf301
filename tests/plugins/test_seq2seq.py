"""Serialized tasks, KV-cache generation, teacher forcing, EAVI and staged schedules."""

from __future__ import annotations

import pytest
import torch
from ponderkit import ConfigError, callback_hook, generate
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer

SEQ2SEQ = """
name: s2s
seed: 0
task: {name: seq2seq, task: {name: sort, length: 5, values: 6, eval_size: 64}}
model:
  d_model: 32
  positions: rope
  recursion:
    name: stacked
    layers: 2
    block:
      name: pre_norm
      mixer: {name: attention, heads: 2, causal: true}
      ffn: {name: swiglu, expansion: 2}
  halting: fixed
schedule: teacher_forcing
optimizer: {lr: 3.0e-3, weight_decay: 0.0}
train: {steps: 4, batch_size: 8, log_every: 1, eval_batch_size: 32, threads: 1}
"""


def trainer_for(write, registry, *overrides: str) -> Trainer:
    exp = load_experiment(write("s2s.yaml", SEQ2SEQ), list(overrides), registry=registry)
    return Trainer(exp.config, registry, quiet=True)


def test_serialization_layout(write, registry):
    task = trainer_for(write, registry).task
    batch = next(task.train_batches(4, 0))
    x, y = batch["inputs"], batch["labels"]
    assert x.shape == y.shape == (4, 10) and task.prompt_len == 6 and task.separator == 6
    assert (x[:, 5] == 6).all() and (y[:, :5] == -100).all()
    assert torch.equal(y[:, 5:], x[:, :5].sort(-1).values)  # sorted input is the output
    assert torch.equal(x[:, 6:], y[:, 5:9])  # the output shifted right after the separator


MIXERS = [
    "{name: attention, heads: 2, causal: true}",
    "{name: nsa, heads: 2, block: 2, selected: 2, window: 3, causal: true}",
]


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("recursion", ["stacked", "universal"])
def test_kv_cache_generation_equals_recomputing_the_prefix(write, registry, mixer, recursion):
    over = [f"model.recursion.block.mixer={mixer}"]
    if recursion == "universal":  # one block re-applied: one cache slot per application
        over += [
            "model.recursion={name: universal, block: {name: pre_norm, mixer: " + mixer + "}}",
            "model.halting={name: fixed, steps: 2}",
        ]
    t = trainer_for(write, registry, *over)
    model = t.model.eval()
    batch = next(t.task.eval_batches(6))
    prompt = batch["inputs"][:, : t.task.prompt_len]
    for temperature in (0.0, 1.0):
        runs = []
        for cache in (True, False):
            g = torch.Generator().manual_seed(3)
            runs.append(generate(model, prompt, 5, temperature, g, use_cache=cache))
        assert torch.equal(runs[0][0], runs[1][0])
        torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-5)


def test_teacher_forcing_loss_is_next_token_cross_entropy(write, registry):
    t = trainer_for(write, registry)
    batch = next(t.task.train_batches(8, t.config.seed))
    n = 5
    seq = torch.cat([batch["inputs"][:, : n + 1], batch["labels"][:, n:]], 1)  # [x, sep, y]
    with torch.no_grad():
        logits, _ = t.model.infer({"inputs": seq[:, :-1]})
    losses = []
    for b in range(seq.shape[0]):
        per_token = [
            -(logits[b, i, seq[b, i + 1]] - logits[b, i].exp().sum().log())
            for i in range(n, seq.shape[1] - 1)  # the separator and the output positions
        ]
        losses.append(sum(per_token) / len(per_token))
    metrics = t.schedule.train_step(t.model, t._batches(), t)
    assert metrics["lm_loss"].item() == pytest.approx(float(sum(losses) / len(losses)), rel=1e-5)


@pytest.mark.parametrize("feed", ["tokens", "soft"])
def test_eavi_generates_without_a_graph_and_backpropagates_once(write, registry, monkeypatch, feed):
    t = trainer_for(write, registry, f"schedule={{name: eavi, feed: {feed}}}")
    calls = []
    for module in t.model.modules():
        if module.__class__.__name__ == "Attention":
            module.register_forward_hook(
                lambda mod, args, out: calls.append((torch.is_grad_enabled(), out.requires_grad))
            )
    backwards = []
    original = torch.Tensor.backward
    monkeypatch.setattr(
        torch.Tensor,
        "backward",
        lambda self, *a, **k: (backwards.append(1), original(self, *a, **k)),
    )
    metrics = t.schedule.train_step(t.model, t._batches(), t)
    m, layers = 5, 2
    with_grad = [c for c in calls if c[0]]
    without = [c for c in calls if not c[0]]
    assert len(with_grad) == layers  # one parallel pass through both layers
    assert len(without) == m * layers and not any(c[1] for c in without)  # prompt + m-1 tokens
    assert len(backwards) == 1
    assert {"gen_exact_acc", "gen_token_acc", "loss"} <= set(metrics)


def stages_seen(trainer) -> list[float]:
    """Train ``trainer`` to the end; the ``stage`` each optimizer step logged, in order."""
    seen = []

    class Spy:
        @callback_hook
        def on_step_end(self, metrics):
            seen.append(metrics["stage"])

    trainer.hooks.pm.register(Spy())
    trainer.fit()
    return seen


def test_staged_runs_its_stages_in_order_and_records_them(write, registry, tmp_path):
    t = trainer_for(
        write,
        registry,
        "schedule={name: staged, stages: [teacher_forcing, eavi], steps: [3]}",
        "train.steps=5",
    )
    seen = stages_seen(t)
    assert seen == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert t.schedule.stage_at(3, 5) == 1 and t.schedule.stage_at(2, 5) == 0  # from the step alone


def test_eval_reports_teacher_forced_and_free_running_accuracy(write, registry):
    t = trainer_for(write, registry)
    metrics = t.evaluate()
    assert {"token_acc", "exact_acc", "free_token_acc", "free_exact_acc"} <= set(metrics)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.recursion.block.mixer=mlp_t",
            "mixer/mlp_t at model.recursion.block.mixer cannot be causal",
        ),
        ("model.recursion.block.mixer.causal=false", "set model.recursion.block.mixer.causal=true"),
        (
            "task={name: sort}",
            "schedule/teacher_forcing needs a component that provides 'serialized'",
        ),
        ("model.puzzle_emb_len=4", "does not support a puzzle prefix"),
        (
            "schedule={name: staged, stages: [teacher_forcing, eavi], steps: [4]}",
            "use all train.steps=4",
        ),
    ],
)
def test_non_causal_combinations_are_refused(write, registry, override, message):
    with pytest.raises(ConfigError) as err:
        load_experiment(write("s2s.yaml", SEQ2SEQ), [override], registry=registry)
    assert message in str(err.value)


def test_staged_resumes_mid_stage_to_the_same_weights(write, registry, tmp_path):
    over = [
        "schedule={name: staged, stages: [teacher_forcing, {name: eavi, temperature: 1.0}], "
        "steps: [3]}",
        "train.steps=6",
        "train.checkpoint_every=2",
    ]
    exp = load_experiment(write("s2s.yaml", SEQ2SEQ), over, registry=registry)
    for d in ("a", "step_0000002", "step_0000004"):
        (tmp_path / d).mkdir()
    whole = Trainer(exp.config, registry, run_dir=tmp_path / "a", quiet=True)
    whole.fit()
    for ckpt in ("step_0000002", "step_0000004"):  # in the first stage, and in the second
        resumed = Trainer(exp.config, registry, run_dir=tmp_path / ckpt, quiet=True)
        resumed.restore(tmp_path / "a" / "checkpoints" / ckpt)
        resumed.fit()
        for name, value in whole.model.state_dict().items():
            torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)


def test_staged_fractions_split_a_flops_budget_by_what_was_spent(write, registry, monkeypatch):
    """train.flops = 500, every step counted at 100 FLOPs, fractions [0.6]: a step's stage is
    read from what was spent before it: 0, 100, 200 (under 60%) -> stage 0; 300, 400 -> stage 1;
    the budget is spent after 5 steps."""
    import ponderkit.engine.train as train_module

    monkeypatch.setattr(train_module, "count_step_flops", lambda tr, b: (100.0, b))
    t = trainer_for(
        write,
        registry,
        "schedule={name: staged, stages: [teacher_forcing, eavi], fractions: [0.6]}",
        "train.steps=null",
        "train.flops=500",
        "train.flops_every=1",
    )
    seen = stages_seen(t)
    assert seen == [0.0, 0.0, 0.0, 1.0, 1.0] and t.budget_spent() == "flops"
