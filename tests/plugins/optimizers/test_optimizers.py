"""The optimizer plugins against their update rules computed by hand in float64 (numpy), the
parameter groups they declare, the conformance kit, and the config section that names them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ponderkit.contract.errors import ConfigError
from ponderkit.contract.experiment import load_experiment
from ponderkit.devkit.conformance import check_optimizer
from ponderkit.engine.train import build_optimizer
from ponderkit.plugins.optimizers.muon import NS_COEFFICIENTS, newton_schulz
from torch import nn

LR, WD, STEPS = 0.05, 0.1, 3


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.up = nn.Linear(4, 8)  # weight (8, 4): tall
        self.down = nn.Linear(8, 4)  # weight (4, 8): wide
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3, bias=False)


def spec(registry, name: str, **fields):
    from ponderkit.contract.config import Structurer

    s = Structurer(registry)
    out = s.structure_spec("optimizer", {"name": name, **fields}, ("optimizer",))
    assert not s.issues, s.issues
    return out


def run(registry, name: str, **fields):
    """STEPS steps of optimizer ``name`` on a float64 Tiny with seeded gradients; returns the
    initial weights, the gradients of each step and the final weights (numpy)."""
    torch.manual_seed(0)
    model = Tiny().double()
    opt = build_optimizer(model, spec(registry, name, lr=LR, weight_decay=WD, **fields), registry)
    start = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    rng = np.random.default_rng(1)
    grads = []
    for _ in range(STEPS):
        step = {n: rng.normal(size=p.shape) for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.grad = torch.from_numpy(step[n].copy())
        opt.step()
        grads.append(step)
    end = {n: p.detach().numpy() for n, p in model.named_parameters()}
    return start, grads, end


def decays(name: str) -> bool:
    """The default ``no_decay: [vectors]``: matrices decay, vectors do not."""
    return name not in ("up.bias", "down.bias", "norm.weight", "norm.bias")


def adamw_ref(p, gs, lr, wd, b1, b2, eps):
    m = v = 0.0
    for t, g in enumerate(gs, 1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def test_adamw_follows_its_update_rule(registry):
    start, grads, end = run(registry, "adamw", betas=[0.9, 0.95], eps=1e-8)
    for n, p in start.items():
        ref = adamw_ref(p, [g[n] for g in grads], LR, WD if decays(n) else 0.0, 0.9, 0.95, 1e-8)
        np.testing.assert_allclose(end[n], ref, rtol=1e-12, atol=1e-14, err_msg=n)


def test_adam_atan2_follows_the_authors_kernel(registry):
    a, b = 1.27, 0.8
    start, grads, end = run(registry, "adam_atan2", betas=[0.9, 0.95], a=a, b=b)
    for n, p in start.items():
        wd = WD if decays(n) else 0.0
        m = v = 0.0
        for t, g in enumerate([g[n] for g in grads], 1):
            p = p * (1 - LR * wd)
            m = 0.9 * m + 0.1 * g
            v = 0.95 * v + 0.05 * g * g
            p = p - a * LR / (1 - 0.9**t) * np.arctan2(m, b * np.sqrt(v) / np.sqrt(1 - 0.95**t))
        np.testing.assert_allclose(end[n], p, rtol=1e-12, atol=1e-14, err_msg=n)
    # bounded: no coordinate moves by more than a * lr * pi/2 / (1 - b1^t) per step (+ decay)
    step1 = abs(run(registry, "adam_atan2", a=a, b=b)[2]["up.weight"] - start["up.weight"])
    assert step1.max() < STEPS * a * LR * np.pi / 2 / (1 - 0.9) + 1e-9


def test_lion_follows_its_update_rule(registry):
    start, grads, end = run(registry, "lion", betas=[0.9, 0.99])
    for n, p in start.items():
        wd = WD if decays(n) else 0.0
        m = 0.0
        for g in [g[n] for g in grads]:
            p = p * (1 - LR * wd) - LR * np.sign(0.9 * m + 0.1 * g)
            m = 0.99 * m + 0.01 * g
        np.testing.assert_allclose(end[n], p, rtol=1e-12, atol=1e-14, err_msg=n)


def ns_ref(g: np.ndarray, steps: int) -> np.ndarray:
    a, b, c = NS_COEFFICIENTS
    x = g / (np.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_orthogonalises_hidden_matrices_and_adamw_does_the_rest(registry, nesterov):
    mu = 0.9
    start, grads, end = run(registry, "muon", momentum=mu, nesterov=nesterov, betas=[0.9, 0.95])
    for n, p in start.items():
        gs = [g[n] for g in grads]
        wd = WD if decays(n) else 0.0
        if n in ("up.weight", "down.weight"):  # hidden matrices: Muon
            buf = np.zeros_like(p)
            for g in gs:
                p = p * (1 - LR * wd)
                buf = mu * buf + (1 - mu) * g
                u = (1 - mu) * g + mu * buf if nesterov else buf
                p = p - LR * 0.2 * np.sqrt(max(p.shape)) * ns_ref(u, 5)
        else:  # embedding, head, vectors: AdamW
            p = adamw_ref(p, gs, LR, wd, 0.9, 0.95, 1e-8)
        np.testing.assert_allclose(end[n], p, rtol=1e-10, atol=1e-12, err_msg=n)


@pytest.mark.parametrize("shape", [(8, 4), (4, 8), (6, 6)])
def test_newton_schulz_approximates_the_orthogonal_factor(shape):
    """Against the SVD: NS(G) = U diag(s) V^T with every s in Jordan's band (~0.7-1.2)."""
    g = np.random.default_rng(0).normal(size=shape)
    out = newton_schulz(torch.from_numpy(g), 5).numpy()
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    s = np.diag(u.T @ out @ vt.T)
    np.testing.assert_allclose(u @ np.diag(s) @ vt, out, atol=1e-8)
    assert s.min() > 0.6 and s.max() < 1.25, s


