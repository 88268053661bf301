"""ACT's depth does not collapse while every step is equally bad (issue 31 item 5).

Graves's ACT trained with its ponder cost alone pushes h_1 to 1 when no step is better than
another (labels that no step can predict): the ponder cost is the only steady gradient, and
once every sample halts at step 1 no task gradient reaches the unit again. The default
(``training: fixed``, ADR-0005 §4) keeps the depth; ``min_steps`` floors it in either mode."""

from __future__ import annotations

import pytest
import torch
from ponderkit.plugins.halting.act import ACT, ACTConfig
from torch import nn

D, B, T, V = 8, 32, 4, 5


def _train(cfg: ACTConfig, updates: int = 100, seed: int = 0) -> tuple[float, list[float]]:
    """Train the halting unit and a head over a fixed random recursion on labels drawn afresh
    every update (no step can predict them); return the expected depth sum_n n p_n of the
    last update (float64, from the halting distribution) and the mean halting probability
    along the way."""
    torch.manual_seed(seed)
    act = ACT(cfg, D)
    head = nn.Linear(D, V, bias=False)
    mix = torch.randn(D, D) / D**0.5
    opt = torch.optim.Adam([*act.parameters(), *head.parameters()], lr=0.1)
    probs = []
    for _ in range(updates):
        x = torch.randn(B, T, D)
        labels = torch.randint(0, V, (B, T))
        y = torch.zeros(B, T, D)
        logits_steps, signals_steps = [], []
        for _ in range(cfg.max_steps):
            y = torch.tanh(y @ mix + x)
            logits_steps.append(head(y))
            signals_steps.append(act(y, None))
        task, halt, metrics, _ = act.unrolled_loss(logits_steps, signals_steps, labels, "softmax")
        opt.zero_grad()
        (task + halt).backward()
        opt.step()
        probs.append(float(metrics["halt_prob"]) if "halt_prob" in metrics else float("nan"))
    p = act.distribution(signals_steps)[0].detach().double()  # (S, B)
    depth = (torch.arange(1, len(p) + 1, dtype=torch.float64)[:, None] * p).sum(0).mean()
    return float(depth), probs


def test_graves_act_collapses_to_one_step():
    # the defect, reproduced: ponder cost alone drives h_1 to ~0.95 (issue 31: 0.94 by
    # update 120), the expected depth to ~1
    depth, probs = _train(ACTConfig(max_steps=4, training="act", ponder_weight=0.01))
    assert depth < 1.1
    assert probs[-1] > 0.9


def test_the_default_keeps_depth_while_every_step_is_equally_bad():
    depth, probs = _train(ACTConfig(max_steps=4))
    # no step is ever right: the unit learns "go on", every sample runs (nearly) all 4 steps
    assert depth > 3.5
    assert probs[-1] < probs[0]


def test_min_steps_floors_the_depth_under_graves_training():
    depth, _ = _train(ACTConfig(max_steps=4, training="act", min_steps=3))
    assert depth >= 3.0


def test_ponder_warmup_ramps_the_weight_linearly():
    act = ACT(ACTConfig(max_steps=3, training="act", ponder_weight=0.5, ponder_warmup=4), D)
    y = torch.randn(2, T, D)
    logits, signals = [torch.zeros(2, T, V)] * 3, [act(y, None)] * 3
    labels = torch.zeros(2, T, dtype=torch.long)
    weights = []
    for _ in range(6):
        _, halt, metrics, _ = act.unrolled_loss(logits, signals, labels, "softmax")
        weights.append(float(halt.detach()) / float(metrics["ponder_cost"]))
    assert weights == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5])


def test_fixed_depth_loss_against_a_float64_formula():
    torch.manual_seed(1)
    act = ACT(ACTConfig(max_steps=3, halt_loss_weight=0.5), D).double()
    nn.init.normal_(act.unit.weight)
    ys = [torch.randn(4, T, D, dtype=torch.float64) for _ in range(3)]
    logits = [torch.randn(4, T, V, dtype=torch.float64) for _ in range(3)]
    labels = logits[1].argmax(-1)  # step 2 exactly right for every sample, the others not
    labels[0, 0] = (labels[0, 0] + 1) % V  # ... except sample 0
    signals = [act(y, None) for y in ys]
    task, halt, _, _ = act.unrolled_loss(logits, signals, labels, "softmax")
    ce = [torch.nn.functional.cross_entropy(lg.transpose(1, 2), labels) for lg in logits]
    expected_task = sum(ce) / 3
    bce = 0.0
    for n, y in enumerate(ys):
        h = torch.sigmoid(y.mean(1) @ act.unit.weight.T + act.unit.bias).squeeze(-1)
        target = (logits[n].argmax(-1) == labels).all(-1).double()
        bce += -(target * h.log() + (1 - target) * (1 - h).log()).mean()
    # the core's token loss runs in float32 (log_softmax of logits.float())
    assert float(task.detach()) == pytest.approx(float(expected_task), abs=1e-6)
    assert float(halt.detach()) == pytest.approx(0.5 * float(bce.detach()) / 3, abs=1e-6)  # the unit: fp32
