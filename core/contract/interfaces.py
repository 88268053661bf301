"""One small interface per kind of component. Plugins implement these; the core calls them.

Shapes: B batch, T sequence length (task tokens plus any puzzle-embedding prefix), D model
width, N routed tokens (B*T flattened), E experts.

Every module's ``forward`` takes a ``ForwardContext`` (``ponderkit.engine.context``) as its last
argument; it carries RoPE tables and collects auxiliary losses and statistics, so a router deep
inside a block can report its load-balance loss without any global state. The contract only
names it; its behaviour is the runtime's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn

from .hookspec import callback_problem

if TYPE_CHECKING:
    from ..engine.context import ForwardContext

Batch = dict[str, Tensor]
"""A batch: ``inputs`` (B,T) long, ``labels`` (B,T) long with -100 where ignored, and
optionally ``puzzle_ids`` (B,) long."""

Carry = dict[str, Tensor]
"""The recursion state between steps; every tensor has the batch as its first dimension."""

IGNORE_LABEL = -100


_EMPTY: Mapping[str, Tensor] = MappingProxyType({})


class Routing(NamedTuple):
    """What a router returns for N tokens over E experts.

    - ``weights`` (N,E) float: >= 0; 0 wherever ``mask`` is False; per token they sum to 1 when
      any expert is active, else to 0 (or the router's documented fallback fires).
    - ``mask`` (N,E) bool: which experts each token uses (variable count per token allowed).
    - ``logits`` (N,E): the scores before selection (for z-loss, logging).
    - ``aux``: named auxiliary losses that depend on the tokens, already weighted, to add to
      the training loss (averaged over a router's calls in one step).
    - ``param_aux``: named losses that depend only on the router's parameters (SDL), counted
      once per optimizer step however often the router runs.
    - ``stats``: ``expert_counts`` (E,), ``experts_per_token`` (scalar), ``dead_experts`` (scalar).

    A ``NamedTuple`` (immutable, built with keywords as before) rather than a frozen attrs
    class: torch.compile traces a NamedTuple's construction inside a compiled forward, and
    breaks the graph at (or, in newer torch, fails on) a frozen attrs ``__init__``.
    """

    weights: Tensor
    mask: Tensor
    logits: Tensor
    aux: Mapping[str, Tensor] = _EMPTY
    stats: Mapping[str, Tensor] = _EMPTY
    param_aux: Mapping[str, Tensor] = _EMPTY


# -- one Protocol per kind: every member the runtime calls -------------------------------------
# A builder's result is checked against its kind's Protocol (and ``nn.Module`` where marked in
# MODULE_KINDS) when the model is built, before any run directory exists. Members a kind may
# have but need not are the small capability Protocols further down.


@runtime_checkable
class Mixer(Protocol):
    """Token mixing: ``forward(h (B,T,D), ctx) -> (B,T,D)``. Must not change the shape.

    Non-causal unless the component says otherwise; position information comes from ``ctx``
    (RoPE tables) or from the embedding (learned positions). An ``nn.Module``."""

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor: ...


@runtime_checkable
class Ffn(Protocol):
    """Channel mixing applied to each position: ``forward(h (B,T,D), ctx) -> (B,T,D)``.

    An ``nn.Module``. A routed ffn reports its router's :class:`Routing` to ``ctx`` with
    :meth:`ForwardContext.add_routing` (see :class:`RoutedLayer`). The built-in ``ffn/none``
    stands for no layer: it is registered with ``absent=True`` and its builder returns None."""

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor: ...


@runtime_checkable
class Block(Protocol):
    """The re-entrant unit: ``forward(h (B,T,D), ctx) -> (B,T,D)``, built from one mixer and
    one ffn (either may be absent). It may be applied many times with the same weights. An
    ``nn.Module``."""

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor: ...


@runtime_checkable
class Router(Protocol):
    """Tokens to experts: ``forward(x (N,D), ctx) -> Routing`` (see :class:`Routing` for the
    invariants the conformance kit checks). An ``nn.Module``.

    - built as ``builder(config, ctx, num_experts=E)``: the routed layer passes its expert count;
    - ``num_experts``: E;
    - ``max_active``: the most experts one token can use (E for top-any, k for top-k); sizes
      static dispatch buffers (N * max_active pairs), so it must be a true bound;
    - the router does not report to ``ctx`` itself: the routed layer that calls it hands the
      returned :class:`Routing` to :meth:`ForwardContext.add_routing`, which adds ``aux`` to
      the training loss and ``stats`` to the logged metrics.
    A router that can be reset by ``callback/expert_reset`` also implements
    :class:`ResettableRouter`."""

    num_experts: int
    max_active: int

    def forward(self, x: Tensor, ctx: ForwardContext) -> Routing: ...


@runtime_checkable
class Recursion(Protocol):
    """How blocks are applied in depth, one *step* at a time. An ``nn.Module``.

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
    """When recursion stops, and the loss that teaches it. An ``nn.Module``.

    - ``max_steps``: the most steps a sample may take (N_sup for TRM).
    - ``forward(y (B,T,D), ctx) -> dict`` of halting signals for this step (e.g. ``q_halt``
      (B,)); ``{}`` for a policy without parameters. ``ctx.logits`` is this step's output
      (B,T,V), ``ctx.previous_logits`` the previous step's (detached; None at the first step
      and under one-step-a-context schedules): a policy may halt on the prediction itself.
    - ``should_halt(signals, steps (B,) long, training) -> (B,) bool``: whether each sample
      stops after this step; must be True wherever ``steps >= max_steps``.
    - ``loss(signals, correct (B,) bool, next_signals=None, steps=None) -> (loss, metrics)``:
      the weighted halting loss for this step given whether each sample's current prediction
      is exactly right (``deep_supervision`` calls it each step; ``full_unroll`` at every
      unrolled step, averaged).
    Optional: :class:`WeighsSteps` (ACT, PonderNet), :class:`NextStepTarget` (HRM's
    bootstrapped q_continue).
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
    - optional ``train_size``: the number of distinct training examples (a fixed training
      set); ``train.epochs`` counts epochs of it and needs it.
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
class TrainerServices(Protocol):
    """The services a schedule (and a callback) may call on the trainer.

    - ``model``: the :class:`~ponderkit.ReasoningModel` being trained; ``optimizer``; ``step``:
      optimizer steps done; ``config``: the experiment; ``run_dir``: the run directory (a
      ``Path``, or None for a trainer that writes no run).
    - ``optimize(loss) -> grad_norm``: backward, clip, optimizer step, zero grads. A schedule's
      ``train_step`` calls it exactly once.
    - ``autocast()``: the precision context for forward passes; ``to_device(batch)``.
    - ``parameters_reset(touched, index)``: announce re-initialised parameter slices (callbacks
      holding weight copies, such as EMA, follow).
    - ``eval_weights()``: a context manager with the callbacks' evaluation weights (EMA's)
      swapped in, for a task that evaluates on its own (``evaluate_puzzles``)."""

    model: Any
    optimizer: Any
    step: int
    config: Any
    run_dir: Any

    def optimize(self, loss: Tensor) -> Tensor: ...

    def autocast(self) -> AbstractContextManager: ...

    def to_device(self, batch: Batch) -> Batch: ...

    def parameters_reset(self, touched: list[tuple[Any, int]], index: Any) -> None: ...


@runtime_checkable
class Schedule(Protocol):
    """How batches become optimizer steps. ``train_step(model, batches, trainer)`` performs
    exactly one optimizer step through ``trainer.optimize(loss)`` (see :class:`TrainerServices`) and
    returns scalar metrics (``loss``, ``token_acc``, ``exact_acc`` ...), and ``fresh_samples``
    where the step drew other than one fresh batch (deep supervision: the slots it refilled;
    the trainer counts epochs by it). A schedule owns any
    state that spans optimizer steps (the deep-supervision carry) and saves it with
    ``state_dict``/``load_state_dict``. Under ``torchrun`` each rank's schedule sees its shard
    of every global batch; tensors in ``state_dict`` whose first dimension is that shard's
    size are per-sample state, which checkpoints hold concatenated over the ranks (the global
    batch) and hand back split at whatever world size resumes."""

    def train_step(
        self, model: Any, batches: Iterator[Batch], trainer: TrainerServices
    ) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Callback(Protocol):
    """Work between steps: an object whose methods marked ``@ponderkit.callback_hook``
    implement hooks of :class:`~ponderkit.contract.hookspec.CallbackSpec` (any, at least one):
    ``on_train_start(trainer)``, ``on_step_end(trainer, step, metrics)`` (may add metrics),
    ``on_log(trainer, record)`` (each record as it is written to ``metrics.jsonl``: a logging
    backend mirrors it), ``on_parameters_reset(trainer, touched, index)`` (parameter slices
    were re-initialised, e.g. by an expert reset: copies of the weights such as EMA's follow),
    ``owned_parameters(trainer)`` (parameters the callback updates itself, kept out of the
    optimizer), ``eval_weights(trainer)`` (a context manager swapping in the weights for
    evaluation and checkpoints, e.g. EMA) and ``swaps_weights()`` (whether it swaps any now).

    The built callback is registered with a pluggy ``PluginManager`` of project
    ``ponderkit_callback``: a hook name or argument name the spec does not have, or a method
    named like a hook but not marked, is refused when the callback is built. State kept across
    a resume: :class:`Stateful`."""


@runtime_checkable
class Optimizer(Protocol):
    """Parameter groups and the update rule: what an ``optimizer`` builder returns, in
    practice a ``torch.optim.Optimizer``.

    The builder is called ``builder(config, ctx, *, model, exclude)`` once the model is built:
    ``config`` extends :class:`~ponderkit.contract.experiment.OptimizerConfig`, ``model`` is
    the ``nn.Module`` to train and ``exclude`` the ``id``s of parameters a callback updates
    itself (``owned_parameters``), which the optimizer must leave out. The plugin declares the
    parameter groups (which decay, which take which rule); the trainer sets every group's
    ``lr`` to ``config.lr`` times the schedule's factor before each step, clips the gradients
    of the groups' parameters (``config.grad_clip``), then calls ``step`` and ``zero_grad``;
    ``state_dict``/``load_state_dict`` go into checkpoints."""

    param_groups: list[dict[str, Any]]

    def step(self, closure: Any = None) -> Any: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


# -- optional capabilities ---------------------------------------------------------------------
# The core reads no optional member by name: it asks ``isinstance(obj, Capability)``.


class _StaticCheck(type(Protocol)):  # type: ignore[misc]
    """``isinstance`` against a capability looks its members up without evaluating them (as
    Python 3.12 does): a task's ``train_size`` property may load the whole data set, which
    ``validate`` must not. Members an ``nn.Module`` keeps dynamically (buffers, submodules)
    are found through its ``__getattr__``, which Python 3.12's own check never calls (there a
    plain runtime Protocol misses every router's ``activation_counts``); so the same answer
    on every Python."""

    def __instancecheck__(cls, obj: Any) -> bool:
        if not cls.__dict__.get("_is_protocol"):
            return super().__instancecheck__(obj)
        return all(_has_member(obj, name) for name in protocol_members(cls))


def _has_member(obj: Any, name: str) -> bool:
    import inspect

    try:
        inspect.getattr_static(obj, name)
    except AttributeError:
        return hasattr(obj, name)  # the checker: a module's buffers live in __getattr__
    return True


@runtime_checkable
class Stateful(Protocol, metaclass=_StaticCheck):
    """A callback whose state a checkpoint keeps: ``state_dict() -> dict`` and
    ``load_state_dict(state)`` (EMA's average, a sparse optimizer's moments)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class FixedTrainingSet(Protocol, metaclass=_StaticCheck):
    """A task with a fixed training set: ``train_size`` distinct training examples (may be a
    property; it is not evaluated to check the capability). ``train.epochs`` needs it."""

    train_size: int


@runtime_checkable
class EvaluatesPuzzles(Protocol, metaclass=_StaticCheck):
    """A task that scores whole puzzles (ARC: votes over augmented views, pass@k):
    ``evaluate_puzzles(trainer, puzzle_ids=None, vote=None, splits=None) -> dict`` of each
    split's metrics and optionally ``submission`` (a JSON object); ``ponderkit eval`` calls it
    with the options the task's plugin added (``ponderkit_add_options``)."""

    def evaluate_puzzles(self, trainer: Any, **options: Any) -> dict[str, Any]: ...


@runtime_checkable
class Staged(Protocol, metaclass=_StaticCheck):
    """A schedule made of stages (``staged``): ``stages`` the sub-schedules in order and
    ``shares(total_steps) -> [fraction per stage]``."""

    stages: list[Any]

    def shares(self, total_steps: int | None) -> list[float]: ...


@runtime_checkable
class CountsActivations(Protocol, metaclass=_StaticCheck):
    """A router that accumulates how many tokens each expert received: ``activation_counts``
    (E,) and ``tokens_seen`` () buffers, in training mode."""

    activation_counts: Tensor
    tokens_seen: Tensor


@runtime_checkable
class CountsSolutions(Protocol, metaclass=_StaticCheck):
    """A :class:`GridPuzzle` with a solver: ``count_solutions(inputs, limit) -> int``, the
    puzzle's solutions counted up to ``limit`` (``predict`` notes a puzzle with none or with
    several, where ``valid`` says less than "the answer")."""

    def count_solutions(self, inputs: Any, limit: int = 2) -> int: ...


@runtime_checkable
class ReportsActiveParameters(Protocol, metaclass=_StaticCheck):
    """A module that reports the parameters one token uses on average, itself:
    ``active_parameters() -> float`` (the run summary's ``active_parameters``)."""

    def active_parameters(self) -> float: ...


@runtime_checkable
class WeighsSteps(Protocol, metaclass=_StaticCheck):
    """A halting policy that weighs all steps' outputs (ACT, PonderNet) instead of keeping the
    output of the step where a sample halted.

    - ``combine(logits_steps, signals_steps) -> (logits (B,T,V), steps (B,))``: the output
      and the steps each sample counts as used; must not depend on how many steps ran past
      the halting point (inference stops early only when ``halted_after`` says all halted);
    - ``halted_after(signals_steps) -> (B,) bool``;
    - ``unrolled_loss(logits_steps, signals_steps, labels, loss_kind) -> (task_loss,
      halting_loss, metrics, logits)``: the training loss over an unrolled schedule."""

    def combine(
        self, logits_steps: list[Tensor], signals_steps: list[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor]: ...

    def halted_after(self, signals_steps: list[dict[str, Tensor]]) -> Tensor: ...

    def unrolled_loss(
        self,
        logits_steps: list[Tensor],
        signals_steps: list[dict[str, Tensor]],
        labels: Tensor,
        loss_kind: str,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]: ...


@runtime_checkable
class NextStepTarget(Protocol, metaclass=_StaticCheck):
    """A halting policy whose loss needs the next step's signals (HRM's bootstrapped
    q_continue): when ``needs_next_step`` is True, ``loss`` gets ``next_signals`` computed
    under no_grad."""

    needs_next_step: bool


@runtime_checkable
class TransposedMixer(Protocol, metaclass=_StaticCheck):
    """A mixer over positions (TRM's ``mlp_t``): a post-norm block applies its residual and
    norm in the transposed (B, D, T) frame via ``forward_transposed(ht (B,D,T)) -> (B,D,T)``."""

    def forward_transposed(self, ht: Tensor) -> Tensor: ...


@runtime_checkable
class ResettableRouter(Protocol, metaclass=_StaticCheck):
    """A router ``callback/expert_reset`` can revive.

    - ``enabled`` (E,) bool buffer: experts that may be selected at all;
    - ``activation_counts`` (E,) int64 and ``tokens_seen`` () int64: accumulated in training
      mode since the last ``clear_counts()``;
    - ``reset_experts(experts (K,) long) -> [(parameter, dim), ...]``: fresh routing parameters
      for those experts; returns the slices it touched (their optimizer state is cleared)."""

    enabled: Tensor
    activation_counts: Tensor
    tokens_seen: Tensor

    def clear_counts(self) -> None: ...

    def reset_experts(self, experts: Tensor) -> list[tuple[Any, int]]: ...


@runtime_checkable
class RoutedLayer(Protocol, metaclass=_StaticCheck):
    """A layer that owns a router and a set of experts (``dynmoe``, ``dynsmha``).

    - ``router``: its :class:`Router`;
    - ``reset_experts(experts, weights: bool) -> [(parameter, dim), ...]``: fresh router slots
      for ``experts`` and, when ``weights``, fresh expert weights."""

    router: Any

    def reset_experts(self, experts: Tensor, weights: bool) -> list[tuple[Any, int]]: ...


@runtime_checkable
class GridView(Protocol, metaclass=_StaticCheck):
    """A task whose samples can be drawn as grids: what ``ponderkit trace`` needs. A sample's
    ``seq_len`` tokens are the grid, row-major.

    - ``grid_shape``: (rows, cols), rows * cols == seq_len.
    - ``grid_boxes``: (rows, cols) of the blocks outlined when drawn (Sudoku's boxes; the whole
      grid for none).
    - ``grid_cells(tokens (seq_len,)) -> list[str]``: what to show in each cell ('' for a
      blank)."""

    grid_shape: tuple[int, int]
    grid_boxes: tuple[int, int]

    def grid_cells(self, tokens: Any) -> list[str]: ...


@runtime_checkable
class GridPuzzle(GridView, Protocol):
    """A :class:`GridView` a person can also type and check (Sudoku, mazes): what ``ponderkit
    predict`` and ``trace --data`` need.

    - ``parse_grid(text) -> (seq_len,) int64 array`` of input tokens; malformed text raises
      :class:`~ponderkit.TextError` with the 1-based line and column. ``grid_cells`` joined row
      by row is the text ``parse_grid`` reads.
    - ``check_answer(inputs, prediction) -> bool``: whether ``prediction`` solves the puzzle
      ``inputs``, judged by rules (not by comparing with a stored label)."""

    def parse_grid(self, text: str) -> Any: ...

    def check_answer(self, inputs: Any, prediction: Any) -> bool: ...


@runtime_checkable
class ColouredGrid(Protocol, metaclass=_StaticCheck):
    """A :class:`GridView` some of whose cells are colours (ARC's ten, a maze's walls):
    ``grid_colours`` maps a cell's text (from ``grid_cells``) to a matplotlib colour; such a
    cell is drawn as a square of that colour instead of as text."""

    grid_colours: Mapping[str, str]


@runtime_checkable
class PaddedGrid(Protocol, metaclass=_StaticCheck):
    """A :class:`GridView` whose grid is smaller than ``grid_shape`` and sits at its top left,
    the rest padding (ARC's grids on a 30x30 canvas): ``grid_extent(tokens (seq_len,)) ->
    (rows, cols)`` is the size of the grid ``tokens`` hold (0 rows or columns when they hold
    none); only that part is drawn."""

    def grid_extent(self, tokens: Any) -> tuple[int, int]: ...


@runtime_checkable
class HoldsOutTraining(Protocol):
    """A :class:`Task` that can set part of its training data aside as a validation split:
    what an ablation's ``tune:`` needs (each arm picks its learning rate there, never on the
    evaluation set).

    - ``holdout(fraction) -> Task``: the same problem (vocabulary, shapes, ``score``) whose
      ``train_batches`` never yield the held-out examples (``fraction`` of the training set,
      at least one) and whose ``eval_batches`` yield exactly them, in order, unaugmented; the
      evaluation set is not reachable from it."""

    def holdout(self, fraction: float) -> Task: ...


#: The Protocol a builder's result must satisfy, per kind.
PROTOCOLS: dict[str, type] = {
    "block": Block,
    "mixer": Mixer,
    "ffn": Ffn,
    "router": Router,
    "recursion": Recursion,
    "halting": Halting,
    "schedule": Schedule,
    "task": Task,
    "callback": Callback,
    "optimizer": Optimizer,
}

#: Kinds whose components are ``torch.nn.Module``s (their parameters join the model).
MODULE_KINDS = frozenset({"block", "mixer", "ffn", "router", "recursion", "halting"})

#: Optional capabilities per kind, for ``ponderkit show KIND``.
CAPABILITIES: dict[str, tuple[type, ...]] = {
    "mixer": (TransposedMixer, RoutedLayer),
    "ffn": (RoutedLayer,),
    "router": (ResettableRouter, CountsActivations),
    "halting": (WeighsSteps, NextStepTarget),
    "task": (
        FixedTrainingSet,
        EvaluatesPuzzles,
        GridView,
        GridPuzzle,
        CountsSolutions,
        ColouredGrid,
        PaddedGrid,
        HoldsOutTraining,
    ),
    "schedule": (Staged,),
    "callback": (Stateful,),
}


def contract_problem(kind: str, obj: Any) -> str | None:
    """Why ``obj`` does not satisfy ``kind``'s contract, or None when it does."""
    if obj is None:
        return "None"
    if kind in MODULE_KINDS and not isinstance(obj, nn.Module):
        return f"a {type(obj).__name__}, not a torch.nn.Module"
    if kind == "callback":
        return callback_problem(obj)
    protocol = PROTOCOLS[kind]
    missing = [m for m in protocol_members(protocol) if not hasattr(obj, m)]
    if missing:
        return f"a {type(obj).__name__} without {', '.join(missing)}"
    return None


def protocol_members(protocol: type) -> list[str]:
    """The attributes and methods a Protocol requires (those of the Protocols it extends
    first), in declaration order."""
    bases = [c for c in reversed(protocol.__mro__) if c.__dict__.get("_is_protocol")]
    names: list[str] = []
    for base in bases:
        if base is Protocol:
            continue
        names += [n for n in base.__dict__.get("__annotations__", {}) if n not in names]
    for base in bases:
        if base is Protocol:
            continue
        names += [
            n
            for n, v in vars(base).items()
            if callable(v) and not n.startswith("_") and n not in names
        ]
    return names
