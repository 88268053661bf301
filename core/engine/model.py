"""Model assembly: embedding, a recursion over blocks, the output head and a halting policy.

The model is generic: what happens in depth is the recursion plugin's business, when to stop
is the halting plugin's, and how steps become optimizer updates is the schedule's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import attrs
import torch
from torch import Tensor, nn

from ..contract.experiment import ModelConfig
from ..contract.interfaces import Batch, Carry, Task, WeighsSteps
from .context import BuildContext, ForwardContext
from .losses import accuracy
from .nn import Linear, trunc_normal_

StepFn = Callable[[Carry, Tensor, ForwardContext], tuple[Carry, Tensor, dict[str, Tensor]]]


class ReasoningModel(nn.Module):
    """Token (+ optional puzzle prefix) embedding -> recursion steps -> head, with halting."""

    def __init__(self, cfg: ModelConfig, task: Task, ctx: BuildContext):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.prefix_len = cfg.puzzle_emb_len
        self.seq_len = task.seq_len
        total_len = task.seq_len + self.prefix_len
        self.embed_scale = math.sqrt(d)
        self.token_emb = nn.Embedding(task.vocab_size, d)
        trunc_normal_(self.token_emb.weight, 1.0 / math.sqrt(d))
        self.puzzle_emb: nn.Embedding | None = None
        if self.prefix_len:
            # zero-initialised per-puzzle prefix (one shared row when the task has no ids);
            # rows narrower than the prefix are zero-padded to it (TRM's puzzle_emb_ndim)
            width = cfg.puzzle_emb_dim or self.prefix_len * d
            self.puzzle_emb = nn.Embedding(max(task.num_puzzle_ids, 1), width)
            nn.init.zeros_(self.puzzle_emb.weight)
        self.pos_emb: nn.Embedding | None = None
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(total_len, d)
            trunc_normal_(self.pos_emb.weight, 1.0 / math.sqrt(d))
        # the experiment's one build context, with this model's shapes (same shared library)
        ctx = attrs.evolve(ctx, d_model=d, vocab_size=task.vocab_size, seq_len=total_len)
        self.recursion = ctx.build(cfg.recursion)
        self.head = Linear(d, task.vocab_size)
        self.halting = ctx.build(cfg.halting)

    @property
    def loss_kind(self) -> str:
        return self.cfg.loss

    def context(self) -> ForwardContext:
        return ForwardContext(positions=self.cfg.positions, rope_theta=self.cfg.rope_theta)

    def embed(self, batch: Batch) -> Tensor:
        """Inputs (B,T) -> x (B, prefix+T, D)."""
        return self.embed_tokens(batch["inputs"], puzzle_ids=batch.get("puzzle_ids"))

    def embed_tokens(
        self,
        tokens: Tensor | None,
        offset: int = 0,
        probs: Tensor | None = None,
        puzzle_ids: Tensor | None = None,
    ) -> Tensor:
        """The one token embedding: ``tokens`` (B,t) -> x (B, rows, D), where the embedded rows
        sit at positions ``offset..`` of the model's sequence (the puzzle prefix included).

        At ``offset`` 0 the puzzle prefix (when the model has one; ``puzzle_ids`` picks its
        rows, row 0 without them) comes first, so rows = prefix + t; a later ``offset`` (a
        generation step continuing a KV-cached prefix) embeds the t tokens alone. With
        ``probs`` (B,t,V) instead of ``tokens``, each position gets the expected embedding
        ``probs @ E`` (a soft token, used by EAVI's ``feed: soft``)."""
        weight = self.token_emb.weight
        x = probs.to(weight.dtype) @ weight if probs is not None else self.token_emb(tokens)
        if self.puzzle_emb is not None and offset == 0:
            ids = puzzle_ids
            if ids is None:
                ids = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            prefix = self.puzzle_emb(ids)  # (B, width)
            prefix = nn.functional.pad(
                prefix, (0, self.prefix_len * x.shape[-1] - prefix.shape[-1])
            )
            prefix = prefix.view(x.shape[0], self.prefix_len, -1)  # (B,P,D)
            x = torch.cat([prefix, x], dim=1)
        if self.pos_emb is not None:
            x = (x + self.pos_emb.weight[offset : offset + x.shape[1]]) / math.sqrt(2.0)
        return x * self.embed_scale

    def output(self, y: Tensor) -> Tensor:
        """States (B, prefix+T, D) -> logits (B, T, V) for the task positions."""
        return self.head(y[:, self.prefix_len :])

    def initial_carry(self, x: Tensor) -> Carry:
        return self.recursion.initial_carry(x)

    def step(
        self, carry: Carry, x: Tensor, ctx: ForwardContext
    ) -> tuple[Carry, Tensor, dict[str, Tensor]]:
        """One recursion step: (carry, logits (B,T,V), halting signals). The halting policy
        sees this step's logits as ``ctx.logits`` (and the previous step's, detached, as
        ``ctx.previous_logits`` when :meth:`unroll` runs the steps)."""
        carry, y = self.recursion(carry, x, ctx)
        logits = self.output(y)
        ctx.logits = logits
        try:
            signals = self.halting(y, ctx)
        finally:
            ctx.logits = None  # this step's only: a later module never reads a stale one
        return carry, logits, signals

    def start(self, batch: Batch) -> tuple[Carry, Tensor, ForwardContext]:
        """Where :meth:`unroll` begins for ``batch``: (initial carry, embedded x, context)."""
        x = self.embed(batch)
        return self.initial_carry(x), x, self.context()

    def unroll(
        self, carry: Carry, x: Tensor, ctx: ForwardContext, steps: int, step: StepFn | None = None
    ) -> Iterator[tuple[Carry, Tensor, dict[str, Tensor]]]:
        """The step loop: up to ``steps`` recursion steps from ``carry``, yielding (carry,
        logits, halting signals) after each. Inference and every unrolling schedule run this
        loop; ``step`` replaces :meth:`step` (e.g. with an activation-checkpointed one).
        After each step ``ctx.previous_logits`` holds its logits (detached) for the next step's
        halting policy; a consumer that stops iterating runs no further step (full_unroll
        stops once every sample has halted where later steps weigh nothing)."""
        step = step or self.step
        for _ in range(steps):
            carry, logits, signals = step(carry, x, ctx)
            ctx.previous_logits = logits.detach()
            yield carry, logits, signals

    @torch.no_grad()
    def infer(self, batch: Batch, early_exit: bool = False) -> tuple[Tensor, Tensor]:
        """Predict logits (B,T,V) and the steps each sample used (B,).

        Without ``early_exit`` every sample runs ``halting.max_steps`` steps (as TRM evaluates);
        with it each sample keeps the prediction of the step where its policy halted, and the
        loop ends once all have halted. A policy that weighs steps (:class:`WeighsSteps`: ACT,
        PonderNet) combines all steps' outputs; its output does not depend on early exit, only
        the compute does.
        """
        carry, x, ctx = self.start(batch)
        n = self.halting.max_steps
        if isinstance(self.halting, WeighsSteps):
            logits_steps, history = [], []
            for _, logits, signals in self.unroll(carry, x, ctx, n):
                logits_steps.append(logits)
                history.append(signals)
                if early_exit and bool(self.halting.halted_after(history).all()):
                    break
            logits, halt_steps = self.halting.combine(logits_steps, history)
            if not early_exit:  # every sample ran all steps; report the compute used
                halt_steps = torch.full_like(halt_steps, len(logits_steps))
            return logits, halt_steps
        b = x.shape[0]
        steps = torch.zeros(b, dtype=torch.long, device=x.device)
        halted = torch.zeros(b, dtype=torch.bool, device=x.device)
        final: Tensor | None = None
        for _, logits, signals in self.unroll(carry, x, ctx, n):
            steps = torch.where(halted, steps, steps + 1)
            final = logits if final is None else torch.where(halted[:, None, None], final, logits)
            if early_exit:
                halted = halted | self.halting.should_halt(signals, steps, False)
                if bool(halted.all()):
                    break
        assert final is not None
        return final, steps

    def correct(self, logits: Tensor, labels: Tensor) -> Tensor:
        return accuracy(logits, labels)[1]
