"""Write a small checkpoint in the TRM authors' layout (their module names, a compiled loss head's
key prefix, a bf16 ``H_init``/``L_init``, a D-wide puzzle row) and its ``all_config.yaml``, with
the helpers ``tests/core/test_import.py`` builds them with, for the README's ``ponderkit import``
walkthrough: ``python docs/examples/authors_checkpoint.py OUT_DIR`` writes ``OUT_DIR/step_1000``.
The model is the tests' tiny one (D=32, the sort task's 6 positions and 8 values); its weights are
random, so what it predicts says nothing: the point is the layout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/examples/authors_checkpoint.py OUT_DIR")
    spec = importlib.util.spec_from_file_location("test_import", REPO / "tests/core/test_import.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.save(helpers.reference_state("trm", mlp_t=True, puzzle_ndim=helpers.D), out / "step_1000")
    config = helpers.reference_config("trm", mlp_t=True, puzzle_ndim=helpers.D)
    (out / "all_config.yaml").write_text(yaml.safe_dump(config))
    print(f"wrote {out / 'step_1000'} and {out / 'all_config.yaml'}")


if __name__ == "__main__":
    main()
