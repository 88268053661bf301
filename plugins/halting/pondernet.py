"""``pondernet`` (Banino et al. 2021): a learned halting distribution over recursion steps.

After step n a head gives lambda_n = sigmoid(w . mean(s_n) + b); the probability of halting
exactly at n is p_n = lambda_n prod_{j<n} (1 - lambda_j), with lambda = 1 at ``max_steps`` so
that p sums to 1. Training minimises sum_n p_n L_n + beta KL(p || Geometric(lambda_p)), the
geometric prior truncated to ``max_steps`` and renormalised. Evaluation halts at the first step
whose cumulative p reaches 1/2 (``eval: threshold``) or samples halting with lambda_n
(``eval: sample``) and predicts with that step's output.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, ForwardContext, Linear, hookimpl, sequence_loss
from torch import Tensor, nn


@attrs.frozen
class PonderNetConfig:
    """PonderNet halting: p_n = lambda_n prod(1 - lambda_j), loss sum p_n L_n + beta KL to a geometric prior."""

    #: N: the most recursion steps a sample runs
    max_steps: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    #: lambda_p of the geometric prior the halting distribution is pulled towards
    prior: float = attrs.field(
        default=0.2, validator=[attrs.validators.gt(0), attrs.validators.le(1)]
    )
    #: weight of KL(p || Geometric(prior)) in the loss
    beta: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))
    #: at evaluation, halt where the cumulative probability passes 0.5 (threshold) or at a sampled step
    eval: Literal["threshold", "sample"] = "threshold"
    #: initial bias of the halting unit: lambda starts at sigmoid(init_bias)
    init_bias: float = -1.0


def halting_distribution(lam: Tensor, complete: bool = True) -> Tensor:
    """lambda (S, B) -> p (S, B): p_n = lambda_n prod_{j<n} (1 - lambda_j).

    With ``complete`` the last lambda is forced to 1 so that p sums to 1 (S = max_steps);
    without, p covers only the steps run so far."""
    if complete:
        lam = torch.cat([lam[:-1], torch.ones_like(lam[-1:])])
    survive = torch.cumprod(torch.cat([torch.ones_like(lam[:1]), 1 - lam[:-1]]), dim=0)
    return lam * survive


def geometric_prior(prior: float, steps: int, like: Tensor) -> Tensor:
    """Geometric(prior) over steps 1..S, truncated and renormalised, as (S,) like ``like``."""
    n = torch.arange(steps, dtype=torch.float64)
    q = prior * (1 - prior) ** n
    return (q / q.sum()).to(device=like.device, dtype=like.dtype)


def kl_to_prior(p: Tensor, prior: float) -> Tensor:
    """KL(p || truncated Geometric(prior)) per sample for p (S, B)."""
    q = geometric_prior(prior, p.shape[0], p)[:, None]
    return (p * (torch.log(p.clamp_min(1e-30)) - torch.log(q))).sum(0)


class PonderNet(nn.Module):
    def __init__(self, cfg: PonderNetConfig, d_model: int):
        super().__init__()
        self.max_steps, self.prior, self.beta, self.eval_mode = (
            cfg.max_steps,
            cfg.prior,
            cfg.beta,
            cfg.eval,
        )
        self.unit = Linear(d_model, 1, bias=True)
        with torch.no_grad():
            self.unit.weight.zero_()
            self.unit.bias.fill_(cfg.init_bias)

    def forward(self, y: Tensor, ctx: ForwardContext) -> dict[str, Tensor]:
        lam = torch.sigmoid(self.unit(y.mean(1)).float().squeeze(-1))  # (B,)
        # the uniform draw for sampled halting is fixed here, so every later decision agrees
        return {"lambda": lam, "u": torch.rand_like(lam)}

    def _lambdas(self, signals_steps: list[dict[str, Tensor]]) -> Tensor:
        return torch.stack([s["lambda"] for s in signals_steps])  # (S, B)

    def halt_step(self, signals_steps: list[dict[str, Tensor]]) -> Tensor:
        """0-based evaluation halting step per sample (B,) over the steps run so far."""
        lam = self._lambdas(signals_steps)
        complete = lam.shape[0] >= self.max_steps
        if self.eval_mode == "sample":
            stop = torch.stack([s["u"] for s in signals_steps]) < lam
        else:
            stop = halting_distribution(lam, complete).cumsum(0) >= 0.5
        stop[-1] |= complete
        found = stop.any(0)
        idx = stop.float().argmax(0)
        return torch.where(found, idx, torch.full_like(idx, lam.shape[0]))  # S: not yet

    def halted_after(self, signals_steps: list[dict[str, Tensor]]) -> Tensor:
        return self.halt_step(signals_steps) < len(signals_steps)

    def combine(self, logits_steps: list[Tensor], signals_steps: list[dict[str, Tensor]]):
        idx = self.halt_step(signals_steps).clamp(max=len(logits_steps) - 1)
        logits = torch.stack(logits_steps)  # (S, B, T, V)
        chosen = logits.gather(0, idx.view(1, -1, 1, 1).expand(1, *logits.shape[1:]))[0]
        return chosen, idx + 1

    def should_halt(self, signals: dict[str, Tensor], steps: Tensor, training: bool) -> Tensor:
        return steps >= self.max_steps

    def unrolled_loss(self, logits_steps, signals_steps, labels, loss_kind):
        p = halting_distribution(self._lambdas(signals_steps))  # (S, B)
        per_step = torch.stack([sequence_loss(lg, labels, loss_kind) for lg in logits_steps])
        task = (p * per_step).sum(0).mean()
        kl = kl_to_prior(p, self.prior).mean()
        expected = (p * torch.arange(1, p.shape[0] + 1, device=p.device)[:, None]).sum(0)
        logits, steps = self.combine([lg.detach() for lg in logits_steps], signals_steps)
        metrics = {
            "kl_prior": kl.detach(),
            "expected_steps": expected.mean().detach(),
            "halt_steps": steps.float().mean(),
        }
        return task, self.beta * kl, metrics, logits

    def loss(self, signals, correct, **_):
        return correct.new_zeros((), dtype=torch.float32), {}


def build_pondernet(cfg: PonderNetConfig, ctx: BuildContext) -> PonderNet:
    return PonderNet(cfg, ctx.d_model)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("halting", "pondernet", PonderNetConfig, build_pondernet, requires={"carry"})
