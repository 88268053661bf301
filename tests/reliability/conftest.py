"""What every fault case asserts, and the small experiment the cases break.

A case runs the CLI's ``main()`` in-process from an empty working directory and asserts the
outcome: the exit status, exactly one ``error:`` line on stderr holding the expected text, no
traceback, and no directory created anywhere under the test's folder (or, where a case damages
a run, nothing of the run lost: the test says what it keeps).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ponderkit.app.cli import main

BASE = """\
name: tiny
seed: 0
task: {name: sort, length: 6, values: 8, eval_size: 64}
model:
  d_model: 16
  recursion:
    name: stacked
    layers: 1
    block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: {name: swiglu, expansion: 2}}
optimizer: {lr: 1.0e-3}
train: {steps: 4, batch_size: 8, log_every: 2, eval_every: 0, threads: 1, flops_every: 0}
callbacks: [ema]
"""


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def outcome(capsys, argv: list[str]) -> tuple[int, list[str], str]:
    """Exit status, stderr lines and stdout of ``ponderkit ARGV``."""
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err.strip().splitlines(), captured.out


def check(capsys, root: Path, argv: list[str], expected: str, status: int = 2,
          creates: bool = False) -> str:  # fmt: skip
    """``argv`` fails with ``status`` and one line holding ``expected``; nothing created."""
    before = snapshot(root)
    code, lines, _ = outcome(capsys, argv)
    assert code == status, (argv, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and expected in lines[0], (expected, lines[0])
    if not creates:
        assert snapshot(root) == before, "a directory was created"
    return lines[0]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty working directory holding the base experiment as exp.yaml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(BASE)
    return tmp_path


@pytest.fixture
def fails(capsys, here):
    """``fails(argv, expected, status=2, creates=False)``: :func:`check` in ``here``."""

    def _fails(argv: list[str], expected: str, status: int = 2, creates: bool = False) -> str:
        return check(capsys, here, argv, expected, status, creates)

    return _fails


@pytest.fixture
def base_yaml() -> str:
    return BASE
