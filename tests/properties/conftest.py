"""Property-test set-up: the shared helpers (``routing_props``) importable under
``--import-mode=importlib``, and IEEE floats restored before each test."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _ieee_subnormals():
    # The Trainer turns flush-to-zero on process-wide (torch.set_flush_denormal); a training
    # test that ran earlier leaves it on, and Hypothesis' floats() then refuses to run.
    torch.set_flush_denormal(False)
    yield
