"""Shared fixtures: a plugin set with the built-ins and helpers to write YAML files."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import Phase, settings
from ponderkit.contract.loading import Plugins

REPO = Path(__file__).resolve().parent.parent

# Under CI (env CI set) every Hypothesis test draws the same examples on every run (a seed
# derived from the test), so a submission never fails by chance; local runs keep exploring
# with fresh random examples. Loaded here, before any test module builds its settings, so
# that settings(...) objects made at import inherit it.
# no deadline: timings on shared CI machines vary by 10x, which is no failure of the code
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# Under pytest-xdist (`make test` runs `-n 2`) the workers share the machine's cores, so each
# takes one intra-op thread: train.threads (a speed setting; no test asserts on it) is capped
# at 1 in the worker, and processes it starts default to OMP_NUM_THREADS=1. Two OpenMP
# threads with another busy process on the machine ran 3-10x slower than one thread here
# (their barriers wait on a descheduled thread).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _set_num_threads = torch.set_num_threads
    torch.set_num_threads = lambda n: _set_num_threads(min(n, 1))
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PONDERKIT_PLUGINS", raising=False)
    monkeypatch.setenv("PONDERKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def no_shrink():
    """For a test that expects a property check to fail (the check's teeth): Hypothesis
    reports the first failing example as found instead of shrinking it, which took seconds a
    test and proves nothing more; the check must still fail, with the same message. The
    current profile (ci or default) is restored afterwards."""
    before = settings.get_current_profile_name()
    phases = tuple(p for p in settings.default.phases if p is not Phase.shrink)
    settings.register_profile("no_shrink", settings(settings.default, phases=phases))
    settings.load_profile("no_shrink")
    yield
    settings.load_profile(before)


@pytest.fixture
def plugins() -> Plugins:
    return Plugins(autoload=False)


@pytest.fixture
def registry(plugins):
    return plugins.registry


@pytest.fixture
def write(tmp_path):
    """write('name.yaml', text) -> Path, dedenting the text."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


SORT_EXPERIMENT = """
name: tiny_sort
seed: 0
task: {name: sort, length: 6, values: 8, eval_size: 256}
model:
  d_model: 32
  recursion:
    name: stacked
    layers: 2
    block:
      name: post_norm
      mixer: {name: attention, heads: 4}
      ffn: {name: swiglu, expansion: 2}
  halting: fixed
optimizer: {lr: 3.0e-3, weight_decay: 0.01, warmup_steps: 20}
train: {steps: 40, batch_size: 64, log_every: 10, eval_every: 20, threads: 2}
"""


@pytest.fixture
def sort_yaml(write) -> Path:
    return write("sort.yaml", SORT_EXPERIMENT)
