"""Autoregressive generation with a key/value cache, for causal models on serialized tasks.

A serialized (sequence-to-sequence) task lays a sample out as ``[input grid, separator,
output grid]`` and trains next-token prediction on the output part; its ``inputs`` (B, L) are
``[x, sep, y[:-1]]`` and its ``labels`` are ``[-100 ...x..., y]``, so position ``prompt_len - 1``
(the separator) predicts ``y[0]``. Generation feeds the prompt ``inputs[:, :prompt_len]`` once,
then one token at a time; every causal mixer keeps its keys and values in the
:class:`KVCache` carried by ``ForwardContext.cache`` so a step costs one token, not the prefix.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..contract.interfaces import Batch, WeighsSteps
from .context import ForwardContext
from .losses import accuracy


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


@torch.no_grad()
def generate(
    model: Any,
    prompt: Tensor,
    length: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Continue ``prompt`` (B,P) by ``length`` tokens, greedy (``temperature`` 0) or sampled.

    Returns the generated tokens (B, length) and the logits each was drawn from
    (B, length, V). ``use_cache=False`` recomputes the whole prefix every step (the
    reference the cache is tested against)."""
    tokens: list[Tensor] = []
    steps: list[Tensor] = []
    if use_cache:
        cache = KVCache(capacity=prompt.shape[1] + length)
        last = forward_logits(model, embed_tokens(model, prompt), cache)[:, -1]
        for i in range(length):
            steps.append(last)
            tokens.append(_pick(last, temperature, generator))
            if i + 1 < length:
                x = embed_tokens(model, tokens[-1][:, None], offset=cache.offset)
                last = forward_logits(model, x, cache)[:, -1]
    else:
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
