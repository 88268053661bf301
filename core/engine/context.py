"""The runtime context objects handed to plugins: :class:`ForwardContext` (one per model call:
RoPE tables, auxiliary losses and statistics) and :class:`BuildContext` (one per model build:
nested components, shared parameters, the check of each built component against its kind's
contract)."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from ..contract.config import Spec
from ..contract.errors import ConfigError, Issue
from ..contract.interfaces import PROTOCOLS, Routing, contract_problem


@attrs.define
class ForwardContext:
    """Per-forward information and collectors shared by every module of one model call.

    Auxiliary losses are counted once per optimizer step (one context per step):

    - ``add_loss(name, value)``: summed as given;
    - ``add_routing(routing, source)``: per router (``source``, by identity), each token-
      dependent term of ``routing.aux`` is averaged over the router's calls weighted by the
      tokens still running in each (see ``running``), so a router applied at every step of an
      unrolled recursion counts its terms once, over the steps each sample actually ran; the
      parameter-only terms of ``routing.param_aux`` (they are the same at every call) count
      once. Terms of one name are then summed over routers.

    ``running`` (B,) bool, when set by a schedule, marks the samples whose current step counts
    (not yet halted); routers weigh their token-dependent terms by it
    (:meth:`tokens_running`).

    What a halting policy may read in ``forward(y, ctx)``: ``logits`` (B, T, V), this step's
    output (with gradient: detach it unless the policy means to train the trunk through it),
    set only while the policy runs; ``previous_logits`` (B, T, V), the previous step's output,
    detached, or None at the first step and wherever a schedule runs one step per context
    (``deep_supervision``)."""

    positions: str = "rope"
    rope_theta: float = 10000.0
    running: Tensor | None = None
    logits: Tensor | None = None
    previous_logits: Tensor | None = None
    _plain: dict[str, Tensor] = attrs.field(factory=dict)
    _routed: dict[tuple[int, str], list] = attrs.field(factory=dict)
    _once: dict[tuple[int, str], Tensor] = attrs.field(factory=dict)
    stats: dict[str, list[Tensor]] = attrs.field(factory=dict)
    #: incremental decoding state (``ponderkit.engine.generate.KVCache``) or None; when set, the
    #: tokens of this call sit at positions ``cache.offset ..`` after the cached ones, and a
    #: causal mixer appends its keys/values to ``cache.slot()`` and attends over all of them
    cache: Any = None
    _rope_cache: dict[tuple, tuple[Tensor, Tensor]] = attrs.field(factory=dict)

    def add_loss(self, name: str, value: Tensor) -> None:
        """Accumulate an auxiliary loss (already weighted); summed into the total loss."""
        self._plain[name] = self._plain[name] + value if name in self._plain else value

    def add_stat(self, name: str, value: Tensor) -> None:
        """Record a statistic (detached); values of one name are averaged when logged."""
        self.stats.setdefault(name, []).append(value.detach())

    def tokens_running(self, n: int) -> Tensor | None:
        """``running`` expanded to ``n`` tokens flattened batch-first (B*T,), or None when
        every token runs."""
        if self.running is None:
            return None
        b = self.running.shape[0]
        if n % max(b, 1):
            raise ValueError(f"{n} tokens cannot be split over a batch of {b}")
        return self.running.repeat_interleave(n // max(b, 1))

    def add_routing(
        self, routing: Routing, source: object = None, prefix: str = "router", tokens: int = 0
    ) -> None:
        """Report a router's result (``source``: the router): its losses as described in the
        class docstring, its ``stats`` to the logged metrics, as ``{prefix}/{name}``. Called by
        the routed layer (``dynmoe``, ``dynsmha``) once per router call; routers never call
        it. ``tokens``: how many tokens the call routed (default: the Routing's rows)."""
        key = id(source) if source is not None else id(routing)
        n = tokens or routing.weights.shape[0]
        running = self.tokens_running(n)
        weight = float(running.sum()) if running is not None else float(n)
        for name, value in routing.aux.items():
            self._routed.setdefault((key, f"{prefix}/{name}"), []).append((weight, value))
        for name, value in routing.param_aux.items():
            self._once.setdefault((key, f"{prefix}/{name}"), value)
        for name, value in routing.stats.items():
            self.add_stat(f"{prefix}/{name}", value)

    @property
    def losses(self) -> dict[str, Tensor]:
        """Every auxiliary loss of this step by name (already weighted)."""
        out = dict(self._plain)
        for (_, name), calls in self._routed.items():
            total = sum(w for w, _ in calls)
            if total > 0:
                value = sum(w * v for w, v in calls) / total
                out[name] = out[name] + value if name in out else value
        for (_, name), value in self._once.items():
            out[name] = out[name] + value if name in out else value
        return out

    def metrics(self) -> dict[str, Tensor]:
        """What a schedule logs from this context: each auxiliary loss (detached) and each
        statistic averaged over its records."""
        return {**{k: v.detach() for k, v in self.losses.items()}, **self.stat_means()}

    def stat_means(self) -> dict[str, Tensor]:
        """Each recorded statistic averaged over its records (for a schedule's metrics)."""
        return {
            k: torch.stack([v.float().mean() for v in vs]).mean()
            for k, vs in self.stats.items()
            if vs
        }

    def rope(self, seq_len: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin tables of shape (T, head_dim) for rotary embeddings (half-split layout).

        One table per (head_dim, device), grown (at least doubled) when a longer one is asked
        for, so that decoding one token at a time rebuilds it O(log T) times, not per token;
        a row depends only on its position, so any prefix of a longer table is the table."""
        key = (head_dim, device)
        table = self._rope_cache.get(key)
        if table is None or table[0].shape[0] < seq_len:
            length = seq_len if table is None else max(seq_len, 2 * table[0].shape[0])
            inv = 1.0 / (
                self.rope_theta
                ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
            )
            angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv)
            emb = torch.cat([angles, angles], dim=-1)
            table = self._rope_cache[key] = (emb.cos(), emb.sin())
        cos, sin = table
        if cos.shape[0] == seq_len:
            return cos, sin
        return cos[:seq_len], sin[:seq_len]


@attrs.frozen
class BuildContext:
    """Handed to every builder: model width, task shape, and a way to build nested components.

    ``shared`` is a dict that lives for one model build, for components that share parameters
    across blocks or iterations (a global expert library). ``paths`` maps each config
    :class:`Spec` (by identity) to its dotted path in the experiment, so a builder's failure is
    reported where the component is configured. ``blocks`` collects every block built through
    the context (``train.compile: block`` compiles each)."""

    registry: Any
    d_model: int = 0
    vocab_size: int = 0
    seq_len: int = 0
    seed: int = 0
    shared: dict[str, Any] = attrs.field(factory=dict)
    paths: dict[int, tuple] = attrs.field(factory=dict, eq=False, repr=False)
    blocks: list[Any] = attrs.field(factory=list, eq=False, repr=False)
    #: every component built through the context: (object, kind, key, plugin, config path)
    built: list[tuple] = attrs.field(factory=list, eq=False, repr=False)

    def build(self, spec: Spec | None, **kwargs: Any) -> Any:
        """Build the component ``spec`` names, passing this context along, and check the
        result against its kind's contract (:data:`PROTOCOLS`). A builder that raises or
        returns something else is reported as a :class:`~ponderkit.ConfigError` naming the
        component, its plugin and the config path."""
        if spec is None:
            return None
        comp = self.registry.get(spec.kind, spec.name)
        where = f"{comp.key} (plugin {comp.origin.plugin})"
        try:
            built = comp.builder(spec.config, self, **kwargs)
        except ConfigError:
            raise  # a nested component's failure, already located
        except Exception as exc:
            message = f"{where}: building failed: {type(exc).__name__}: {exc}"
            raise self._error(spec, message) from None
        if comp.absent:
            if built is not None:
                raise self._error(spec, f"{where}: an absent component's builder must return None")
            return None
        problem = contract_problem(spec.kind, built)
        if problem is not None:
            raise self._error(
                spec,
                f"{where}: the builder returned {problem}; a {spec.kind} must satisfy "
                f"ponderkit.{PROTOCOLS[spec.kind].__name__} (see `ponderkit show {spec.kind}`)",
            )
        if spec.kind == "block":
            self.blocks.append(built)
        self.built.append(
            (built, spec.kind, comp.key, comp.origin.plugin, self.paths.get(id(spec), ()))
        )
        return built

    def _error(self, spec: Spec, message: str) -> ConfigError:
        return ConfigError([Issue(self.paths.get(id(spec), ()), message)])
