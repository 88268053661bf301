"""The conformance kit: checks that a component keeps its kind's contract.

A third-party plugin calls these from its own tests; the built-ins' property tests use them
too. Each ``check_*`` takes a *factory* that builds a fresh component for a given shape, draws
shapes, dtypes and inputs with Hypothesis (a dev dependency: ``pip install hypothesis``) and
raises ``AssertionError`` naming the broken rule::

    from ponderkit.devkit.conformance import check_router

    def test_my_router_keeps_the_contract():
        check_router(lambda d_model, num_experts: MyRouter(d_model, num_experts, MyConfig()))

``routing_invariants(router, x)`` and the other ``*_invariants`` functions check one input
without Hypothesis, for a test that draws its own cases.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..contract.interfaces import (
    PROTOCOLS,
    ColouredGrid,
    GridView,
    PaddedGrid,
    ResettableRouter,
    Routing,
    WeighsSteps,
    contract_problem,
)
from ..engine.context import ForwardContext

__all__ = [
    "check_router",
    "check_block",
    "check_mixer",
    "check_ffn",
    "check_recursion",
    "check_halting",
    "check_task",
    "check_optimizer",
    "routing_invariants",
    "token_layer_invariants",
]

RouterFactory = Callable[[int, int], nn.Module]
LayerFactory = Callable[[int], nn.Module]


def _hypothesis() -> Any:
    try:
        import hypothesis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ponderkit.devkit.conformance needs hypothesis: pip install hypothesis"
        ) from exc
    return hypothesis


def _settings(max_examples: int) -> Any:
    h = _hypothesis()
    return h.settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[h.HealthCheck.too_slow],
        database=None,
    )


def _contract(kind: str, obj: Any) -> None:
    problem = contract_problem(kind, obj)
    assert problem is None, (
        f"the factory returned {problem}; a {kind} must satisfy "
        f"ponderkit.{PROTOCOLS[kind].__name__}"
    )


# -- routers ------------------------------------------------------------------------------------
def routing_invariants(router: nn.Module, x: Tensor, atol: float = 1e-5) -> Routing:
    """Assert DESIGN.md's routing invariants for ``router`` on tokens ``x`` (N, D); returns
    the Routing. Checks shapes and dtypes, weights >= 0 and 0 off the mask, per-token sums (1
    when any expert is active, else 0), at most ``max_active`` experts a token, removed
    experts never selected (for a :class:`~ponderkit.ResettableRouter`), aux losses finite
    scalars, determinism and equivariance to permutations of the tokens."""
    n, e = x.shape[0], router.num_experts
    r = router(x, ForwardContext())
    assert isinstance(r, Routing), f"forward returned {type(r).__name__}, not ponderkit.Routing"
    w, mask = r.weights.detach(), r.mask
    assert w.shape == (n, e), f"weights have shape {tuple(w.shape)}, expected {(n, e)}"
    assert mask.shape == (n, e) and r.logits.shape == (n, e), "mask/logits must be (N, E)"
    assert mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}"
    assert torch.isfinite(w).all(), "weights must be finite"
    assert (w >= 0).all(), "weights must be >= 0"
    assert (w[~mask] == 0).all(), "weights must be 0 where the mask is off"
    sums = w.float().sum(-1)
    active = mask.any(-1)
    assert torch.allclose(sums[active], torch.ones_like(sums[active]), atol=atol), (
        "a token's weights must sum to 1 when any expert is active"
    )
    assert (sums[~active] == 0).all(), "a token without experts must have weights 0"
    assert (mask.sum(-1) <= router.max_active).all(), "a token has more experts than max_active"
    if isinstance(router, ResettableRouter):
        assert not (mask & ~router.enabled).any(), "a removed (disabled) expert was selected"
    for name, value in r.aux.items():
        assert isinstance(value, Tensor) and value.ndim == 0, f"aux {name!r} must be a scalar"
        assert torch.isfinite(value), f"aux {name!r} is not finite"
    again = router(x, ForwardContext())
    assert torch.equal(again.mask, mask), "routing is not deterministic"
    assert torch.allclose(again.weights.detach(), w), "routing is not deterministic"
    if n > 1:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        permuted = router(x[perm], ForwardContext())
        assert torch.equal(permuted.mask, mask[perm]), "routing is not permutation equivariant"
        assert torch.allclose(permuted.weights.detach(), w[perm], atol=atol), (
            "routing weights are not permutation equivariant"
        )
    return r


def _router_learns(router: nn.Module, x: Tensor, seed: int) -> None:
    params = [p for p in router.parameters() if p.requires_grad]
    if not params or x.shape[0] < 2 or min(router.num_experts, router.max_active) < 2:
        return  # one choice per token: weights of 1 carry no gradient (top-1 gates)
    signal = torch.randn(router.num_experts, generator=torch.Generator().manual_seed(seed))
    r = router(x, ForwardContext())
    if not r.aux and not (r.mask.sum(-1) >= 2).any():
        return  # every token has one expert or none: weights of 1 or 0 carry no gradient
    loss = (r.weights * signal.to(r.weights)).sum() + sum(r.aux.values(), torch.zeros(()))
    if not loss.requires_grad:
        raise AssertionError("neither the weights nor the aux losses depend on the parameters")
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), (
        "no gradient reaches the router's parameters"
    )


def check_router(factory: RouterFactory, max_examples: int = 40) -> None:
    """Check the router ``factory(d_model, num_experts)`` builds: the Router Protocol, the
    routing invariants over random token counts (0 included), widths, expert counts, float32
    and float64 tokens and scales, removed experts when it is resettable, and that a gradient
    reaches its parameters (from the weights or the aux losses, where a token can use two or
    more experts)."""
    h = _hypothesis()
    st = h.strategies

    @_settings(max_examples)
    @h.given(
        n=st.integers(0, 24),
        d=st.integers(2, 16),
        e=st.integers(1, 8),
        dtype=st.sampled_from([torch.float32, torch.float64]),
        scale=st.sampled_from([1e-3, 1.0, 30.0]),
        remove=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(n, d, e, dtype, scale, remove, seed):
        torch.manual_seed(seed)
        router = factory(d, e)
        _contract("router", router)
        assert router.num_experts == e, f"num_experts is {router.num_experts}, built with {e}"
        router = router.to(dtype)
        gen = torch.Generator().manual_seed(seed)
        if remove and isinstance(router, ResettableRouter):
            with torch.no_grad():
                router.enabled.copy_(torch.rand(e, generator=gen) < 0.5)
        x = (torch.randn(n, d, generator=gen, dtype=torch.float64) * scale).to(dtype)
        routing_invariants(router, x, atol=1e-5 if dtype == torch.float32 else 1e-9)
        if not remove:  # with experts removed, a token may be left a single choice
            _router_learns(router, x, seed)

    run()


# -- token layers: blocks, mixers, ffns -----------------------------------------------------------
def token_layer_invariants(
    layer: nn.Module, h: Tensor, ctx: ForwardContext, per_position: bool = False
) -> Tensor:
    """Assert that ``layer`` maps (B,T,D) to (B,T,D) finitely and deterministically, treats the
    samples of a batch independently (changing sample 0 leaves the others unchanged) and, when
    ``per_position``, the positions independently too (an ffn); returns the output."""
    out = layer(h, ctx)
    assert isinstance(out, Tensor), f"forward returned {type(out).__name__}, not a Tensor"
    assert out.shape == h.shape, f"output shape {tuple(out.shape)} != input {tuple(h.shape)}"
    assert torch.isfinite(out).all(), "output is not finite"
    assert torch.equal(layer(h, ctx), out), "forward is not deterministic"
    if h.shape[0] > 1:
        changed = h.clone()
        changed[0] = torch.randn_like(changed[0])
        assert torch.allclose(layer(changed, ctx)[1:], out[1:], atol=1e-5), (
            "changing one sample changed another sample's output"
        )
    if per_position and h.shape[1] > 1:
        changed = h.clone()
        changed[:, 0] = torch.randn_like(changed[:, 0])
        assert torch.allclose(layer(changed, ctx)[:, 1:], out[:, 1:], atol=1e-5), (
            "changing one position changed another position's output"
        )
    return out


def _check_token_layer(
    kind: str, factory: LayerFactory, per_position: bool, max_examples: int, seq_len: int | None
) -> None:
    h_ = _hypothesis()
    st = h_.strategies

    @_settings(max_examples)
    @h_.given(
        b=st.integers(1, 3),
        t=st.integers(1, 6) if seq_len is None else st.just(seq_len),
        heads=st.integers(1, 2),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(b, t, heads, seed):
        torch.manual_seed(seed)
        d = 8 * heads
        layer = factory(d)
        _contract(kind, layer)
        layer = layer.double()
        h = torch.randn(b, t, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        out = token_layer_invariants(layer, h, ForwardContext(), per_position)
        params = [p for p in layer.parameters() if p.requires_grad]
        # an output that is exactly 0 (a sparse mask closed for every token, as DynSIHA's can
        # be for a lone token) passes no gradient by construction: nothing to check there
        if params and out.any():
            out.square().sum().backward()
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), (
                "no gradient reaches the parameters"
            )

    run()


def check_block(factory: LayerFactory, max_examples: int = 20, seq_len: int | None = None) -> None:
    """Check the block ``factory(d_model)`` builds (d_model a multiple of 8): the Block
    Protocol, shape, determinism, independence of samples, gradients. ``seq_len`` fixes T for
    blocks built for one length (``mlp_t``)."""
    _check_token_layer("block", factory, False, max_examples, seq_len)


def check_mixer(factory: LayerFactory, max_examples: int = 20, seq_len: int | None = None) -> None:
    """As :func:`check_block`, for a mixer."""
    _check_token_layer("mixer", factory, False, max_examples, seq_len)


def check_ffn(factory: LayerFactory, max_examples: int = 20) -> None:
    """As :func:`check_block`, for an ffn; positions must also be independent."""
    _check_token_layer("ffn", factory, True, max_examples, None)


# -- recursion and halting -----------------------------------------------------------------------
def check_recursion(
    factory: LayerFactory, max_examples: int = 10, steps: int = 3, seq_len: int | None = None
) -> None:
    """Check the recursion ``factory(d_model)`` builds: ``initial_carry`` gives tensors with the
    batch first, ``forward`` keeps the carry's keys and shapes and returns y (B,T,D), for
    ``steps`` steps in a row. ``seq_len`` fixes T for recursions over blocks built for one
    length (``mlp_t``)."""
    h_ = _hypothesis()
    st = h_.strategies
    lengths = st.integers(1, 5) if seq_len is None else st.just(seq_len)

    @_settings(max_examples)
    @h_.given(b=st.integers(1, 3), t=lengths, seed=st.integers(0, 2**31 - 1))
    def run(b, t, seed):
        torch.manual_seed(seed)
        rec = factory(16)
        _contract("recursion", rec)
        x = torch.randn(b, t, 16)
        carry = rec.initial_carry(x)
        assert isinstance(carry, dict), "initial_carry must return a dict of tensors"
        shapes = {k: v.shape for k, v in carry.items()}
        assert all(s[0] == b for s in shapes.values()), "carry tensors must have the batch first"
        for _ in range(steps):
            carry, y = rec(carry, x, ForwardContext())
            assert y.shape == x.shape, f"y has shape {tuple(y.shape)}, expected {tuple(x.shape)}"
            assert {k: v.shape for k, v in carry.items()} == shapes, "the carry changed shape"
            assert torch.isfinite(y).all(), "y is not finite"

    run()


def check_halting(factory: LayerFactory, max_examples: int = 30) -> None:
    """Check the halting policy ``factory(d_model)`` builds: signals with the batch first,
    ``should_halt`` a (B,) bool that is True wherever steps >= max_steps, a finite scalar loss;
    for a :class:`~ponderkit.WeighsSteps` policy, ``combine``/``halted_after`` shapes and steps
    within 1..max_steps."""
    h_ = _hypothesis()
    st = h_.strategies

    @_settings(max_examples)
    @h_.given(
        b=st.integers(1, 5),
        t=st.integers(1, 4),
        training=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
    def run(b, t, training, seed):
        torch.manual_seed(seed)
        policy = factory(8)
        _contract("halting", policy)
        n = policy.max_steps
        assert isinstance(n, int) and n >= 1, f"max_steps must be an int >= 1, got {n!r}"
        signals_steps, logits_steps = [], []
        for step in range(1, n + 1):
            y = torch.randn(b, t, 8)
            logits = torch.randn(b, t, 5)  # what the model hands a policy: the step's output
            previous = logits_steps[-1] if logits_steps else None
            signals = policy(y, ForwardContext(logits=logits, previous_logits=previous))
            assert isinstance(signals, dict), "forward must return a dict of signals"
            for k, v in signals.items():
                assert v.shape[0] == b, f"signal {k!r} must have the batch first"
            steps = torch.randint(1, n + 2, (b,))
            halt = policy.should_halt(signals, steps, training)
            assert halt.shape == (b,) and halt.dtype == torch.bool, "should_halt: (B,) bool"
            assert halt[steps >= n].all(), "should_halt must be True wherever steps >= max_steps"
            loss, metrics = policy.loss(
                signals, torch.rand(b) < 0.5, next_signals=signals, steps=steps
            )
            assert loss.ndim == 0 and torch.isfinite(loss), "loss must be a finite scalar"
            assert isinstance(metrics, dict), "loss must return (loss, metrics dict)"
            signals_steps.append(signals)
            logits_steps.append(logits)
            del step
        if isinstance(policy, WeighsSteps):
            logits, used = policy.combine(logits_steps, signals_steps)
            assert logits.shape == (b, t, 5), "combine: logits (B,T,V)"
            assert used.shape == (b,) and ((used >= 1) & (used <= n)).all(), (
                "combine: steps (B,) within 1..max_steps"
            )
            assert policy.halted_after(signals_steps).shape == (b,), "halted_after: (B,) bool"

    run()


# -- tasks ------------------------------------------------------------------------------------------
def check_task(task: Any, batch_size: int = 4, batches: int = 3) -> None:
    """Check a built task: the Task Protocol, batch shapes, token ids within the vocabulary,
    labels within it or -100, reproducible training batches for a seed, a fixed evaluation set,
    ``score`` giving (B,) metrics, and for a task drawn as a grid (:class:`GridView`) a grid
    that covers the sequence, one text per cell, extents within it and colours matplotlib
    reads."""
    _contract("task", task)
    it, again = task.train_batches(batch_size, 0), task.train_batches(batch_size, 0)
    for _ in range(batches):
        batch, twin = next(it), next(again)
        _check_batch(task, batch)
        assert all(torch.equal(batch[k], twin[k]) for k in batch), (
            "train_batches is not reproducible for a seed"
        )
    first = [b["inputs"] for b in task.eval_batches(batch_size)]
    second = [b["inputs"] for b in task.eval_batches(batch_size)]
    assert first and len(first) == len(second), "eval_batches must be a fixed, non-empty set"
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True)), (
        "eval_batches changes between calls"
    )
    batch = next(iter(task.eval_batches(batch_size)))
    _check_batch(task, batch)
    scores = task.score(batch["inputs"], batch)
    for name, value in scores.items():
        assert value.shape == (batch["inputs"].shape[0],), f"score {name!r} must be (B,)"
    if isinstance(task, GridView):
        _check_grid(task, batch)


def _check_grid(task: Any, batch: dict[str, Tensor]) -> None:
    from matplotlib.colors import is_color_like

    rows, cols = task.grid_shape
    assert rows * cols == task.seq_len, (
        f"grid_shape {task.grid_shape} must hold seq_len={task.seq_len} cells"
    )
    for tokens in (*batch["inputs"], *batch["labels"]):
        tokens = tokens.numpy()
        cells = task.grid_cells(tokens)
        assert len(cells) == task.seq_len and all(isinstance(c, str) for c in cells), (
            "grid_cells must give one str per token"
        )
        if isinstance(task, PaddedGrid):
            h, w = task.grid_extent(tokens)
            assert 0 <= h <= rows and 0 <= w <= cols, (
                f"grid_extent {(h, w)} outside grid_shape {task.grid_shape}"
            )
    if isinstance(task, ColouredGrid):
        bad = [text for text, colour in task.grid_colours.items() if not is_color_like(colour)]
        assert not bad, f"grid_colours: {bad[0]!r} is not a matplotlib colour"


def _check_batch(task: Any, batch: dict[str, Tensor]) -> None:
    inputs, labels = batch["inputs"], batch["labels"]
    assert inputs.shape == labels.shape and inputs.shape[1] == task.seq_len, (
        f"inputs/labels must be (B, seq_len={task.seq_len}), got {tuple(inputs.shape)}"
    )
    assert inputs.min() >= 0 and inputs.max() < task.vocab_size, "input ids outside vocab"
    ok = (labels == -100) | ((labels >= 0) & (labels < task.vocab_size))
    assert ok.all(), "labels must be token ids or -100"
    if "puzzle_ids" in batch:
        ids = batch["puzzle_ids"]
        assert ids.min() >= 0 and ids.max() < max(task.num_puzzle_ids, 1), "puzzle id range"


OptimizerFactory = Callable[[nn.Module, frozenset], Any]


class _OptimizerProbe(nn.Module):
    """A small model with one parameter of each sort an optimizer groups: an embedding table,
    a tall and a wide matrix with biases, a norm's gain and bias, an output head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.up = nn.Linear(4, 8)
        self.down = nn.Linear(8, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3, bias=False)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.owned = nn.Parameter(torch.zeros(3))  # a callback's (``exclude``)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        h = self.norm(h + self.down(torch.tanh(self.up(h))))
        return self.head(h) + self.owned


