"""What every router shares: removed experts, activation counting, stats and reporting.

Not a plugin module: routers subclass :class:`RouterBase` and call :meth:`RouterBase.finish`.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable

import torch
from ponderkit import ForwardContext, Routing
from torch import Tensor, nn

RouteResult = tuple[Tensor, Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]

# compiled routes per router instance, outside the module (so copies, e.g. EMA's, compile
# their own rather than calling the original's parameters)
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compile_once(route: Callable[[Tensor], RouteResult]) -> Callable[[Tensor], RouteResult]:
    compiled = torch.compile(route, dynamic=True)
    state = {"ok": None}

    def call(x: Tensor) -> RouteResult:
        if state["ok"] is False:
            return route(x)
        try:
            out = compiled(x)
        except Exception as exc:  # a compiler missing or failing: route eagerly from now on
            if state["ok"]:
                raise
            state["ok"] = False
            warnings.warn(f"router not compiled, running eagerly: {exc}", stacklevel=3)
            return route(x)
        state["ok"] = True
        return out

    return call


class RouterBase(nn.Module):
    """Bookkeeping for a router over ``num_experts`` experts.

    Buffers: ``enabled`` (E,) bool, experts that may be selected at all (a removed expert is
    never active); ``activation_counts`` (E,) and ``tokens_seen`` (), int64 (exact, and kept
    so when the module is cast to a half-precision dtype), accumulated in training mode and
    read (then cleared) by the ``expert_reset`` callback.
    """

    #: names of this router's aux losses that depend on its parameters only (counted once per
    #: optimizer step: ``Routing.param_aux``); the others depend on the tokens
    param_aux_names: frozenset[str] = frozenset()

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts
        #: (N,) weights of the tokens whose step counts, for the token-dependent aux losses
        #: (None: all); set from ``ctx.running`` for the duration of one forward
        self.token_weights: Tensor | None = None
        self.register_buffer("enabled", torch.ones(num_experts, dtype=torch.bool))
        i64 = torch.int64
        self.register_buffer("activation_counts", torch.zeros(num_experts, dtype=i64), False)
        self.register_buffer("tokens_seen", torch.zeros((), dtype=i64), persistent=False)

    def forward(self, x: Tensor, ctx: ForwardContext | None = None) -> Routing:
        """Route tokens ``x`` (N, D) outside autocast: the router's fused kernels where it has
        them for ``x``, else :meth:`route` in float32 at least (float64 stays float64, for
        exact tests); then bookkeeping and reporting."""
        running = ctx.tokens_running(len(x)) if ctx is not None else None
        self.token_weights = None if running is None else running.to(torch.float32)
        try:
            with torch.autocast(x.device.type, enabled=False):
                routed = self.route_fused(x)
                if routed is None:
                    dtype = torch.promote_types(x.dtype, torch.float32)
                    routed = self._route_fn(x)(x.to(dtype))
        finally:
            self.token_weights = None
        return self.finish(*routed)

    def route_fused(self, x: Tensor) -> RouteResult | None:
        """:meth:`route` as fused kernels for ``x`` in its own dtype, where a router has them
        (None: use :meth:`route`)."""
        return None

    def _route_fn(self, x: Tensor) -> Callable[[Tensor], RouteResult]:
        """:meth:`route`, through torch.compile on CUDA in eager mode when
        ``PONDERKIT_COMPILE_ROUTER=1``: routing is dozens of small (N, E) operations whose
        launches, not their arithmetic, cost the time; compiled, they are a few fused kernels.
        Off by default: each router instance compiles on its first call (four ADR-0004 routers
        took ~90 s before the first step on an H100), which pays only in long runs. A router
        that fails to compile warns once and runs eagerly."""
        if (
            not x.is_cuda
            or torch.compiler.is_compiling()
            or os.environ.get("PONDERKIT_COMPILE_ROUTER", "0") != "1"
        ):
            return self.route
        compiled = _COMPILED.get(self)
        if compiled is None:
            compiled = _COMPILED[self] = _compile_once(self.route)
        return compiled

    @property
    def max_active(self) -> int:
        """The most experts this router can activate for one token."""
        return self.num_experts

    def route(self, x: Tensor) -> RouteResult:
        """(weights (N,E), mask (N,E) bool, logits (N,E), weighted aux losses, extra stats)."""
        raise NotImplementedError

    def reset_experts(self, experts: Tensor) -> list[tuple[nn.Parameter, int]]:
        """Re-initialise the routing parameters of ``experts`` (1-D long); returns the
        (parameter, dim) slices it touched so a caller can clear their optimizer state."""
        raise NotImplementedError

    def clear_counts(self) -> None:
        self.activation_counts.zero_()
        self.tokens_seen.zero_()

    def finish(
        self,
        weights: Tensor,
        mask: Tensor,
        logits: Tensor,
        aux: dict[str, Tensor],
        extra_stats: dict[str, Tensor] | None = None,
    ) -> Routing:
        """Count activations and return the Routing (the routed layer reports its aux losses
        and stats with ``ctx.add_routing``).
        ``extra_stats`` may hold the ``expert_counts`` (E,) and the other statistics of
        :func:`routing_stats` where a fused route computed them itself."""
        stats = dict(extra_stats or {})
        counts = stats.get("expert_counts")
        if counts is None:
            counts = mask.sum(0)
        if self.training:
            with torch.no_grad():
                self.activation_counts += counts
                self.tokens_seen += mask.shape[0]
        if not {"experts_per_token", "dead_experts"} <= stats.keys():
            stats = {**routing_stats(counts, mask.shape[0], self.enabled), **stats}
        param_aux = {k: v for k, v in aux.items() if k in self.param_aux_names}
        aux = {k: v for k, v in aux.items() if k not in self.param_aux_names}
        return Routing(weights, mask, logits, aux=aux, stats=stats, param_aux=param_aux)


def routing_stats(counts: Tensor, num_tokens: int, enabled: Tensor) -> dict[str, Tensor]:
    """From per-expert token ``counts`` (E,): ``expert_counts``, ``experts_per_token`` and
    ``dead_experts`` (enabled experts no token of this batch uses); no host sync."""
    return {
        "expert_counts": counts,
        "experts_per_token": counts.sum() / max(num_tokens, 1),
        "dead_experts": ((counts == 0) & enabled).sum(),
    }


def masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax of ``logits`` over the entries where ``mask`` is True, 0 elsewhere; a row
    with no True entry is all 0 (never NaN, also in the gradient)."""
    z = logits.masked_fill(~mask, float("-inf"))
    top = z.amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(z - top)
    return e / e.sum(-1, keepdim=True).clamp(min=torch.finfo(e.dtype).tiny)


