"""Residual blocks: ``post_norm`` (TRM) and ``pre_norm``."""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, ForwardContext, Spec, component, hookimpl, rms_norm
from torch import Tensor, nn


@attrs.frozen
class PostNormConfig:
    """Post-norm residual block (TRM): h = rmsnorm(h + mixer(h)); h = rmsnorm(h + ffn(h)).

    RMSNorm in float32 without gain; an ffn of ``none`` skips the second sub-layer."""

    #: token mixer: how positions exchange information (attention, mlp_t, dynsmha ...)
    mixer: Spec = component("mixer", default="attention")
    #: channel mixer applied per position (swiglu, dynmoe, none ...)
    ffn: Spec = component("ffn", default="swiglu")
    #: RMSNorm epsilon (computed in float32, no gain)
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))


@attrs.frozen
class PreNormConfig:
    """Pre-norm residual block: h = h + mixer(rmsnorm(h)); h = h + ffn(rmsnorm(h))."""

    #: token mixer: how positions exchange information (attention, mlp_t, dynsmha ...)
    mixer: Spec = component("mixer", default="attention")
    #: channel mixer applied per position (swiglu, dynmoe, none ...)
    ffn: Spec = component("ffn", default="swiglu")
    #: RMSNorm epsilon (computed in float32, no gain)
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0))


class ResidualBlock(nn.Module):
    def __init__(self, mixer: nn.Module, ffn: nn.Module | None, eps: float, post_norm: bool):
        super().__init__()
        self.mixer, self.ffn, self.eps, self.post_norm = mixer, ffn, eps, post_norm

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        for layer in (self.mixer, self.ffn):
            if layer is None:
                continue
            if self.post_norm and getattr(layer, "mixes_positions", False):
                # TRM's mlp_t: residual and norm in the transposed (B, D, T) frame
                ht = h.transpose(1, 2)
                h = rms_norm(ht + layer.forward_transposed(ht), self.eps).transpose(1, 2)
            elif self.post_norm:
                h = rms_norm(h + layer(h, ctx), self.eps)
            else:
                h = h + layer(rms_norm(h, self.eps), ctx)
        return h


def build_post_norm(cfg: PostNormConfig, ctx: BuildContext) -> ResidualBlock:
    return ResidualBlock(ctx.build(cfg.mixer), ctx.build(cfg.ffn), cfg.eps, post_norm=True)


def build_pre_norm(cfg: PreNormConfig, ctx: BuildContext) -> ResidualBlock:
    return ResidualBlock(ctx.build(cfg.mixer), ctx.build(cfg.ffn), cfg.eps, post_norm=False)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("block", "post_norm", PostNormConfig, build_post_norm)
    registry.add("block", "pre_norm", PreNormConfig, build_pre_norm)
