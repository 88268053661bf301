"""``muon``: momentum orthogonalised by Newton-Schulz for matrices, AdamW for the rest
(Jordan et al. 2024, "Muon: an optimizer for hidden layers"; the update scale of Liu et al.
2025, "Muon is Scalable for LLM Training")."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any, Literal

import attrs
import torch
from ponderkit import BuildContext, OptimizerConfig, betas_in_range, hookimpl
from torch import Tensor, nn

from .elementwise import ElementwiseOptimizer, adam_moments
from .groups import category, named_trainable

# the quintic iteration's coefficients (Jordan et al.): they push every singular value of a
# matrix of norm <= 1 into roughly [0.7, 1.2] in 5 steps, faster than the cubic 1.5/-0.5
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@attrs.frozen
class MuonConfig(OptimizerConfig):
    """Muon: momentum orthogonalised by Newton-Schulz for matrices, AdamW for the rest.

    For a hidden matrix W (every parameter of 2 or more dimensions that is not an embedding
    table nor in a module matched by ``adamw_modules``; more dimensions are flattened to
    (shape[0], -1)), with gradient G:
    B = mu B + (1-mu) G; U = (1-mu) G + mu B when ``nesterov`` else B;
    O = NS(U / ||U||_F), ``ns_steps`` of X = a X + (b A + c A^2) X with A = X X^T
    (on the wider orientation); W = W (1 - lr wd) - lr s O, where s = 0.2 sqrt(max(rows, cols))
    (``scale: adamw_rms``: the update's RMS matches AdamW's, so one lr and weight decay
    serve both parts) or s = sqrt(max(1, rows / cols)) (``scale: shape``, Jordan's, with lr
    ~0.02 in mind). Every other parameter (embeddings, the output and halting heads, vectors)
    takes AdamW with ``betas`` and ``eps``."""

    #: mu: decay of the matrices' momentum buffer
    momentum: float = attrs.field(
        default=0.95, validator=[attrs.validators.ge(0), attrs.validators.lt(1)]
    )
    #: orthogonalise (1-mu) G + mu B instead of B
    nesterov: bool = True
    #: Newton-Schulz iterations
    ns_steps: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    #: update scale: adamw_rms (0.2 sqrt(max dim), AdamW's lr) or shape (Jordan's)
    scale: Literal["adamw_rms", "shape"] = "adamw_rms"
    #: module names (fnmatch patterns) whose matrices take AdamW: the output and halting heads
    adamw_modules: tuple[str, ...] = ("head", "halting", "halting.*")
    #: (b1, b2) of the AdamW part (embeddings, heads, vectors)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.95), validator=betas_in_range)
    #: eps of the AdamW part
    eps: float = attrs.field(default=1e-8, validator=attrs.validators.gt(0))


def newton_schulz(g: Tensor, steps: int) -> Tensor:
    """The orthogonal factor U V^T of g = U S V^T, approximately (singular values ~0.7-1.2)."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.norm() + 1e-7)
    wide = x.size(0) <= x.size(1)
    if not wide:  # iterate on the side whose Gram matrix X X^T is the smaller
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.mT


def update_scale(rows: int, cols: int, scale: str) -> float:
    if scale == "adamw_rms":
        return 0.2 * max(rows, cols) ** 0.5
    return max(1.0, rows / cols) ** 0.5


class Muon(ElementwiseOptimizer):
    """Groups with ``muon: True`` take the orthogonalised update, the others AdamW."""

    def __init__(self, groups: list[dict], defaults: dict[str, Any]):
        super().__init__(groups, defaults)

    def update(self, p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        (self._muon if group["muon"] else self._adamw)(p, group)

    def _muon(self, p: Tensor, group: dict) -> None:
        state, mu = self.state[p], group["momentum"]
        g = p.grad.reshape(p.shape[0], -1)  # (rows, cols)
        if not state:
            state["momentum_buffer"] = torch.zeros_like(g)
        buf = state["momentum_buffer"]
        buf.lerp_(g, 1 - mu)
        u = g.lerp(buf, mu) if group["nesterov"] else buf
        o = newton_schulz(u, group["ns_steps"])
        s = update_scale(g.shape[0], g.shape[1], group["scale"])
        p.add_(o.reshape(p.shape), alpha=-group["lr"] * s)

    def _adamw(self, p: Tensor, group: dict) -> None:
        b1, b2 = group["betas"]
        m, v, t = adam_moments(self.state[p], p.grad, (b1, b2))
        denom = (v / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1**t))


def takes_muon(name: str, p: nn.Parameter, module: nn.Module, adamw_modules: Iterable[str]) -> bool:
    """Whether parameter ``name`` of ``module`` is a hidden matrix (Muon's) or not (AdamW's)."""
    module_name = name.rpartition(".")[0]
    if p.ndim < 2 or "embeddings" in category(name, p, module):
        return False
    return not any(fnmatch.fnmatchcase(module_name, pat) for pat in adamw_modules)


def build_muon(
    cfg: MuonConfig, ctx: BuildContext, *, model: nn.Module, exclude: Iterable[int] = ()
) -> Muon:
    spare = set(cfg.no_decay)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p, module in named_trainable(model, exclude):
        muon = takes_muon(name, p, module, cfg.adamw_modules)
        decays = not (category(name, p, module) & spare)
        buckets.setdefault((muon, decays), []).append(p)
    groups = [
        {
            "params": buckets[key],
            "muon": key[0],
            "weight_decay": cfg.weight_decay if key[1] else 0.0,
        }
        for key in [(True, True), (True, False), (False, True), (False, False)]
        if key in buckets
    ]
    defaults = {
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "momentum": cfg.momentum,
        "nesterov": cfg.nesterov,
        "ns_steps": cfg.ns_steps,
        "scale": cfg.scale,
        "betas": tuple(cfg.betas),
        "eps": cfg.eps,
        "muon": False,
    }
    return Muon(groups, defaults)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("optimizer", "muon", MuonConfig, build_muon)
