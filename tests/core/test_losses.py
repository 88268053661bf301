"""Losses against float64 references written independently with numpy."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ponderkit.engine.losses import accuracy, sequence_loss, token_losses


def reference_stablemax_nll(logits: np.ndarray, label: int) -> float:
    s = np.where(logits >= 0, logits + 1.0, 1.0 / (1.0 - logits))
    return float(-np.log(s[label] / s.sum()))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.floats(0.1, 30.0))
def test_stablemax_matches_float64_reference(seed, vocab, scale):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 5, vocab)) * scale
    labels = rng.integers(0, vocab, size=(3, 5))
    got = (
        token_losses(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), "stablemax")
        .double()
        .numpy()
    )
    want = np.array(
        [[reference_stablemax_nll(logits[b, t], labels[b, t]) for t in range(5)] for b in range(3)]
    )
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_softmax_sequence_loss_ignores_labels_and_averages_per_sequence():
    logits = torch.randn(2, 4, 7, dtype=torch.float64)
    labels = torch.tensor([[1, 2, -100, 3], [-100, -100, 0, 6]])
    got = sequence_loss(logits, labels, "softmax")
    lp = logits.numpy() - np.log(np.exp(logits.numpy()).sum(-1, keepdims=True))
    want = [
        np.mean([-lp[b, t, labels[b, t]] for t in range(4) if labels[b, t] >= 0]) for b in range(2)
    ]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_exact_match_ignores_masked_positions():
    logits = torch.zeros(2, 3, 4)
    logits[..., 1] = 1.0  # predicts 1 everywhere
    labels = torch.tensor([[1, -100, 1], [1, 2, 1]])
    correct, exact, valid = accuracy(logits, labels)
    assert exact.tolist() == [True, False]
    assert correct.sum().item() == 4 and valid.sum().item() == 5
