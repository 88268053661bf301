"""Training length in epochs of fresh samples, the FLOPs a run spent, and raw + EMA evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer
from ponderkit.lab.ablation import load_ablation

# a small TRM under deep supervision on 4x4 Sudoku (train_size set per test)
TRM = """
name: tiny_trm
seed: 0
task: {name: sudoku, size: 4, difficulty: easy, train_size: 10, eval_size: 8, leak_check: false}
model:
  d_model: 16
  positions: none
  recursion:
    name: trm
    layers: 1
    H_cycles: 1
    L_cycles: 1
    block: {name: post_norm, mixer: {name: mlp_t, expansion: 1}, ffn: {name: swiglu, expansion: 1}}
  halting: {name: q_head, max_steps: 3}
schedule: deep_supervision
optimizer: {lr: 1.0e-3, warmup_steps: 0}
callbacks: [{name: ema, decay: 0.9}]
train: {epochs: 2, batch_size: 3, log_every: 1, eval_every: 0, eval_batch_size: 8, threads: 1}
"""


def hand_count(sup_steps: list[int], limit: int) -> tuple[int, int]:
    """(optimizer steps, fresh samples) of deep supervision with slot i halting after exactly
    ``sup_steps[i]`` supervision steps, until ``limit`` fresh samples were drawn: at step s
    (1-based) slot i takes a fresh sample iff (s - 1) % sup_steps[i] == 0."""
    step = samples = 0
    while samples < limit:
        step += 1
        samples += sum((step - 1) % n == 0 for n in sup_steps)
    return step, samples


def step_flops() -> int:
    """FLOPs of one optimizer step of ``TRM``, counted on paper (what FlopCounterMode counts:
    2*M*N*K per matrix product; the backward takes the input's and the weight's gradient, 2x
    the forward). B=3 samples of T=16 tokens, D=16, vocabulary V=6; both SwiGLUs (the ffn
    over D and mlp_t over T) are 256 wide (round(2/3 * 16) = 11, up to a multiple of 256),
    costing 2*rows*width_in*2*256 + 2*rows*256*width_in = 6*rows*16*256 with B*T = B*D = 48
    rows. One supervision step with gradients: net(z + y + x), then net(y + z), one block
    each (H_cycles = L_cycles = 1), then the head (D -> V) on every token and the q head
    (D -> 2) on the first."""
    b, t, d, v, width = 3, 16, 16, 6, 256
    net = 2 * 6 * b * t * d * width  # mlp_t + swiglu
    forward = 2 * net + 2 * b * t * d * v + 2 * b * d * 2
    return 3 * forward  # 14,184,000


@pytest.fixture
def trm_yaml(write):
    return write("trm.yaml", TRM)


def trainer_halting_by_slot(trm_yaml, registry, sup_steps, overrides=()):
    """A trainer whose slot i halts after exactly ``sup_steps[i]`` supervision steps."""
    config = load_experiment(trm_yaml, list(overrides), registry=registry).config
    trainer = Trainer(config, registry, quiet=True)
    target = torch.tensor(sup_steps)
    trainer.model.halting.should_halt = lambda signals, steps, training: steps >= target
    return trainer


@pytest.mark.parametrize(
    "sup_steps, overrides",
    [
        ([1, 2, 3], []),  # early halts: 3 + 1 + 2 + 2 + 2 = 10 >= 2 x 5 at step 5
        ([1, 2, 3], ["task.train_size=7", "train.epochs=3"]),
        ([3, 3, 3], []),  # none halts early: a fresh batch every 3 steps
        ([2, 1, 1], ["train.epochs=1"]),
    ],
)
def test_epochs_count_fresh_samples_not_steps(trm_yaml, registry, sup_steps, overrides):
    overrides = ["task.train_size=5", *overrides]
    trainer = trainer_halting_by_slot(trm_yaml, registry, sup_steps, overrides)
    limit = trainer.config.train.epochs * trainer.task.train_size
    trainer.fit()
    assert (trainer.step, trainer.samples) == hand_count(sup_steps, limit)
    assert trainer.budget_spent() == "epochs"


def test_first_example_by_hand(trm_yaml, registry):
    # the schedule above, counted on paper: fresh 3, 1, 2, 2, 2 -> 10 samples in 5 steps
    assert hand_count([1, 2, 3], 10) == (5, 10)
    assert hand_count([3, 3, 3], 10) == (10, 12)


def test_metrics_log_samples_flops_and_the_bound(trm_yaml, tmp_path, registry):
    out = tmp_path / "run"
    assert main(["run", str(trm_yaml), "--out", str(out), "--quiet", "train.flops_every=2"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["stopped"] == "epochs" and last["samples"] >= 20 > records[-2]["samples"]
    assert last["epoch"] == pytest.approx(last["samples"] / 10)
    # every step runs the same work here: FLOPs spent = steps x one step's FLOPs, as measured
    # independently by the FLOPs budget's measurement
    assert last["flops"] == last["step"] * step_flops()
    # raw and EMA weights both evaluated; the plain keys are the EMA ones (the primary)
    assert last["eval/exact_acc"] == last["eval/ema/exact_acc"]
    assert last["eval/token_acc"] == last["eval/ema/token_acc"]
    assert "eval/raw/token_acc" in last


def test_raw_and_ema_metrics_are_the_two_weight_sets(trm_yaml, registry):
    trainer = trainer_halting_by_slot(trm_yaml, registry, [1, 1, 1])
    trainer.fit()
    result = trainer.evaluate()
    raw = trainer._evaluate(False)  # the trained weights, nothing swapped in
    with trainer.eval_weights():
        ema = trainer._evaluate(False)
    assert result["raw/token_acc"] == raw["token_acc"]
    assert result["ema/token_acc"] == ema["token_acc"] == result["token_acc"]


def test_no_ema_no_extra_columns(trm_yaml, registry):
    trainer = trainer_halting_by_slot(trm_yaml, registry, [1, 1, 1], ["callbacks=[]"])
    trainer.fit()
    assert not any("/" in k for k in trainer.evaluate())


def test_steps_and_epochs_together_are_refused(trm_yaml, capsys):
    assert main(["validate", str(trm_yaml), "train.steps=5"]) == 2
    err = capsys.readouterr().err
    assert "train: set 'steps' or 'epochs', not both" in err and "Traceback" not in err


def test_epochs_need_a_fixed_training_set(write, sort_yaml, capsys):
    assert main(["run", str(sort_yaml), "--quiet", "train.steps=null", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and "train_size" in err and "Traceback" not in err


def test_ablation_epoch_budget(write, trm_yaml, registry):
    path = write(
        "abl.yaml",
        """
        base: trm.yaml
        variants: {wide: {model.d_model: 32}}
        budget: {epochs: 3}
        """,
    )
    ablation = load_ablation(path, registry=registry)
    assert {(v.config.train.epochs, v.config.train.steps) for v in ablation.variants} == {(3, None)}
    assert "3 epochs" in ablation.plan()["budget_text"]
    # a step budget over an epoch base replaces its length; a variant may not set either
    steps = write("steps.yaml", "base: trm.yaml\nbudget: {steps: 7}\n")
    assert {v.config.train.steps for v in load_ablation(steps, registry=registry).variants} == {7}
    bad = write(
        "bad.yaml", "base: trm.yaml\nbudget: {epochs: 2}\nvariants: {a: {train.steps: 4}}\n"
    )
    with pytest.raises(Exception, match="budget"):
        load_ablation(bad, registry=registry)


def test_counting_flops_leaves_training_unchanged(trm_yaml, registry):
    """A step counted every step trains bit for bit like one counted once (the count replays
    the step on the side; q_head's exploration draws random numbers, which are restored)."""
    weights = []
    for every in (1, 1000):
        config = load_experiment(trm_yaml, [f"train.flops_every={every}"], registry=registry)
        trainer = Trainer(config.config, registry, quiet=True)
        trainer.fit()
        weights.append((trainer.step, trainer.samples, trainer.flops, trainer.model.state_dict()))
    (s1, n1, f1, w1), (s2, n2, f2, w2) = weights
    assert (s1, n1) == (s2, n2) and f1 == pytest.approx(f2, rel=1e-9)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize("compile_", ["block", "true"])
def test_counting_flops_does_not_keep_compiled_code_eager(
    trm_yaml, registry, monkeypatch, compile_
):
    """The FLOPs count replays the first step before it runs; a frame dynamo meets first under
    FlopCounterMode is never compiled afterwards, so the count must run compiled code eagerly.
    (It did not: train.compile: block trained at the eager rate, 270 vs 540 samples/s on
    seed 002's mazes on an H100.) A counting backend stands in for inductor."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend=counter)
    )
    torch._dynamo.reset()
    overrides = [f"train.compile={compile_}", "train.flops_every=100", "train.epochs=null",
                 "train.steps=2"]  # fmt: skip
    config = load_experiment(trm_yaml, overrides, registry=registry).config
    trainer = Trainer(config, registry, quiet=True)
    trainer.fit()
    torch._dynamo.reset()
    assert trainer.flops_per_step > 0
    assert counter.frame_count >= 1  # compiled (0 before the fix)


def test_an_interrupted_epoch_run_resumes_to_the_same_end(trm_yaml, tmp_path, monkeypatch):
    """Samples and FLOPs spent are checkpointed: a resumed run stops where a straight one does."""
    from ponderkit.engine.flops import Replica
    from ponderkit.plugins.schedules.deep_supervision import DeepSupervision

    args = ["--quiet", "train.checkpoint_every=3", "task.train_size=8"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["run", str(trm_yaml), "--out", str(straight), *args]) == 0
    real, calls = DeepSupervision.train_step, {"n": 0}

    def dying(self, *a):
        if not isinstance(a[-1], Replica):
            calls["n"] += 1
            if calls["n"] == 5:  # during step 5, after the step-3 checkpoint
                raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(DeepSupervision, "train_step", dying)
    assert main(["run", str(trm_yaml), "--out", str(broken), *args]) == 130
    monkeypatch.setattr(DeepSupervision, "train_step", real)
    assert main(["run", str(trm_yaml), "--out", str(broken), "--resume", *args]) == 0
    ends = [
        json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (straight, broken)
    ]
    keys = ("step", "samples", "flops", "stopped", "eval/exact_acc", "eval/raw/token_acc")
    assert [e[k] for k in keys for e in ends[:1]] == [e[k] for k in keys for e in ends[1:]]


def test_ema_changes_only_the_evaluated_weights(trm_yaml, registry, tmp_path):
    """Seed 002's `no_ema` arm trains exactly like `baseline` (same seed): the EMA callback
    reads the weights and never the training's random stream, with evaluations in between
    (exploration and halting draw random numbers every step). The checkpoint's model file
    holds the evaluated (EMA) weights, its trainer state the trained ones."""
    from safetensors.torch import load_file

    losses, trained, evaluated = {}, {}, {}
    for name, callbacks in (
        ("ema", "callbacks=[{name: ema, decay: 0.9}]"),
        ("none", "callbacks=[]"),
    ):
        out = tmp_path / name
        args = ["run", str(trm_yaml), "--out", str(out), "--quiet", callbacks,
                "train.eval_every=4", "train.epochs=3"]  # fmt: skip
        assert main(args) == 0
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [(r["step"], r["loss"]) for r in records if "loss" in r]
        final = out / "checkpoints/final"
        trained[name] = torch.load(final / "trainer.pt", weights_only=False)["train_weights"]
        evaluated[name] = load_file(final / "model.safetensors")
    assert len(losses["ema"]) > 5 and losses["ema"] == losses["none"]
    assert trained["ema"].keys() == trained["none"].keys()
    assert all(torch.equal(trained["ema"][k], trained["none"][k]) for k in trained["none"])
    # without EMA the evaluated weights are the trained ones; with it they are not
    assert all(torch.equal(evaluated["none"][k], trained["none"][k]) for k in trained["none"])
    assert not all(torch.equal(evaluated["ema"][k], trained["ema"][k]) for k in trained["ema"])


def test_flops_budget_stops_on_what_was_spent(trm_yaml, registry):
    """train.flops = 3.5 steps' FLOPs: the run takes 4 steps (stops once spent >= budget) and
    its cosine follows the share spent: lr after step k = 0.1 + 0.9 * (1 + cos(pi * k / 3.5)) / 2
    (min_lr_ratio 0.1, no warmup)."""
    import math

    per_step = step_flops()
    overrides = ["train.epochs=null", f"train.flops={3.5 * per_step!r}", "optimizer.decay=cosine"]
    trainer = trainer_halting_by_slot(trm_yaml, registry, [1, 1, 1], overrides)
    lrs = []
    real = trainer._set_lr

    def record():
        real()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])

    trainer._set_lr = record
    trainer.fit()
    assert trainer.step == 4 and trainer.budget_spent() == "flops"
    assert trainer.flops == pytest.approx(4 * per_step, rel=1e-6)
    want = [
        1e-3 * (0.1 + 0.9 * (1 + math.cos(math.pi * min(1.0, k / 3.5))) / 2) for k in (1, 2, 3, 4)
    ]
    assert lrs == pytest.approx(want, rel=1e-9)


def test_a_cheaper_step_buys_more_steps_under_a_flops_budget(trm_yaml, registry, monkeypatch):
    """Counted FLOPs per step 100, 50, 33.3, 25, ... (a router growing sparser): a budget of
    200 is spent after 4 steps (100 + 50 + 33.3 + 25 = 208.3); at a constant 100, after 2."""
    import ponderkit.engine.train as train_module

    for costs, steps in (([100.0 / (i + 1) for i in range(10)], 4), ([100.0] * 10, 2)):
        it = iter(costs)
        monkeypatch.setattr(train_module, "count_step_flops", lambda tr, b, it=it: (next(it), b))
        overrides = ["train.epochs=null", "train.flops=200", "train.flops_every=1"]
        trainer = trainer_halting_by_slot(trm_yaml, registry, [1, 1, 1], overrides)
        trainer.fit()
        assert trainer.step == steps and trainer.budget_spent() == "flops"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.flops=1e9"], "set one of 'steps', 'epochs', 'flops', not epochs and flops"),
        (
            ["train.epochs=null", "train.flops=1e9", "train.flops_every=0"],
            "flops needs flops_every > 0",
        ),
    ],
)
def test_flops_budget_mistakes_are_refused(trm_yaml, capsys, overrides, message):
    assert main(["validate", str(trm_yaml), *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