def check_optimizer(factory: OptimizerFactory, steps: int = 30) -> None:
    """An optimizer keeps the contract: ``factory(model, exclude)`` (``exclude``: ids of
    parameters a callback owns) returns a :class:`~ponderkit.Optimizer` whose groups hold every
    trainable parameter once and no excluded or frozen one; a parameter without a gradient is
    left alone; ``steps`` steps on a small regression lower its loss; and a copy restored
    from ``state_dict`` takes the same next step, bit for bit."""
    torch.manual_seed(0)
    model = _OptimizerProbe()
    exclude = frozenset({id(model.owned)})
    opt = factory(model, exclude)
    _contract("optimizer", opt)
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    assert len(held) == len(set(held)), "a parameter sits in two groups"
    assert set(held) == set(trainable), (
        "the groups must hold every trainable parameter except the excluded ones, once"
    )
    ids = torch.randint(0, 5, (16, 6))
    target = torch.randn(16, 6, 3)

    def loss_of(m: nn.Module) -> Tensor:
        return ((m(ids) - target) ** 2).mean()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_of(model).backward()
    model.up.weight.grad = None  # no gradient this step: must stay as it is
    opt.step()
    opt.zero_grad(set_to_none=True)
    after = dict(model.named_parameters())
    assert torch.equal(after["up.weight"], before["up.weight"]), (
        "a parameter without a gradient must not move (weight decay included)"
    )
    for name in ("owned", "frozen"):
        assert torch.equal(after[name], before[name]), f"the {name} parameter moved"
    assert not torch.equal(after["down.weight"], before["down.weight"]), "a step moved nothing"
    first = float(loss_of(model).detach())
    for _ in range(steps):
        loss_of(model).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    last = float(loss_of(model).detach())
    assert last < first, f"{steps} steps did not lower a regression loss ({first} -> {last})"
    twin = copy.deepcopy(model)
    restored = factory(twin, frozenset({id(twin.owned)}))
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (twin, restored)):
        loss_of(m).backward()
        o.step()
        o.zero_grad(set_to_none=True)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), f"{name}: the restored optimizer stepped differently"