@pytest.mark.parametrize(
    "no_decay, spared",
    [
        (["vectors"], {"up.bias", "down.bias", "norm.weight", "norm.bias"}),
        (["norms"], {"norm.weight", "norm.bias"}),
        (["biases"], {"up.bias", "down.bias", "norm.bias"}),
        (["embeddings"], {"emb.weight"}),
        (
            ["norms", "biases", "embeddings"],
            {"up.bias", "down.bias", "norm.weight", "norm.bias", "emb.weight"},
        ),
        ([], set()),
    ],
)
@pytest.mark.parametrize("name", ["adamw", "adam_atan2", "lion", "muon"])
def test_groups_spare_the_declared_categories(registry, name, no_decay, spared):
    model = Tiny()
    owned = frozenset({id(model.head.weight)})  # a callback's: kept out
    opt = build_optimizer(model, spec(registry, name, no_decay=no_decay), registry, owned)
    names = {id(p): n for n, p in model.named_parameters()}
    got = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert set(got) == set(names.values()) - {"head.weight"}
    assert {n for n, wd in got.items() if wd == 0.0} == spared


@pytest.mark.parametrize("name", ["adamw", "adam_atan2", "lion", "muon"])
def test_each_optimizer_keeps_the_contract(registry, name):
    check_optimizer(
        lambda model, exclude: build_optimizer(model, spec(registry, name), registry, exclude)
    )


def test_the_kit_catches_an_optimizer_that_decays_a_parameter_without_gradient():
    class Leaky(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    p.mul_(0.9)  # decays even without a gradient
            return super().step(closure)

    with pytest.raises(AssertionError, match="without a gradient"):
        check_optimizer(
            lambda m, ex: Leaky(
                [p for p in m.parameters() if p.requires_grad and id(p) not in ex], lr=0.1
            )
        )


def test_an_optimizer_section_without_name_is_adamw_and_a_name_picks_the_plugin(
    sort_yaml, registry
):
    exp = load_experiment(sort_yaml, ["optimizer.lr=1e-4"], registry=registry).config
    assert (exp.optimizer.name, exp.optimizer.config.lr) == ("adamw", 1e-4)
    exp = load_experiment(
        sort_yaml, ["optimizer.name=muon", "optimizer.momentum=0.9"], registry=registry
    ).config
    assert (exp.optimizer.name, exp.optimizer.config.momentum) == ("muon", 0.9)
    with pytest.raises(ConfigError, match=r"optimizer\.name: unknown optimizer 'lino'.*lion"):
        load_experiment(sort_yaml, ["optimizer.name=lino"], registry=registry)
    with pytest.raises(ConfigError, match=r"optimizer\.momentum: unknown key"):
        load_experiment(sort_yaml, ["optimizer.momentum=0.9"], registry=registry)  # adamw's


def test_the_trainer_steps_with_the_named_optimizer(sort_yaml, registry):
    from ponderkit.engine.train import Trainer
    from ponderkit.plugins.optimizers.lion import Lion

    cfg = load_experiment(
        sort_yaml,
        ["optimizer.name=lion", "train.steps=2", "train.flops_every=0"],
        registry=registry,
    ).config
    trainer = Trainer(cfg, registry, quiet=True)
    assert isinstance(trainer.optimizer, Lion)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert any(
        not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )
