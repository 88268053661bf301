"""``trm`` and ``hrm`` recursions: latent and deep recursion with a carried (y, z) state.

TRM (Jolicoeur-Martineau 2025): one network ``net`` of ``layers`` blocks. One supervision
step is a *deep recursion*: ``T - 1`` latent recursions under no_grad, then one with
gradients. A *latent recursion* updates the latent z ``n`` times from (x, y, z), then the
answer y once from (y, z). HRM (Wang et al. 2025): two networks, a fast L and a slow H,
with the one-step gradient approximation (only the last L and H updates build a graph).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import attrs
import torch
from ponderkit import BuildContext, Carry, ForwardContext, Spec, component, hookimpl, trunc_normal_
from torch import Tensor, nn

positive = attrs.validators.gt(0)


class Net(nn.Module):
    """``layers`` blocks applied in order to ``h + injection``."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: Tensor, injection: Tensor, ctx: ForwardContext) -> Tensor:
        h = h + injection
        for block in self.blocks:
            h = block(h, ctx)
        return h


class StateInit(nn.Module):
    """Fixed random initial vectors for the carried states (truncated normal, std 1)."""

    def __init__(self, d_model: int, names: tuple[str, ...], seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        for name in names:
            init = torch.empty(d_model, device="cpu")
            self.register_buffer(f"{name}_init", trunc_normal_(init, 1.0, gen), persistent=True)
        self.names = names

    def carry(self, x: Tensor) -> Carry:
        return {n: getattr(self, f"{n}_init").to(x.dtype).expand_as(x).clone() for n in self.names}


# -- TRM ---------------------------------------------------------------------------------------
@attrs.frozen
class TRMConfig:
    """Tiny Recursive Model recursion: x/y/z with T deep cycles of n latent updates.

    One step: T-1 latent recursions under no_grad, then one with gradients; each latent
    recursion is ``n`` times z = net(z + y + x), then y = net(y + z). y is the answer state.

    ``no_grad_precision: bf16`` runs the T-1 recursions without gradients in bfloat16
    throughout: the states x, y, z as well (under ``train.precision: bf16`` only the matmuls
    are, and the residual stream stays float32), which halves the memory traffic of those
    recursions; the graded recursion is unchanged, and starts from y, z cast back.

    ``precision: bf16`` goes further, as the TRM authors' ``forward_dtype: bfloat16`` does: every
    recursion, the graded one included, runs its states in bfloat16 (norms still compute in
    float32 and cast back), the carry is kept in bfloat16, and the output y is bfloat16; the
    weights stay float32 for the optimizer. It halves the bytes of every residual add, norm and
    cast of the step (the part of a compiled step above its GEMMs), at the cost of gradients
    through a bfloat16 residual stream, which is what the authors train with."""

    #: the block each layer of the network is built from
    block: Spec = component("block", default="post_norm")
    #: blocks in the one network `net` (L_layers in TRM)
    layers: int = attrs.field(default=2, validator=positive)
    #: T: recursions per supervision step (T-1 without gradients, then one with)
    H_cycles: int = attrs.field(default=3, validator=positive)
    #: n: latent updates z = net(z + y + x) per recursion before y = net(y + z)
    L_cycles: int = attrs.field(default=6, validator=positive)
    no_grad_precision: Literal["same", "bf16"] = "same"
    precision: Literal["same", "bf16"] = "same"


class TRMRecursion(nn.Module):
    def __init__(self, cfg: TRMConfig, ctx: BuildContext):
        super().__init__()
        self.H_cycles, self.L_cycles = cfg.H_cycles, cfg.L_cycles
        self.no_grad_precision = cfg.no_grad_precision
        self.precision = cfg.precision
        self.net = Net([ctx.build(cfg.block) for _ in range(cfg.layers)])
        self.init = StateInit(ctx.d_model, ("y", "z"), ctx.seed)

    def initial_carry(self, x: Tensor) -> Carry:
        return self.init.carry(x.bfloat16() if self.precision == "bf16" else x)

    def latent_recursion(self, x: Tensor, y: Tensor, z: Tensor, ctx: ForwardContext):
        injection = y + x  # y does not change while z is updated: added once, not n times
        for _ in range(self.L_cycles):
            z = self.net(z, injection, ctx)
        y = self.net(y, z, ctx)
        return y, z

    def forward(self, carry: Carry, x: Tensor, ctx: ForwardContext) -> tuple[Carry, Tensor]:
        """One deep recursion (one supervision step)."""
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self._deep_recursion(carry, x.bfloat16(), ctx)
        return self._deep_recursion(carry, x, ctx)

    def _deep_recursion(self, carry: Carry, x: Tensor, ctx: ForwardContext) -> tuple[Carry, Tensor]:
        y, z = carry["y"].to(x.dtype), carry["z"].to(x.dtype)
        with torch.no_grad(), self._no_grad_autocast(x):
            xs, dtype = x, y.dtype
            if self.no_grad_precision == "bf16":
                xs, y, z = x.bfloat16(), y.bfloat16(), z.bfloat16()
            for _ in range(self.H_cycles - 1):
                y, z = self.latent_recursion(xs, y, z, ctx)
            y, z = y.to(dtype), z.to(dtype)
        y, z = self.latent_recursion(x, y, z, ctx)
        return {"y": y, "z": z}, y

    def _no_grad_autocast(self, x: Tensor) -> contextlib.AbstractContextManager:
        if self.no_grad_precision == "bf16":
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_trm(cfg: TRMConfig, ctx: BuildContext) -> TRMRecursion:
    return TRMRecursion(cfg, ctx)


# -- HRM ---------------------------------------------------------------------------------------
@attrs.frozen
class HRMConfig:
    """Hierarchical Reasoning Model recursion: a slow H and a fast L network, one-step gradient.

    One step runs H_cycles x L_cycles updates of z_L = L(z_L + z_H + x), with z_H = H(z_H + z_L)
    after every L_cycles of them; only the final L and H updates carry gradients."""

    #: the block each layer of the network is built from
    block: Spec = component("block", default="post_norm")
    #: blocks of the slow (high-level) network
    H_layers: int = attrs.field(default=4, validator=positive)
    #: blocks of the fast (low-level) network
    L_layers: int = attrs.field(default=4, validator=positive)
    #: high-level updates per supervision step
    H_cycles: int = attrs.field(default=2, validator=positive)
    #: low-level updates per high-level update
    L_cycles: int = attrs.field(default=2, validator=positive)


class HRMRecursion(nn.Module):
    def __init__(self, cfg: HRMConfig, ctx: BuildContext):
        super().__init__()
        self.H_cycles, self.L_cycles = cfg.H_cycles, cfg.L_cycles
        self.H_net = Net([ctx.build(cfg.block) for _ in range(cfg.H_layers)])
        self.L_net = Net([ctx.build(cfg.block) for _ in range(cfg.L_layers)])
        self.init = StateInit(ctx.d_model, ("y", "z"), ctx.seed)

    def initial_carry(self, x: Tensor) -> Carry:
        return self.init.carry(x)

    def forward(self, carry: Carry, x: Tensor, ctx: ForwardContext) -> tuple[Carry, Tensor]:
        z_h, z_l = carry["y"], carry["z"]
        total = self.H_cycles * self.L_cycles
        with torch.no_grad():
            for i in range(total - 1):
                z_l = self.L_net(z_l, z_h + x, ctx)
                if (i + 1) % self.L_cycles == 0:
                    z_h = self.H_net(z_h, z_l, ctx)
        z_l = self.L_net(z_l, z_h + x, ctx)
        z_h = self.H_net(z_h, z_l, ctx)
        return {"y": z_h, "z": z_l}, z_h


def build_hrm(cfg: HRMConfig, ctx: BuildContext) -> HRMRecursion:
    return HRMRecursion(cfg, ctx)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add("recursion", "trm", TRMConfig, build_trm, provides={"carry"})
    registry.add("recursion", "hrm", HRMConfig, build_hrm, provides={"carry"})
