"""``seq2seq``: serialize another task as ``[input grid, separator, output grid]``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import attrs
import torch
from ponderkit import IGNORE_LABEL, Batch, BuildContext, Spec, component, hookimpl, iter_specs
from torch import Tensor


@attrs.frozen
class Seq2SeqConfig:
    """Serialize ``task`` as [input grid, separator, output grid] for causal next-token training.

    For an inner task with inputs x (B,n) and labels y (B,m) the serialized sample is
    inputs ``[x, sep, y[:-1]]`` and labels ``[-100]*n + y`` (B, n+m): the separator predicts
    y[0] and y[j-1] predicts y[j], so the loss and both accuracies count the output part only.
    The separator is a new token (id = the inner vocabulary size). Needs a causal model (every
    mixer ``causal: true``) and no puzzle prefix. With ``free_running_eval`` evaluation also
    generates the output greedily from ``[x, sep]`` with a KV cache and reports
    ``free_token_acc`` and ``free_exact_acc`` beside the teacher-forced ``token_acc`` and
    ``exact_acc``."""

    task: Spec = component("task", help="the task to serialize")
    free_running_eval: bool = True


class Seq2SeqTask:
    num_puzzle_ids = 0

    def __init__(self, inner, free_running_eval: bool):
        self.inner = inner
        self.free_running_eval = free_running_eval
        self.separator = inner.vocab_size
        self.vocab_size = inner.vocab_size + 1
        self.input_len = inner.seq_len  # n; the inner labels have the same length m = n
        self.prompt_len = self.input_len + 1
        self.seq_len = 2 * inner.seq_len

    def serialize(self, batch: Batch) -> Batch:
        x, y = batch["inputs"], batch["labels"]
        sep = torch.full_like(x[:, :1], self.separator)
        y_in = torch.where(y == IGNORE_LABEL, 0, y)  # ignored labels are fed as padding
        ignore = torch.full_like(x, IGNORE_LABEL)
        return {
            "inputs": torch.cat([x, sep, y_in[:, :-1]], dim=1),  # (B, n + m)
            "labels": torch.cat([ignore, y], dim=1),  # (B, n + m)
        }

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        for batch in self.inner.train_batches(batch_size, seed):
            yield self.serialize(batch)

    def eval_batches(self, batch_size: int) -> Iterable[Batch]:
        for batch in self.inner.eval_batches(batch_size):
            yield self.serialize(batch)

    def score(self, predictions: Tensor, batch: Batch) -> dict[str, Tensor]:
        n = self.input_len
        inner = {"inputs": batch["inputs"][:, :n], "labels": batch["labels"][:, n:]}
        return self.inner.score(predictions[:, n:], inner)


def build_seq2seq(cfg: Seq2SeqConfig, ctx: BuildContext) -> Seq2SeqTask:
    return Seq2SeqTask(ctx.build(cfg.task), cfg.free_running_eval)


def causal_problems(env, who: str) -> list[str]:
    """Why the experiment's model cannot run causally (for ``who``), one message each."""
    model = env.experiment.model
    problems = []
    for path, spec in iter_specs(model, ("model",)):
        if spec.kind != "mixer":
            continue
        dotted = ".".join(str(p) for p in path)
        if not any(f.name == "causal" for f in attrs.fields(type(spec.config))):
            problems.append(
                f"{who} needs a causal model, and mixer/{spec.name} at {dotted} cannot be "
                "causal (it has no causal mode); use attention, dynsmha or nsa with causal: true"
            )
        elif not spec.config.causal:
            problems.append(f"{who} needs a causal model; set {dotted}.causal=true")
    if model.puzzle_emb_len:
        problems.append(f"{who} does not support a puzzle prefix; set model.puzzle_emb_len=0")
    return problems


def check_seq2seq(cfg: Seq2SeqConfig, env) -> list:
    problems: list = []
    if cfg.task.name == "seq2seq":
        problems.append(("task", "a seq2seq task cannot wrap another seq2seq task"))
    if cfg.free_running_eval:
        problems += [(("free_running_eval",), m) for m in causal_problems(env, "free_running_eval")]
    return problems


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "task",
        "seq2seq",
        Seq2SeqConfig,
        build_seq2seq,
        check=check_seq2seq,
        provides={"serialized"},
    )
