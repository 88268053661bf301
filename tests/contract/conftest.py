"""What the contract tests share: the tiny sort experiment they swap one component into."""

from __future__ import annotations

from collections.abc import Callable

import pytest

TINY_SORT = """
name: {name}
task: {{name: sort, length: 4, values: 5, eval_size: 16}}
model:
  d_model: 16
  recursion:
    name: stacked
    layers: 1
    block:
      name: post_norm
      mixer: {{name: attention, heads: 2}}
      ffn: {ffn}
  halting: fixed
train: {train}
"""


@pytest.fixture
def tiny_sort() -> Callable[..., str]:
    """``tiny_sort(name, ffn, train)``: the YAML text of a one-layer attention model on a tiny
    sort task, with ``ffn`` (a component as YAML) and ``train`` (a YAML mapping) given."""

    def make(name: str, ffn: str, train: str) -> str:
        return TINY_SORT.format(name=name, ffn=ffn, train=train).lstrip("\n")

    return make
