"""Autoregressive generation with a key/value cache, for causal models on serialized tasks.

A serialized (sequence-to-sequence) task lays a sample out as ``[input grid, separator,
output grid]`` and trains next-token prediction on the output part; its ``inputs`` (B, L) are
``[x, sep, y[:-1]]`` and its ``labels`` are ``[-100 ...x..., y]``, so position ``prompt_len - 1``
(the separator) predicts ``y[0]``. Generation feeds the prompt ``inputs[:, :prompt_len]`` once,
then one token at a time; every causal mixer keeps its keys and values in the
:class:`KVCache` carried by ``ForwardContext.cache`` so a step costs one token, not the prefix.

Three ways to decode (``generate(..., cache=...)``, :class:`Decoder`):

- ``dynamic`` (the default): :class:`KVCache`; each step attends over the keys so far, so its
  shapes grow by one token per step and its positions are host integers. Every mixer that
  takes the cache supports it.
- ``static``: :class:`StaticKVCache`; buffers (B, Hkv, T_max, Dh) allocated by the prompt and
  written in place at a device-side position, attention over the whole buffer under a length
  mask. Every decode step has the same shapes, the same tensors and no host sync (the
  precondition for a CUDA graph or one torch.compile). Only mixers that let the cache attend
  (``attention``, and ``dynsmlora`` through it) support it; another cache-aware mixer raises
  :class:`StaticCacheUnsupported` at the prompt, before anything is generated. Exact up to
  float rounding: the same terms, summed over a longer masked row.
- ``graph`` (CUDA): ``static`` with one decode step captured in a ``torch.cuda.CUDAGraph``
  and replayed per token; the CPU path runs the same step eagerly. A capture that fails (a
  host sync in some layer, e.g. a dynamic MoE dispatch) falls back to ``static`` with one
  warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.nn import functional as F

from ..contract.interfaces import Batch, WeighsSteps
from .context import ForwardContext
from .losses import accuracy
from .nn import apply_rope

CacheMode = Literal["dynamic", "static", "graph"]


@runtime_checkable
class SequenceTask(Protocol):
    """A task serialized as ``[x, separator, y]`` (see the module docstring)."""

    prompt_len: int  # tokens of x plus the separator
    separator: int  # the separator's token id
    free_running_eval: bool  # evaluation also generates the output and scores it
    vocab_size: int
    seq_len: int


class KVCache:
    """Per-call-site state for incremental decoding.

    Every forward visits the model's causal mixers in the same order; the i-th call of a
    forward gets the i-th slot (a dict the mixer fills, e.g. ``{"k": ..., "v": ...}``), so a
    block re-applied over several recursion steps keeps one slot per application.
    ``offset`` is the position of the first token of the current call. With a ``capacity``
    (the most tokens the cache will hold), :meth:`extend` writes each token into buffers
    allocated once instead of copying the whole prefix per token. ``rope_tables`` keeps the
    rotary tables of the contexts of successive calls (see ``ForwardContext.rope``)."""

    def __init__(self, capacity: int | None = None) -> None:
        self.slots: list[dict[str, Tensor]] = []
        self.offset = 0
        self.capacity = capacity
        self.rope_tables: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._next = 0

    def begin(self) -> None:
        self._next = 0

    def slot(self) -> dict[str, Tensor]:
        if self._next == len(self.slots):
            self.slots.append({})
        slot = self.slots[self._next]
        self._next += 1
        return slot

    def extend(self, slot: dict[str, Tensor], name: str, value: Tensor) -> Tensor:
        """Append ``value`` (B, H, t, ...), the tokens at ``offset..offset+t``, to
        ``slot[name]`` along dim 2; returns every position so far (B, H, offset+t, ...)."""
        end = self.offset + value.shape[2]
        held = slot.get(name)
        if self.capacity is None or end > self.capacity:
            prefix = None if held is None else held[:, :, : self.offset]
            slot[name] = value if prefix is None else torch.cat([prefix, value], dim=2)
            return slot[name]
        if held is None:
            held = slot[name] = value.new_empty(*value.shape[:2], self.capacity, *value.shape[3:])
        held[:, :, self.offset : end] = value
        return held[:, :, :end]

    def advance(self, tokens: int) -> None:
        self.offset += tokens


class StaticCacheUnsupported(RuntimeError):
    """A cache-aware mixer of the model reads the dynamic cache (``offset``, ``extend``), which
    :class:`StaticKVCache` does not offer; raised at the prompt, before anything is generated."""


class StaticKVCache:
    """A key/value cache whose decode steps all have the same shapes and no host sync.

    The prompt's call allocates, per call site (``slot``, as :class:`KVCache`), zeroed buffers
    (B, Hkv, T_max, Dh) with T_max = prompt rows + ``decode_tokens``; every call writes its
    keys and values in place at the device-side position ``pos`` (``index_copy_``) and
    attends over the whole buffer with the length mask ``key <= query position`` (masked
    entries weigh exactly 0; the zero fill keeps unwritten ones finite). RoPE rows are
    gathered at ``pos`` on device. ``written`` counts the rows on the host for the embedding
    offset only; attention never reads it.

    A mixer opts in by calling :meth:`attend` when ``ctx.cache.attends`` is set (the
    ``attention`` mixer does); one that reads ``offset`` or calls ``extend`` raises
    :class:`StaticCacheUnsupported`."""

    attends = True

    def __init__(self, decode_tokens: int, device: torch.device | str) -> None:
        self.decode_tokens = decode_tokens
        self.slots: list[dict[str, Tensor]] = []
        self.rope_tables: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.written = 0
        self.key_pos: Tensor | None = None  # arange(T_max) on the device
        self._next = 0

    begin = KVCache.begin
    slot = KVCache.slot

    @property
    def offset(self) -> int:
        raise StaticCacheUnsupported(
            "a cache-aware mixer of this model reads the dynamic KV cache; the static cache "
            "supports mixers that call ctx.cache.attend (attention); decode with cache='dynamic'"
        )

    def extend(self, slot: dict[str, Tensor], name: str, value: Tensor) -> Tensor:
        return self.offset  # raises StaticCacheUnsupported

    def advance(self, tokens: int) -> None:
        self.pos.add_(tokens)  # on device: a captured step advances it at every replay
        self.written += tokens

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        ctx: Any,
        causal: bool = True,
        merge_heads: bool = False,
    ) -> Tensor:
        """What ``ponderkit.attend`` computes with a cache, q (B, H, t, Dh) and k, v (B, Hkv,
        t, Dh) the newest t tokens at positions ``pos..pos+t-1``, with static shapes."""
        if not causal:
            raise RuntimeError("a non-causal mixer cannot decode incrementally; set causal: true")
        b, heads, t, head_dim = q.shape
        slot = self.slot()
        if "k" not in slot:
            if self.written:
                raise RuntimeError("the static cache allocates its buffers at the prompt")
            rows = t + self.decode_tokens
            slot["k"] = k.new_zeros(b, k.shape[1], rows, head_dim)
            slot["v"] = v.new_zeros(b, v.shape[1], rows, head_dim)
        keys, values = slot["k"], slot["v"]
        rows = keys.shape[2]
        if self.key_pos is None or self.key_pos.shape[0] != rows:
            self.key_pos = torch.arange(rows, device=q.device)
        positions = self.pos + self.key_pos[:t]  # (t,) on device
        if ctx is not None and ctx.positions == "rope":
            cos, sin = ctx.rope(rows, head_dim, q.device)
            cos, sin = cos.index_select(0, positions), sin.index_select(0, positions)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys.index_copy_(2, positions, k.to(keys.dtype))
        values.index_copy_(2, positions, v.to(values.dtype))
        if keys.shape[1] != heads:
            group = heads // keys.shape[1]
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        mask = self.key_pos[None, :] <= positions[:, None]  # (t, T_max)
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        if merge_heads:
            return o.transpose(1, 2).reshape(b, t, heads * head_dim)
        return o


def embed_tokens(
    model: Any, tokens: Tensor | None, offset: int = 0, probs: Tensor | None = None
) -> Tensor:
    """Embed ``tokens`` (B,t) sitting at positions ``offset..offset+t`` -> (B,t,D), or soft
    tokens ``probs`` (B,t,V) as their expected embeddings: ``model.embed_tokens``, the same
    computation ``ReasoningModel.embed`` runs (serialized tasks refuse a puzzle prefix)."""
    return model.embed_tokens(tokens, offset, probs)


def forward_logits(
    model: Any, x: Tensor, cache: KVCache | None = None, ctx: ForwardContext | None = None
) -> Tensor:
    """Run every recursion step on embedded ``x`` (B,t,D) -> logits (B,t,V), as ``infer``
    does without early exit; with ``cache`` the tokens continue the cached prefix. Pass
    ``ctx`` to collect the auxiliary losses of a forward with gradients."""
    ctx = ctx if ctx is not None else model.context()
    ctx.cache = cache
    if cache is not None:
        cache.begin()
        ctx._rope_cache = cache.rope_tables  # one set of tables for every decoding step
    logits_steps, signals_steps = [], []
    carry = model.initial_carry(x)
    for _, logits, signals in model.unroll(carry, x, ctx, model.halting.max_steps):
        logits_steps.append(logits)
        signals_steps.append(signals)
    if cache is not None:
        if not cache.slots:
            raise RuntimeError("generation with a KV cache found no cache-aware causal mixer")
        cache.advance(x.shape[1])
    if isinstance(model.halting, WeighsSteps):
        return model.halting.combine(logits_steps, signals_steps)[0]
    return logits_steps[-1]


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Decoder:
    """Generation with one decode mode (see the module docstring): ``dynamic``, ``static`` or
    ``graph``. Called like :func:`generate` without ``cache``.

    ``graph`` on CPU, or where the capture fails, runs the ``static`` step eagerly (the
    failure warns once and ``mode`` becomes ``static``, so a later call does not retry).
    A model whose mixers do not support the static cache raises
    :class:`StaticCacheUnsupported` (no tokens generated yet): the caller chooses what to do
    (``eavi`` falls back to ``dynamic``). Warm-up steps before a capture: ``warmup``."""

    def __init__(self, mode: CacheMode = "dynamic", warmup: int = 3) -> None:
        if mode not in ("dynamic", "static", "graph"):
            raise ValueError(f"decode mode must be dynamic, static or graph, got {mode!r}")
        self.mode = mode
        self.warmup = warmup

    @torch.no_grad()
    def __call__(
        self,
        model: Any,
        prompt: Tensor,
        length: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        if self.mode == "dynamic":
            cache: KVCache | StaticKVCache = KVCache(capacity=prompt.shape[1] + length)
        else:
            cache = StaticKVCache(max(length - 1, 0), prompt.device)
        last = forward_logits(model, embed_tokens(model, prompt), cache)[:, -1]
        step = self._step(model, cache)
        tokens = prompt.new_empty(prompt.shape[0], length)
        logits = last.new_empty(prompt.shape[0], length, last.shape[-1])
        for i in range(length):  # no host sync: positions are host ints or on device
            logits[:, i] = last
            tokens[:, i] = _pick(last, temperature, generator)
            if i + 1 < length:
                last = step(embed_tokens(model, tokens[:, i, None], offset=cache_rows(cache)))
        return tokens, logits

    def _step(self, model: Any, cache: KVCache | StaticKVCache) -> Callable[[Tensor], Tensor]:
        """One decode step: the embedded newest token (B, 1, D) -> its logits (B, V)."""

        def eager(x: Tensor) -> Tensor:
            return forward_logits(model, x, cache)[:, -1]

        if self.mode != "graph" or not cache_on_cuda(cache):
            return eager
        captured: list[Callable[[Tensor], Tensor]] = []

        def first(x: Tensor) -> Tensor:  # capture at the first token, with a real input
            if not captured:
                try:
                    captured.append(capture_decode_step(eager, cache, x, self.warmup))
                except Exception as err:  # noqa: BLE001 - any capture failure falls back
                    warnings.warn(
                        f"decode: graph capture failed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); decoding with the "
                        "static cache eagerly",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                    self.mode = "static"
                    captured.append(eager)
            return captured[0](x)

        return first


def cache_rows(cache: KVCache | StaticKVCache) -> int:
    """Rows the cache holds (the next token's position), a host integer."""
    return cache.written if isinstance(cache, StaticKVCache) else cache.offset


def cache_on_cuda(cache: KVCache | StaticKVCache) -> bool:
    return isinstance(cache, StaticKVCache) and cache.pos.device.type == "cuda"


def capture_decode_step(
    eager: Callable[[Tensor], Tensor], cache: StaticKVCache, x: Tensor, warmup: int = 3
) -> Callable[[Tensor], Tensor]:
    """``eager`` (one decode step over ``cache``) captured in a CUDA graph, following
    torch.cuda.graphs: static input ``x`` (copied in before each replay) and output (the
    logits, read before the next replay), warm-up iterations on a side stream (the same
    stream then captures), autocast without its weight cache during capture. The step
    advances ``cache.pos`` on device inside the graph; warm-up runs are undone (position
    and host count restored; the rows they wrote lie past it, masked and overwritten)."""
    static_x = x.clone()
    pos, written = cache.pos.clone(), cache.written
    autocast = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda")

    def run() -> Tensor:
        with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
            return eager(static_x)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                run()
                cache.pos.copy_(pos)
                cache.written = written
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph, stream=stream):
            static_out = run()
    finally:  # capture records the step without running it; a failure leaves no trace
        torch.cuda.current_stream().wait_stream(stream)
        cache.pos.copy_(pos)
        cache.written = written

    def replay(x: Tensor) -> Tensor:
        static_x.copy_(x)
        graph.replay()
        cache.written += 1
        return static_out

    replay.graph = graph  # type: ignore[attr-defined]  # keeps the graph (and its pool) alive
    return replay


