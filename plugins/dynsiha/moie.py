"""``moie`` (seed 004): the MoIE feed-forward that ADR-0001 removed, kept for its A/B.

y = SPL_2(ReLU(SPL_1(x))) with SPL_1: D -> H and SPL_2: H -> D SparseProtoLinear units
(:class:`~ponderkit.plugins.dynsiha.mixer.SparseProtoLinear`): each masks its own output
units per token, so the hidden layer is sparse twice over (the SPL mask, then the ReLU).
"""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, ForwardContext, hookimpl
from ponderkit.plugins.dynsiha.mixer import SparseProtoLinear
from torch import Tensor, nn
from torch.nn import functional as F


@attrs.frozen
class MoIEConfig:
    """MoIE FFN (seed 004, removed by ADR-0001): SPL_2(ReLU(SPL_1(x))), hidden width H.

    H is ``hidden``, or round(``expansion`` * D) when unset. Statistics (averaged into the
    training metrics): ``moie/spl_active_frac``, the fraction of SPL output units switched on
    (both units), and ``moie/hidden_sparsity``, the fraction of hidden activations that are
    exactly 0 after ReLU(SPL_1(x)) (IMP-003's activation sparsity)."""

    hidden: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    expansion: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))


class MoIE(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.up = SparseProtoLinear(d_model, hidden, stat="moie/spl_active_frac")  # SPL_1
        self.down = SparseProtoLinear(hidden, d_model, stat="moie/spl_active_frac")  # SPL_2

    def forward(self, h: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        hidden = F.relu(self.up(h, ctx))  # (B, T, H)
        if ctx is not None:
            ctx.add_stat("moie/hidden_sparsity", (hidden == 0).float().mean())
        return self.down(hidden, ctx)


def build_moie(cfg: MoIEConfig, ctx: BuildContext) -> MoIE:
    hidden = cfg.hidden or max(1, round(cfg.expansion * ctx.d_model))
    return MoIE(ctx.d_model, hidden)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("ffn", "moie", MoIEConfig, build_moie)
