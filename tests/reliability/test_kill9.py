"""``kill -9`` at 40 points across ``run`` and ``ablate``: every one resumes to final weights
bit-identical to an uninterrupted run's.

Each point is chosen by ``PONDERKIT_KILL_AT=POINT@N`` (``ponderkit.engine.runs.kill_point``):
the command runs in a forked child that sends itself SIGKILL the N-th time it passes POINT
(after a training step, half-way through a metrics line, between the files of a checkpoint,
before an atomic rename). The parent checks the child died of SIGKILL, runs the same command
again (``run --resume``; ``ablate`` as it is) and compares every tensor of the final
checkpoint bit for bit with the reference. Forking skips the interpreter's and torch's start,
so a point costs two tiny runs' training (about a second on one core).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.engine.runs import KILL_ENV
from safetensors.torch import load_file

EXPERIMENT = """\
name: k9
seed: 0
task: {name: sort, length: 5, values: 6, eval_size: 32}
model:
  d_model: 16
  recursion:
    name: stacked
    layers: 1
    block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: swiglu}
optimizer: {lr: 3.0e-3, warmup_steps: 2}
train: {steps: 12, batch_size: 16, log_every: 2, eval_every: 6, eval_batch_size: 32,
        threads: 1, checkpoint_every: 4, checkpoint_every_s: 0, flops_every: 0}
callbacks: [{name: ema, decay: 0.9}]
"""
ABLATION = "base: exp.yaml\nseeds: [0]\nvariants: {b: {optimizer.lr: 2.0e-3}}\n"

RUN_POINTS = [
    "atomic-write:config.yaml@1",
    "atomic-write:meta.json@1",
    "step@1",
    "step@2",
    "step@3",
    "step@4",
    "step@5",
    "step@7",
    "step@9",
    "step@11",
    "step@12",
    "metrics-line@1",
    "metrics-line@2",
    "metrics-line@3",
    "metrics-line@5",
    "metrics-line@6",
    "checkpoint-weights:step_0000004@1",
    "checkpoint-state:step_0000004@1",
    "checkpoint-weights:step_0000008@1",
    "checkpoint-state:step_0000008@1",
    "checkpoint-weights:step_0000012@1",
    "checkpoint-state:step_0000012@1",
    "checkpoint-weights:final@1",  # inside the final checkpoint write
    "checkpoint-state:final@1",
]
ABLATE_POINTS = [
    "atomic-write:ablation.json@1",
    "step@3",
    "step@12",
    "step@16",  # the second run
    "metrics-line@4",
    "checkpoint-state:step_0000008@1",
    "checkpoint-weights:final@1",
    "checkpoint-state:final@1",
    "checkpoint-weights:final@2",  # the second run's final
    "atomic-write:halting.json@1",
    "atomic-write:report.md@1",  # inside the report write
    "atomic-write:results.json@1",
]
# a kill, then a kill during the resume, then the resume that finishes
TWICE = [("step@6", "atomic-write:metrics.jsonl@1"), ("step@10", "checkpoint-state:final@1")]


def killed(argv: list[str], point: str) -> None:
    """Run ``main(argv)`` in a forked child told to SIGKILL itself at ``point``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.environ[KILL_ENV] = point
            code = main(argv)
        finally:
            os._exit(code if isinstance(code, int) else 98)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"{point}: the child was not killed there (status {status})"
    )


def run_argv(root: Path, out: Path) -> list[str]:
    return ["run", str(root / "exp.yaml"), "--out", str(out), "--quiet"]


def ablate_argv(root: Path, out: Path) -> list[str]:
    return ["ablate", str(root / "abl.yaml"), "--out", str(out), "--progress", "0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("k9")
    (root / "exp.yaml").write_text(EXPERIMENT)
    (root / "abl.yaml").write_text(ABLATION)
    return root


@pytest.fixture(scope="module")
def reference_run(root):
    out = root / "reference-run"
    assert main(run_argv(root, out)) == 0
    return out


@pytest.fixture(scope="module")
def reference_ablation(root):
    out = root / "reference-ablation"
    assert main(ablate_argv(root, out)) == 0
    return out


def assert_bit_identical(run: Path, reference: Path, allow: set[str] = frozenset()) -> None:
    for name in ("model.safetensors",):
        want = load_file(str(reference / "checkpoints/final" / name))
        got = load_file(str(run / "checkpoints/final" / name))
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), (run, key)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x)["step"] for x in (reference / "metrics.jsonl").read_text().splitlines()]
    assert steps == ref  # nothing lost, nothing logged twice
    folder = run / "checkpoints"
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name not in allow]
    assert not leftovers, leftovers


@pytest.mark.parametrize("point", RUN_POINTS)
def test_run_killed_resumes_bit_identical(root, reference_run, tmp_path, point):
    out = tmp_path / "run"
    killed(run_argv(root, out), point)
    assert main([*run_argv(root, out), "--resume"]) == 0
    assert_bit_identical(out, reference_run)
    assert main([*run_argv(root, out), "--resume"]) == 0  # idempotent: nothing to do


@pytest.mark.parametrize(("first", "second"), TWICE)
def test_run_killed_twice_resumes_bit_identical(root, reference_run, tmp_path, first, second):
    out = tmp_path / "run"
    killed(run_argv(root, out), first)
    killed([*run_argv(root, out), "--resume"], second)
    assert main([*run_argv(root, out), "--resume"]) == 0
    assert_bit_identical(out, reference_run)


@pytest.mark.parametrize("point", ABLATE_POINTS)
def test_ablate_killed_resumes_bit_identical(root, reference_ablation, tmp_path, point):
    out = tmp_path / "abl"
    killed(ablate_argv(root, out), point)
    assert main(ablate_argv(root, out)) == 0
    for variant in ("base", "b"):
        assert_bit_identical(out / variant / "seed0", reference_ablation / variant / "seed0")
    assert (out / "report.md").is_file() and (out / "results.json").is_file()


def test_kill_point_count():
    total = len(RUN_POINTS) + 2 * len(TWICE) + len(ABLATE_POINTS)
    assert total >= 40, total


@pytest.mark.parametrize("file", ["model.safetensors", "trainer.pt"])
def test_a_damaged_final_is_written_again(root, reference_run, reference_ablation, tmp_path, file,
                                          capsys):  # fmt: skip
    """``final`` truncated after the run finished: ``run --resume`` and ``ablate`` set it
    aside and write it again from the last step checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    truncate(run / "checkpoints/final" / file)
    assert main([*run_argv(root, run), "--resume"]) == 0
    assert "wrote its missing final checkpoint from step_0000012" in capsys.readouterr().err
    assert_bit_identical(run, reference_run, allow={".damaged-final"})
    abl = tmp_path / "abl"
    shutil.copytree(reference_ablation, abl)
    (abl / "b" / "seed0" / "halting.json").unlink()
    truncate(abl / "b" / "seed0" / "checkpoints/final" / file)
    assert main(ablate_argv(root, abl)) == 0
    assert_bit_identical(abl / "b" / "seed0", reference_ablation / "b" / "seed0",
                         allow={".damaged-final"})  # fmt: skip


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
