"""``teacher_forcing`` (seed 003, stage 1): causal next-token training on serialized grids."""

from __future__ import annotations

import attrs
from ponderkit import BuildContext, hookimpl
from ponderkit.plugins.schedules.full_unroll import FullUnroll, FullUnrollConfig
from ponderkit.plugins.tasks.seq2seq import causal_problems


@attrs.frozen
class TeacherForcingConfig:
    """Causal next-token training on a serialized task: one parallel forward of [x, sep, y[:-1]].

    The loss is the cross-entropy of every output position against the true next token,
    ``-(1/m) sum_j log softmax(z_j)[y_j]`` per sequence, averaged over the batch (the prompt
    positions are ignored), plus auxiliary losses; one optimizer step a batch. The model sees
    the true prefix y[<j] at every position (hence exposure bias at generation time; see
    ``eavi``). Needs a ``seq2seq`` task and a causal model. ``checkpoint`` as in
    ``full_unroll``."""

    checkpoint: bool = False


def check_causal_schedule(name: str):
    def check(cfg, env) -> list[str]:
        return causal_problems(env, f"schedule/{name}")

    return check


def build_teacher_forcing(cfg: TeacherForcingConfig, ctx: BuildContext) -> FullUnroll:
    # with a causal model and serialized labels, the unrolled forward *is* teacher forcing
    return FullUnroll(FullUnrollConfig(checkpoint=cfg.checkpoint))


@hookimpl
def ponderkit_register(registry) -> None:
    registry.add(
        "schedule",
        "teacher_forcing",
        TeacherForcingConfig,
        build_teacher_forcing,
        requires={"serialized"},
        check=check_causal_schedule("teacher_forcing"),
    )