def topk_fallback(active: Tensor, scores: Tensor, enabled: Tensor, k: int) -> Tensor:
    """Where a token activated nothing, activate its ``k`` best enabled experts by score."""
    none = ~active.any(-1, keepdim=True)
    k = min(k, scores.shape[-1])
    best_idx = scores.masked_fill(~enabled, float("-inf")).topk(k, dim=-1).indices
    best = torch.zeros_like(active).scatter_(-1, best_idx, True) & enabled
    return torch.where(none, best, active)


def orthogonal_columns(
    existing: Tensor, count: int, generator: torch.Generator | None = None
) -> Tensor:
    """``count`` random unit columns (D, count), orthogonal to the columns of ``existing``
    (D, M) and to each other as far as D allows (the init distribution of a cosine router)."""
    d = existing.shape[0]
    fresh = torch.randn(d, count, generator=generator, dtype=torch.float64)
    basis = existing.detach().double().cpu()
    if basis.shape[1] and basis.shape[1] + count <= d:
        q, _ = torch.linalg.qr(basis)
        fresh = fresh - q @ (q.T @ fresh)
    if count <= d:
        fresh, _ = torch.linalg.qr(fresh)
    fresh = fresh / fresh.norm(dim=0, keepdim=True).clamp(min=1e-12)
    return fresh.to(device=existing.device, dtype=existing.dtype)
