"""expert_reset finds its routers under Python 3.12's runtime-Protocol check (issue 31 item 5).

From Python 3.12, ``isinstance(obj, SomeRuntimeProtocol)`` looks members up with
``inspect.getattr_static``, which never sees an ``nn.Module``'s buffers or submodules. The GPU
machines run 3.12: ``isinstance(router, ResettableRouter)`` was False for every router, so the
callback reset nothing and logged no ``dead_experts`` / ``experts_reset`` in the ADR grid, while
the same code logged on the CPU's Python 3.11. The fixture below gives 3.11 the 3.12 check
(for typing's own Protocols; a capability Protocol with a metaclass of its own keeps it)."""

from __future__ import annotations

import inspect
import sys
import typing

import pytest
import torch
from ponderkit.contract.experiment import load_experiment
from ponderkit.engine.train import Trainer


@pytest.fixture
def static_protocol_check(monkeypatch):
    """Runtime Protocols checked as Python >= 3.12 checks them (members looked up statically)."""
    if sys.version_info >= (3, 12):
        return  # the interpreter already does
    meta = typing._ProtocolMeta
    original = meta.__instancecheck__
    missing = object()

    def instancecheck(cls, instance):
        if cls.__dict__.get("_is_protocol") and getattr(cls, "_is_runtime_protocol", False):
            members = typing._get_protocol_attrs(cls)
            return all(inspect.getattr_static(instance, m, missing) is not missing for m in members)
        return original(cls, instance)

    monkeypatch.setattr(meta, "__instancecheck__", instancecheck)


def _trainer(registry, sort_yaml):
    overrides = [
        "train.steps=4",
        "train.eval_every=0",
        "model.recursion.block.ffn={name: dynmoe, experts: 4, hidden: 8}",
        "callbacks=[{name: expert_reset, interval: 2, reset_weights: true}]",
    ]
    cfg = load_experiment(sort_yaml, overrides, registry=registry).config
    return Trainer(cfg, registry, quiet=True)


def test_expert_reset_resets_and_logs_under_the_static_check(
    static_protocol_check, registry, sort_yaml
):
    trainer = _trainer(registry, sort_yaml)
    routers = [b.ffn.router for b in trainer.model.recursion.blocks]
    with torch.no_grad():
        for router in routers:
            router.threshold[0] = 20.0  # G = tanh(20) = 1 >= any cosine: expert 0 never fires
            router.cfg = type(router.cfg)(fallback="zero")  # nor is it a fallback
    records = []
    trainer._log = records.append
    trainer.fit()
    # hand count: expert 0 of each router is dead at the check of step 2 (and 4 if it
    # stays dead): at least one reset per router, logged every step
    assert records[-1]["experts_reset"] >= len(routers)
    assert all("dead_experts" in r and "experts_per_token" in r for r in records)
