"""SwiGLU feed-forward layers: over channels (``ffn/swiglu``) and over positions
(``mixer/mlp_t``, TRM's Sudoku variant), plus ``ffn/none``."""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, ForwardContext, Linear, hookimpl, swiglu, swiglu_width
from torch import Tensor, nn


@attrs.frozen
class SwiGLUConfig:
    """SwiGLU feed-forward over channels: down(silu(gate(h)) * up(h)), no biases.

    Hidden width round(expansion*D*2/3), rounded up to a multiple of 256 (as TRM)."""

    #: hidden width as a multiple of the input width (SwiGLU: round(expansion*D*2/3) up to a multiple of 256)
    expansion: float = attrs.field(default=4.0, validator=attrs.validators.gt(0))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_up = Linear(d, 2 * hidden)
        self.down = Linear(hidden, d)

    def forward(self, h: Tensor, ctx: ForwardContext | None = None) -> Tensor:
        return self.down(swiglu(self.gate_up(h)))


def build_swiglu(cfg: SwiGLUConfig, ctx: BuildContext) -> SwiGLU:
    return SwiGLU(ctx.d_model, swiglu_width(cfg.expansion, ctx.d_model))


@attrs.frozen
class MlpTConfig:
    """MLP over positions (TRM's Sudoku mixer): a SwiGLU applied along the sequence axis.

    Its width follows the sequence length, so it needs no positional encoding."""

    #: hidden width as a multiple of the input width (SwiGLU: round(expansion*D*2/3) up to a multiple of 256)
    expansion: float = attrs.field(default=4.0, validator=attrs.validators.gt(0))


class MlpT(nn.Module):
    #: a post-norm block applies the residual and norm in the transposed frame (as TRM)
    mixes_positions = True

    def __init__(self, seq_len: int, expansion: float):
        super().__init__()
        self.mlp = SwiGLU(seq_len, swiglu_width(expansion, seq_len))

    def forward_transposed(self, ht: Tensor) -> Tensor:
        return self.mlp(ht)  # (B, D, T) mixed over T

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        return self.forward_transposed(h.transpose(1, 2)).transpose(1, 2)


def build_mlp_t(cfg: MlpTConfig, ctx: BuildContext) -> MlpT:
    return MlpT(ctx.seq_len, cfg.expansion)


@attrs.frozen
class NoFfnConfig:
    """No channel mixing: the block skips its ffn sub-layer entirely (ADR-0001)."""


def build_none(cfg: NoFfnConfig, ctx: BuildContext) -> None:
    return None


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("ffn", "swiglu", SwiGLUConfig, build_swiglu)
    registry.add("ffn", "none", NoFfnConfig, build_none, absent=True)
    registry.add("mixer", "mlp_t", MlpTConfig, build_mlp_t)
