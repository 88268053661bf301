"""One small interface per kind of component. Plugins implement these; the core calls them.

Shapes: B batch, T sequence length (task tokens plus any puzzle-embedding prefix), D model
width, N routed tokens (B*T flattened), E experts.

Every module's ``forward`` takes a :class:`ForwardContext` as its last argument; it carries
RoPE tables and collects auxiliary losses and statistics, so a router deep inside a block can
report its load-balance loss without any global state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import Tensor

from .config import Spec

Batch = dict[str, Tensor]
"""A batch: ``inputs`` (B,T) long, ``labels`` (B,T) long with -100 where ignored, and
optionally ``puzzle_ids`` (B,) long."""

Carry = dict[str, Tensor]
"""The recursion state between steps; every tensor has the batch as its first dimension."""

IGNORE_LABEL = -100


@attrs.define
class ForwardContext:
    """Per-forward information and collectors shared by every module of one model call."""

    positions: str = "rope"
    rope_theta: float = 10000.0
    losses: dict[str, Tensor] = attrs.field(factory=dict)
    stats: dict[str, list[Tensor]] = attrs.field(factory=dict)
    _rope_cache: dict[tuple, tuple[Tensor, Tensor]] = attrs.field(factory=dict)

    def add_loss(self, name: str, value: Tensor) -> None:
        """Accumulate an auxiliary loss (already weighted); summed into the total loss."""
        self.losses[name] = self.losses[name] + value if name in self.losses else value

    def add_stat(self, name: str, value: Tensor) -> None:
        """Record a statistic (detached); values of one name are averaged when logged."""
        self.stats.setdefault(name, []).append(value.detach())

    def stat_means(self) -> dict[str, Tensor]:
        """Each recorded statistic averaged over its records (for a schedule's metrics)."""
        return {
            k: torch.stack([v.float().mean() for v in vs]).mean()
            for k, vs in self.stats.items()
            if vs
        }

    def rope(self, seq_len: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin tables of shape (T, head_dim) for rotary embeddings (half-split layout)."""
        key = (seq_len, head_dim, device)
        if key not in self._rope_cache:
            inv = 1.0 / (
                self.rope_theta
                ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
            )
            angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)
            emb = torch.cat([angles, angles], dim=-1)
            self._rope_cache[key] = (emb.cos(), emb.sin())
        return self._rope_cache[key]


@attrs.frozen
class Routing:
    """What a router returns for N tokens over E experts.

    - ``weights`` (N,E) float: >= 0; 0 wherever ``mask`` is False; per token they sum to 1 when
      any expert is active, else to 0 (or the router's documented fallback fires).
    - ``mask`` (N,E) bool: which experts each token uses (variable count per token allowed).
    - ``logits`` (N,E): the scores before selection (for z-loss, logging).
    - ``aux``: named auxiliary losses, already weighted, to add to the training loss.
    - ``stats``: ``expert_counts`` (E,), ``experts_per_token`` (scalar), ``dead_experts`` (scalar).
    """

    weights: Tensor
    mask: Tensor
    logits: Tensor
    aux: Mapping[str, Tensor] = attrs.field(factory=dict)
    stats: Mapping[str, Tensor] = attrs.field(factory=dict)


@runtime_checkable
class Mixer(Protocol):
    """Token mixing: ``forward(h (B,T,D), ctx) -> (B,T,D)``. Must not change the shape.

    Non-causal unless the component says otherwise; position information comes from ``ctx``
    (RoPE) or from the embedding (learned positions)."""

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor: ...


@runtime_checkable
class Ffn(Protocol):
    """Channel mixing applied to each position: ``forward(h (B,T,D), ctx) -> (B,T,D)``.

    Routed FFNs report their router's aux losses and stats through ``ctx``."""

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor: ...


@runtime_checkable
class Block(Protocol):
    """The re-entrant unit: ``forward(h (B,T,D), ctx) -> (B,T,D)``, built from one mixer and
    one ffn (either may be ``none``). It may be applied many times with the same weights."""

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor: ...


@runtime_checkable
class Router(Protocol):
    """``forward(x (N,D), ctx) -> Routing``; see :class:`Routing` for the invariants."""

    num_experts: int

    def forward(self, x: Tensor, ctx: ForwardContext) -> Routing: ...


@runtime_checkable
class Recursion(Protocol):
    """How blocks are applied in depth, one *step* at a time.

    - ``initial_carry(x) -> Carry``: the state before the first step for inputs ``x``
      (B,T,D); an empty dict when the recursion keeps no state (``stacked``).
    - ``forward(carry, x, ctx) -> (carry, y)``: one step; ``y`` (B,T,D) is the state the
      output head reads. The returned carry is detached when steps are separate optimizer
      steps (deep supervision) and kept attached when a schedule unrolls several steps.
    Components that keep state between steps declare ``provides={"carry"}``.
    """

    def initial_carry(self, x: Tensor) -> Carry: ...

    def forward(self, carry: Carry, x: Tensor, ctx: ForwardContext) -> tuple[Carry, Tensor]: ...


@runtime_checkable
class Halting(Protocol):
    """When recursion stops, and the loss that teaches it.

    - ``max_steps``: the most steps a sample may take (N_sup for TRM).
    - ``forward(y (B,T,D), ctx) -> dict`` of halting signals for this step (e.g. ``q_halt``
      (B,)); ``{}`` for a policy without parameters.
    - ``should_halt(signals, steps (B,) long, training) -> (B,) bool``: whether each sample
      stops after this step; must be True wherever ``steps >= max_steps``.
    - ``loss(signals, correct (B,) bool, next_signals=None, steps=None) -> (loss, metrics)``:
      the weighted halting loss for this step given whether each sample's current prediction
      is exactly right. A policy with ``needs_next_step = True`` (HRM's bootstrapped
      q_continue) also gets the next step's signals, computed under no_grad.
    """

    max_steps: int

    def forward(self, y: Tensor, ctx: ForwardContext) -> dict[str, Tensor]: ...

    def should_halt(self, signals: dict[str, Tensor], steps: Tensor, training: bool) -> Tensor: ...

    def loss(
        self, signals: dict[str, Tensor], correct: Tensor, **kwargs: Any
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


@runtime_checkable
class Task(Protocol):
    """Data, vocabulary, augmentation and metrics for one problem family.

    - ``vocab_size``, ``seq_len``: token ids are in ``[0, vocab_size)``; sequences (B, seq_len).
    - ``num_puzzle_ids``: size of the per-puzzle embedding table (0 when unused).
    - ``train_batches(batch_size, seed)``: an endless iterator of augmented training batches.
    - ``eval_batches(batch_size)``: the fixed held-out set, in order, without augmentation.
    - ``score(predictions (B,T) long, batch) -> dict`` of extra per-sample metrics ((B,)
      float tensors, e.g. path validity); token and exact accuracy are computed by the core.
    - optional ``evaluate_puzzles(trainer, puzzle_ids=None) -> dict``: scores whole puzzles
      (ARC: votes over augmented views, pass@k); ``ponderkit eval`` prints each split's
      metrics and writes ``submission`` (a JSON object) with ``--arc-submission``.
    """

    vocab_size: int
    seq_len: int
    num_puzzle_ids: int

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]: ...

    def eval_batches(self, batch_size: int) -> Iterable[Batch]: ...

    def score(self, predictions: Tensor, batch: Batch) -> dict[str, Tensor]: ...


@runtime_checkable
class Schedule(Protocol):
    """How batches become optimizer steps. ``train_step`` performs exactly one optimizer step
    through ``trainer.optimize(loss)`` and returns scalar metrics (``loss``, ``token_acc``,
    ``exact_acc``, ``steps`` ...). A schedule owns any state that spans optimizer steps (the
    deep-supervision carry) and saves it with ``state_dict``/``load_state_dict``."""

    def train_step(
        self, model: Any, batches: Iterator[Batch], trainer: Any
    ) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Callback(Protocol):
    """Work between steps. Every hook is optional:
    ``on_train_start(trainer)``, ``on_step_end(trainer, step, metrics)`` (may add metrics),
    ``eval_weights(trainer)`` (a context manager swapping in weights for evaluation and
    checkpoints, e.g. EMA), ``on_parameters_reset(trainer, touched, index)`` (slices of
    parameters were re-initialised: ``touched`` lists (parameter, dim) pairs, ``index`` the
    positions along ``dim``; announced with :meth:`Trainer.parameters_reset`, e.g. by an
    expert reset, so that copies of the weights such as EMA's follow),
    ``owned_parameters(trainer)`` (called once the model is built, before the optimizer:
    parameters this callback updates itself, e.g. a sparse puzzle-embedding table; AdamW
    leaves them out and gradient clipping ignores them),
    ``state_dict()``/``load_state_dict(state)``."""


@attrs.frozen
class BuildContext:
    """Handed to every builder: model width, task shape, and a way to build nested components.

    ``shared`` is a dict that lives for one model build, for components that share parameters
    across blocks or iterations (a global expert library)."""

    registry: Any
    d_model: int = 0
    vocab_size: int = 0
    seq_len: int = 0
    seed: int = 0
    shared: dict[str, Any] = attrs.field(factory=dict)

    def build(self, spec: Spec | None, **kwargs: Any) -> Any:
        """Build the component ``spec`` names, passing this context along."""
        if spec is None:
            return None
        comp = self.registry.get(spec.kind, spec.name)
        return comp.builder(spec.config, self, **kwargs)
