"""``eavi`` (seed 003, stage 2): Excursion-Alignment Variational Inference.

Per batch: (1) under no_grad, generate the whole output autoregressively (KV cache, decode
mode ``decode``) from the prompt [x, sep]; (2) one parallel forward of the generated sequence, a global alignment loss
against the ground truth on the pre-softmax logits, one backward, one optimizer step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import torch
from ponderkit import (
    IGNORE_LABEL,
    Batch,
    BuildContext,
    Decoder,
    SequenceTask,
    StaticCacheUnsupported,
    accuracy,
    embed_tokens,
    forward_logits,
    hookimpl,
    sequence_loss,
    step_metrics,
)
from ponderkit.plugins.schedules.teacher_forcing import check_causal_schedule


@attrs.frozen
class EaviConfig:
    """EAVI: generate each output under no_grad, then align the whole excursion in one pass.

    Step (1): ``y_hat = generate(model, [x, sep])`` under ``torch.no_grad`` with the KV cache,
    greedy (``temperature: 0``) or sampled; it also yields the distributions
    ``p_hat_j = softmax(z_hat_j)`` the tokens were drawn from. No graph is built.

    Step (2), the seed is silent on the exact loss and on how the generated distributions enter
    the parallel pass; the choices, each a field:

    - ``feed``: what fills output position j's input in the parallel pass. ``tokens``: the
      generated token y_hat_{j-1} (the model sees exactly the prefix it will see when it
      generates); ``soft``: the expected embedding ``sum_v p_hat_{j-1}(v) E_v`` of the generated
      distribution (the "sequence of probability distributions" the seed names; a
      differentiable-looking but here constant input, since p_hat carries no graph).
    - the loss is the global (whole-sequence) alignment of the pre-softmax logits z_j of the
      parallel pass to the ground truth:
      ``L = (1/B) sum_b (1/|S_b|) sum_{j in S_b} -log softmax(z_j(x, sep, feed_{<j}))[y_j]``,
      i.e. the forward KL from the one-hot truth to the model's distribution at every output
      position, summed along the model's own trajectory. The cross-entropy acts on the logits
      (its gradient is softmax(z) - onehot(y)); argmax never enters the gradient. Conditioning
      on the model's excursion, not on the true prefix, is what removes teacher forcing's
      exposure bias: training then visits the prefixes generation visits.
    - ``positions`` (S_b): ``all`` output positions; or ``from_first_error``, the positions
      from the first generated mistake on (before it the generated prefix equals the true one,
      which is teacher forcing already; a sample generated exactly contributes nothing).

    ``decode``, how step (1) decodes (``ponderkit.Decoder``): ``eager`` is the dynamic KV cache
    (shapes grow by a token per step; every cache-aware mixer); ``static`` preallocates the
    cache and gives every decode step the same shapes and no host sync; ``graph`` replays one
    captured decode step from a CUDA graph per token (CUDA only; elsewhere it is ``static``).
    ``static`` and ``graph`` need mixers that let the cache attend (``attention``,
    ``dynsmlora``); with another (``nsa``) the schedule decodes ``eager`` after one warning.
    They compute the same terms as ``eager`` (summed over a longer masked row): tokens and
    loss agree up to float rounding (a near-tie of two logits can break the other way).
    ``auto`` (default): ``graph`` on CUDA, ``static`` elsewhere, ``eager`` without a warning
    where the mixers do not support them. A failed capture warns once and decodes
    ``static``.

    Metrics add ``gen_exact_acc`` and ``gen_token_acc`` (the batch's generated outputs)."""

    feed: Literal["tokens", "soft"] = "tokens"
    positions: Literal["all", "from_first_error"] = "all"
    temperature: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    decode: Literal["auto", "eager", "static", "graph"] = "auto"


class Eavi:
    def __init__(self, cfg: EaviConfig, seed: int):
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(seed + 7919)  # sampling only
        self.decoder: Decoder | None = None  # made at the first step (its mode needs the device)

    def generate(self, model: Any, prompt: torch.Tensor, length: int, generator) -> tuple:
        """Step (1): the generated tokens (B, length) and their logits (B, length, V)."""
        if self.decoder is None:
            mode = self.cfg.decode
            if mode == "auto":
                mode = "graph" if prompt.device.type == "cuda" else "static"
            self.decoder = Decoder("dynamic" if mode == "eager" else mode)
        try:
            return self.decoder(model, prompt, length, self.cfg.temperature, generator)
        except StaticCacheUnsupported as err:
            if self.cfg.decode != "auto":
                warnings.warn(
                    f"eavi decode: {self.cfg.decode}: {err}", RuntimeWarning, stacklevel=2
                )
            self.decoder = Decoder("dynamic")
            return self.decoder(model, prompt, length, self.cfg.temperature, generator)

    def train_step(self, model: Any, batches: Iterator[Batch], trainer: Any) -> dict[str, Any]:
        task = trainer.task
        if not isinstance(task, SequenceTask):
            raise TypeError("eavi needs a serialized task (task: {name: seq2seq, task: ...})")
        batch = next(batches)
        inputs, labels = batch["inputs"], batch["labels"]
        p = task.prompt_len
        truth = labels[:, p - 1 :]  # (B, m): the output grid
        prompt = inputs[:, :p]  # (B, p): [x, sep]
        generator = self.generator if inputs.device.type == "cpu" else None
        with torch.no_grad(), trainer.autocast():
            tokens, gen_logits = self.generate(model, prompt, truth.shape[1], generator)
        gen_correct, gen_exact, gen_valid = accuracy(gen_logits, truth)
        target = labels
        if self.cfg.positions == "from_first_error":
            wrong = (tokens != truth) & (truth != IGNORE_LABEL)
            after = wrong.long().cumsum(-1) > 0  # (B, m): at or after the first error
            target = labels.clone()
            target[:, p - 1 :] = torch.where(after, truth, IGNORE_LABEL)
        with trainer.autocast():
            if self.cfg.feed == "tokens":
                fed = torch.cat([prompt, tokens[:, :-1]], dim=1)  # (B, p + m - 1)
                x = embed_tokens(model, fed)
            else:
                probs = torch.softmax(gen_logits.float(), dim=-1)[:, :-1]  # (B, m-1, V)
                soft = embed_tokens(model, None, offset=p, probs=probs)
                x = torch.cat([embed_tokens(model, prompt), soft], dim=1)
            ctx = model.context()
            logits = forward_logits(model, x, ctx=ctx)
            per_seq = sequence_loss(logits, target, model.loss_kind)
            counted = (target != IGNORE_LABEL).any(-1).float()
            task_loss = (per_seq * counted).sum() / counted.sum().clamp(min=1)
            aux = sum(ctx.losses.values(), torch.zeros((), device=task_loss.device))
            loss = task_loss + aux
        grad_norm = trainer.optimize(loss)
        return {
            **step_metrics(loss, task_loss, logits, labels, grad_norm),
            **ctx.stat_means(),
            "gen_token_acc": gen_correct.sum() / gen_valid.sum().clamp(min=1),
            "gen_exact_acc": gen_exact.float().mean(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())


def build_eavi(cfg: EaviConfig, ctx: BuildContext) -> Eavi:
    return Eavi(cfg, ctx.seed)


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "schedule",
        "eavi",
        EaviConfig,
        build_eavi,
        requires={"serialized"},
        check=check_causal_schedule("eavi"),
    )
