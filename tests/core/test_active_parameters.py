"""Active parameters per token against hand counts, a shared expert library included."""

from __future__ import annotations

import pytest
import torch
from ponderkit.lab.run_analysis import active_parameters
from torch import nn


class Router(nn.Module):
    def __init__(self, experts: int):
        super().__init__()
        self.num_experts = experts
        self.proj = nn.Linear(4, experts, bias=False)  # 4 * E router weights, always active


class Routed(nn.Module):
    def __init__(self, experts: nn.Parameter):
        super().__init__()
        self.router = Router(experts.shape[0])
        self.experts = experts


def test_own_experts_count_k_over_e():
    library = nn.Parameter(torch.zeros(8, 3, 5))  # 8 experts of 15 weights
    model = nn.Sequential(Routed(library), nn.Linear(2, 2))  # + 6 dense
    active, _ = active_parameters(model, {"0.router": {"num_experts": 8, "experts_per_token": 2.0}})
    assert active == pytest.approx(4 * 8 + 6 + 120 * 2 / 8)


def test_a_shared_library_is_counted_once_as_the_union_of_its_users():
    library = nn.Parameter(torch.zeros(8, 3, 5))
    model = nn.Sequential(Routed(library), Routed(library))
    routers = {
        "0.router": {"num_experts": 8, "experts_per_token": 2.0},
        "1.router": {"num_experts": 8, "experts_per_token": 4.0},
    }
    active, _ = active_parameters(model, routers)
    union = 1 - (1 - 2 / 8) * (1 - 4 / 8)  # independent picks: 5/8 of the experts
    assert active == pytest.approx(2 * 4 * 8 + 120 * union)
    assert 0 < active <= sum(p.numel() for p in model.parameters())