@torch.no_grad()
def generate(
    model: Any,
    prompt: Tensor,
    length: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    cache: CacheMode = "dynamic",
) -> tuple[Tensor, Tensor]:
    """Continue ``prompt`` (B,P) by ``length`` tokens, greedy (``temperature`` 0) or sampled.

    Returns the generated tokens (B, length) and the logits each was drawn from
    (B, length, V). ``cache`` picks the decode mode (module docstring; :class:`Decoder`):
    ``dynamic`` (default; every cache-aware mixer), ``static`` (preallocated buffers, static
    shapes, no host sync per step) or ``graph`` (``static`` replayed from a CUDA graph).
    ``use_cache=False`` recomputes the whole prefix every step (the reference the caches are
    tested against)."""
    if use_cache:
        return Decoder(cache)(model, prompt, length, temperature, generator)
    tokens: list[Tensor] = []
    steps: list[Tensor] = []
    seq = prompt
    for _ in range(length):
        last = forward_logits(model, embed_tokens(model, seq))[:, -1]
        steps.append(last)
        tokens.append(_pick(last, temperature, generator))
        seq = torch.cat([seq, tokens[-1][:, None]], dim=1)
    return torch.stack(tokens, 1), torch.stack(steps, 1)


def free_running_metrics(model: Any, batch: Batch, prompt_len: int) -> dict[str, Tensor]:
    """Per-sample token and exact accuracy (B,) of greedy generation against the labels."""
    labels = batch["labels"][:, prompt_len - 1 :]  # (B, m): the output grid
    _, logits = generate(model, batch["inputs"][:, :prompt_len], labels.shape[1])
    correct, exact, valid = accuracy(logits, labels)
    return {
        "free_token_acc": correct.sum(-1) / valid.sum(-1).clamp(min=1),
        "free_exact_acc": exact.float(),
    }
