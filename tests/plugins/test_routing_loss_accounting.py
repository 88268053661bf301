"""Routing losses count once per optimizer step: a router's token-dependent terms averaged over
the steps each sample actually ran (ACT halting), its parameter-only SDL term once, checked
against values computed by hand from the router's outputs and the halting probabilities."""

from __future__ import annotations

import pytest
import torch
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.build import build_components

EXPERIMENT = """
name: accounting
task: {name: sort, length: 6, values: 8, eval_size: 16}
model:
  d_model: 16
  loss: softmax
  recursion:
    name: universal
    block:
      name: pre_norm
      mixer: {name: attention, heads: 2}
      ffn:
        name: dynmoe
        experts: 4
        hidden: 16
        router: {name: cosine_threshold, sdl_weight: 0.01, sparsity_weight: 0.1,
                 sparsity_target: 2.0}
  halting: {name: act, max_steps: STEPS, init_bias: 0.0}
schedule: full_unroll
train: {steps: 1, batch_size: 8, threads: 1}
"""


class RecordingTrainer:
    """The trainer services full_unroll uses; ``optimize`` only records the loss."""

    def __init__(self):
        self.losses = []

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def optimize(self, loss):
        self.losses.append(loss.detach())
        return torch.zeros(())


@pytest.mark.parametrize("max_steps", [1, 8])
def test_router_losses_count_once_over_the_steps_samples_ran(max_steps, registry, write):
    path = write("acct.yaml", EXPERIMENT.replace("STEPS", str(max_steps)))
    config = load_experiment(path, registry=registry).config
    torch.manual_seed(0)
    built = build_components(config, registry)
    model, schedule = built.model, built.schedule
    with torch.no_grad():  # halting probabilities that differ by sample: some halt early
        model.halting.unit.weight.normal_(0.0, 3.0)
    router = model.recursion.blocks[0].ffn.router
    routings, halts = [], []
    router.register_forward_hook(lambda m, a, out: routings.append(out))
    model.halting.register_forward_hook(lambda m, a, out: halts.append(out["h"].detach()))
    batch = next(built.task.train_batches(8, seed=0))
    metrics = schedule.train_step(model, iter([batch]), RecordingTrainer())

    assert len(routings) == max_steps  # the router ran at every unrolled step
    h = torch.stack(halts).double()  # (S, B)
    b, t = h.shape[1], batch["inputs"].shape[1]
    cum_before = torch.cat([torch.zeros(1, b, dtype=h.dtype), h.cumsum(0)[:-1]])
    running = cum_before < 1 - model.halting.eps  # (S, B): not halted before step s
    if max_steps > 1:
        assert 0 < running.sum() < running.numel(), "the test needs some samples to halt early"
    total, weight = 0.0, 0.0
    for s, routing in enumerate(routings):
        k = routing.mask.double().sum(-1).view(b, t)  # active experts per token
        tokens = running[s].double()[:, None].expand(b, t)
        if tokens.sum() == 0:
            continue
        mean_k = float((k * tokens).sum() / tokens.sum())
        total += float(tokens.sum()) * 0.1 * abs(mean_k - 2.0)
        weight += float(tokens.sum())
    assert metrics["router/sparsity"] == pytest.approx(total / weight, rel=1e-5)

    w = router.weight.detach().double()  # (D, E)
    unit = w / w.norm(dim=0)
    diversity = torch.linalg.matrix_norm(unit.T @ unit - torch.eye(w.shape[1], dtype=w.dtype))
    sdl = 0.01 * float(diversity + w.norm(dim=0).mean())
    assert metrics["router/sdl"] == pytest.approx(sdl, rel=1e-5)  # once, not max_steps times
