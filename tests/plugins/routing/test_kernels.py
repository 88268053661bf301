"""The Triton kernels (fused SwiGLU, dispatch gather and combine, the cosine router) against
the torch expressions they replace, run on CPU through Triton's interpreter in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the kernels' tests need Triton (a dev dependency)")


def test_triton_kernels_match_torch_under_the_interpreter():
    script = Path(__file__).with_name("kernel_check.py")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PONDERKIT_TRITON": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert len(checks) == 31, done.stdout
