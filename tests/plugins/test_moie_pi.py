"""MoIE against a float64 numpy formula of seed 004; the PI-Score against its definition."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from ponderkit import ForwardContext
from ponderkit.plugins.callbacks.pi_score import PIScore, PIScoreConfig, predictive_entropy
from ponderkit.plugins.dynsiha.moie import MoIE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "properties"))
from routing_props import PROPERTY  # noqa: E402


def spl_reference(x: np.ndarray, unit) -> np.ndarray:
    """Seed 004: comp = x W_mu^T + b; M = mas(x W_p^T / sqrt(D_in) - mas(x W_g^T))."""

    def mas(z):
        return np.maximum(z / (np.abs(z).max(-1, keepdims=True) + 1e-9), 0.0)

    w = {n: p.detach().double().numpy() for n, p in unit.named_parameters()}
    comp = x @ w["comp"].T + w["comp_bias"]
    match = x @ w["proto"].T / math.sqrt(x.shape[-1])
    return comp * mas(match - mas(x @ w["gate"].T))


@PROPERTY
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 8),
    hidden=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_moie_is_spl2_relu_spl1_in_float64(n, d, hidden, seed):
    torch.manual_seed(seed)
    layer = MoIE(d, hidden).double()
    with torch.no_grad():
        for unit in (layer.up, layer.down):
            unit.comp_bias.normal_()
    x = torch.randn(1, n, d, dtype=torch.float64)
    ctx = ForwardContext()
    got = layer(x, ctx)[0].detach().numpy()
    hidden_ref = np.maximum(spl_reference(x[0].numpy(), layer.up), 0.0)
    expected = spl_reference(hidden_ref, layer.down)
    assert np.allclose(got, expected, atol=1e-12, rtol=1e-12)
    sparsity = ctx.stat_means()["moie/hidden_sparsity"].item()
    assert math.isclose(sparsity, (hidden_ref == 0).mean(), rel_tol=1e-6)  # a float32 stat


def test_pi_score_is_exp_minus_error_entropy_and_surprise():
    class Head(torch.nn.Linear):
        pass

    head = Head(3, 4)
    trainer = type("T", (), {})()
    trainer.model = type("M", (), {"head": head, "loss_kind": "softmax"})()
    cb = PIScore(PIScoreConfig(surprise_weight=0.5))
    cb.on_train_start(trainer)
    logits = [head(torch.randn(2, 5, 3)) for _ in range(2)]  # two unrolled steps
    probs = [torch.softmax(z.detach().double(), -1) for z in logits]
    tau = np.mean([float(-(p * p.log()).sum(-1).mean()) for p in probs])
    metrics = {"lm_loss": torch.tensor(0.7), "grad_norm": torch.tensor(2.0)}
    cb.on_step_end(trainer, 1, metrics)
    assert math.isclose(float(metrics["pi/tau"]), tau, rel_tol=1e-5)
    expected = math.exp(-(0.7 + tau + 0.5 * 2.0))
    assert math.isclose(float(metrics["pi_score"]), expected, rel_tol=1e-5)
    # a certain, right model at rest scores 1; uniform predictions over V cost log V
    sure = torch.tensor([[30.0, 0.0, 0.0, 0.0]])
    assert float(predictive_entropy(sure)) < 1e-9
    assert math.isclose(float(predictive_entropy(torch.zeros(1, 4))), math.log(4), rel_tol=1e-6)
