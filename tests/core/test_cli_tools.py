"""The researcher tools on real small runs: validate on ablation files, config, diff, eval
overrides, TensorBoard logging, trace, predict and the plugin scaffold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from ponderkit.app.cli import main
from ponderkit.contract.experiment import load_experiment

REPO = Path(__file__).resolve().parents[2]

# An easy 4x4 Sudoku TRM that reaches ~95% exact accuracy in 150 CPU steps (one thread).
SUDOKU4 = """
name: tiny_sudoku4
seed: 0
task: {name: sudoku, size: 4, difficulty: easy, train_size: 400, eval_size: 64, leak_check: false}
model:
  d_model: 32
  positions: none
  recursion:
    name: trm
    layers: 1
    H_cycles: 1
    L_cycles: 2
    block:
      name: post_norm
      mixer: {name: mlp_t, expansion: 2}
      ffn: {name: swiglu, expansion: 2}
  halting: {name: q_head, max_steps: 3}
schedule: deep_supervision
optimizer: {lr: 1.0e-2, weight_decay: 0.01, warmup_steps: 20}
train: {steps: 150, batch_size: 64, log_every: 50, eval_every: 150, eval_batch_size: 64, threads: 1}
"""


@pytest.fixture(scope="session")
def sudoku_run(tmp_path_factory) -> Path:
    """A trained 4x4 Sudoku run directory (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("sudoku4")
    (root / "sudoku4.yaml").write_text(SUDOKU4)
    old = os.environ.get("PONDERKIT_CACHE")
    os.environ["PONDERKIT_CACHE"] = str(root / "cache")
    try:
        code = main(["run", str(root / "sudoku4.yaml"), "--out", str(root / "run"), "--quiet"])
    finally:
        if old is None:
            os.environ.pop("PONDERKIT_CACHE", None)
        else:
            os.environ["PONDERKIT_CACHE"] = old
    assert code == 0
    return root / "run"


def _sort_params(d: int) -> int:
    """Parameters of tests/conftest.py's sort model at width d, counted by hand: embedding
    8*d, per post-norm block qkv d*3d + out d*d + SwiGLU (256 hidden) 3*d*256, head d*8."""
    return 8 * d + 2 * (3 * d * d + d * d + 3 * d * 256) + d * 8


# -- 1. validate on an ablation file --------------------------------------------------------------
def test_validate_ablation_prints_ok_and_parameters_per_variant(sort_yaml, write, capsys):
    abl = write(
        "abl.yaml",
        f"""
        base: {sort_yaml.name}
        variants:
          narrow: {{model.d_model: 16}}
          wide: ["model.d_model=64"]
        seeds: 2
        """,
    )
    assert main(["validate", str(abl)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:3] == [
        f"ok: base    {_sort_params(32)} parameters",
        f"ok: narrow  {_sort_params(16)} parameters",
        f"ok: wide    {_sort_params(64)} parameters",
    ]
    assert lines[3] == "ok: ablation abl: 3 variants x 2 seeds, baseline base"


def test_validate_ablation_reports_every_variants_errors_at_once(sort_yaml, write, capsys):
    abl = write(
        "abl.yaml",
        f"""
        base: {sort_yaml.name}
        variants:
          one: {{model.d_modle: 16}}
          two: {{train.steps: lots}}
        seeds: [0]
        """,
    )
    assert main(["validate", str(abl)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert "abl.yaml:3: variants.one: model.d_modle: unknown key" in err[0]
    assert "abl.yaml:4: variants.two: train.steps: expected int" in err[1]


# -- 2. config and diff ---------------------------------------------------------------------------
def test_config_output_revalidates_to_the_same_experiment(registry, tmp_path, capsys):
    src = REPO / "experiments" / "trm_sudoku4_cpu.yaml"
    overrides = ["model.d_model=32", "model.halting.max_steps=3"]
    assert main(["config", str(src), *overrides]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    want = load_experiment(src, overrides, registry=registry).config
    assert load_experiment(printed, registry=registry).config == want
    assert want.model.d_model == 32 and want.model.halting.config.max_steps == 3


def test_config_of_an_ablation_variant(registry, sort_yaml, write, tmp_path, capsys):
    abl = write(
        "abl.yaml",
        f"""
        base: {sort_yaml.name}
        variants:
          one_layer: {{model.recursion.layers: 1}}
        """,
    )
    assert main(["config", f"{abl}:one_layer"]) == 0
    printed = tmp_path / "variant.yaml"
    printed.write_text(capsys.readouterr().out)
    config = load_experiment(printed, registry=registry).config
    assert config.model.recursion.config.layers == 1
    assert main(["config", str(abl)]) == 2
    assert "name a variant" in capsys.readouterr().err


def test_diff_finds_the_planted_difference_and_nothing_else(sort_yaml, write, capsys):
    other = write("other.yaml", sort_yaml.read_text().replace("batch_size: 64", "batch_size: 48"))
    assert main(["diff", str(sort_yaml), str(other)]) == 1  # they differ, as diff(1) says
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["key", str(sort_yaml), str(other)]
    assert lines[1].split() == ["train.batch_size", "64", "48"]
    assert main(["diff", str(sort_yaml), str(sort_yaml)]) == 0
    assert "no differences" in capsys.readouterr().out


def test_diff_of_a_run_directory_and_an_ablation_variant(sudoku_run, write, capsys):
    abl = write(
        "abl.yaml",
        f"""
        base: {sudoku_run.parent / "sudoku4.yaml"}
        variants: {{deeper: {{model.recursion.L_cycles: 3}}}}
        """,
    )
    assert main(["diff", str(sudoku_run), f"{abl}:deeper"]) == 1
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [r.split() for r in rows] == [["model.recursion.L_cycles", "2", "3"]]


# -- 6. eval with overrides -----------------------------------------------------------------------
def test_eval_takes_evaluation_time_overrides_only(sudoku_run, capsys):
    assert main(["eval", str(sudoku_run), "model.halting.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "steps=2.0000" in out  # every sample runs max_steps without early exit
    saved = json.loads((sudoku_run / "eval-final-model.halting.max_steps=2.json").read_text())
    assert saved["overrides"] == ["model.halting.max_steps=2"] and saved["full"]["steps"] == 2.0
    assert main(["eval", str(sudoku_run), "model.d_model=64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'model.d_model' is a training-only field" in err[0]
    assert main(["eval", str(sudoku_run), "model.halting.name=fixed"]) == 2
    assert "training-only" in capsys.readouterr().err


# -- 4. trace -------------------------------------------------------------------------------------
def test_trace_writes_a_png_sheet_and_a_gif_with_one_frame_per_step(sudoku_run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "trace"
    assert main(["trace", str(sudoku_run), "--sample", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "of 3" in text
    sheet, gif = out / "sample5.png", out / "sample5.gif"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gif.read_bytes()[:6] == b"GIF89a"
    with Image.open(gif) as im:
        assert im.n_frames == 3  # halting.max_steps
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 600


def test_trace_of_a_typed_puzzle(sudoku_run, tmp_path, capsys):
    puzzle = tmp_path / "p.txt"
    puzzle.write_text("1..4\n.4..\n..4.\n4..1\n")
    assert main(["trace", str(sudoku_run), "--data", str(puzzle), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "p.png").exists() and (tmp_path / "p.gif").exists()
    capsys.readouterr()


def test_report_trace_sheets_one_per_variant_skipping_missing_weights(
    sudoku_run, registry, tmp_path
):
    import shutil

    from ponderkit.lab.run_analysis import summarize_run
    from ponderkit.lab.trace import variant_sheets

    bare = tmp_path / "bare"
    shutil.copytree(sudoku_run, bare, ignore=shutil.ignore_patterns("checkpoints"))
    groups = {"trained": [summarize_run(sudoku_run)], "no_weights": [summarize_run(bare)]}
    sheets = variant_sheets(groups, registry, tmp_path / "plots")
    assert [p.name for p in sheets] == ["trace-trained.png"]
    assert sheets[0].read_bytes()[:4] == b"\x89PNG"
    # through `ponderkit report` on an ablation directory (<variant>/seed<k>/)
    shutil.copytree(sudoku_run, tmp_path / "abl" / "trained" / "seed0")
    assert main(["report", str(tmp_path / "abl")]) == 0
    assert "![trace-trained](plots/trace-trained.png)" in (tmp_path / "abl/report.md").read_text()
    # results kept without weights (benchmarks/collect_runs.py) keep the sheet drawn before:
    # analysed as `ablate` does (halting.json marks it finished), then the weights removed
    from ponderkit.lab.run_analysis import analyse_run

    analyse_run(tmp_path / "abl" / "trained" / "seed0", registry)
    shutil.rmtree(tmp_path / "abl" / "trained" / "seed0" / "checkpoints")
    sheet = tmp_path / "abl/plots/trace-trained.png"
    drawn = sheet.read_bytes()
    assert main(["report", str(tmp_path / "abl")]) == 0
    assert "![trace-trained](plots/trace-trained.png)" in (tmp_path / "abl/report.md").read_text()
    assert sheet.read_bytes() == drawn
    sheet.unlink()  # and a sheet never drawn is not listed
    assert main(["report", str(tmp_path / "abl")]) == 0
    assert "trace-trained" not in (tmp_path / "abl/report.md").read_text()


# -- 5. predict -----------------------------------------------------------------------------------
def test_predict_solves_a_typed_4x4_sudoku(sudoku_run, tmp_path, capsys):
    puzzle = tmp_path / "p.txt"
    puzzle.write_text("1..4\n.4..\n..4.\n4..1\n")
    assert main(["predict", str(sudoku_run), str(puzzle)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # the unique solution, by hand: rows, columns and 2x2 boxes each hold 1..4
    assert lines[:4] == ["1324", "2413", "3142", "4231"]
    assert lines[4].startswith("steps: ") and lines[4].endswith("of 3 (halted by the policy)")
    assert lines[5] == "valid: yes"


def test_predict_exit_1_when_the_answer_breaks_the_rules(sudoku_run, tmp_path, capsys):
    puzzle = tmp_path / "p.txt"
    puzzle.write_text("11..\n....\n....\n....\n")  # two 1s in a row: no answer is valid
    assert main(["predict", str(sudoku_run), str(puzzle)]) == 1
    assert capsys.readouterr().out.strip().endswith("valid: no")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("12.4\n3x12\n", "2:2", "'x' is not a cell"),
        ("12.4\n3.12\n21.5\n", "3:4", "'5' is not a cell"),
        ("12.4\n3.12\n", "2:5", "ends after 8 cells"),
        ("1234123412341234\n1", "2:1", "more than 16 cells"),
    ],
)
def test_predict_names_line_and_column_of_malformed_text(
    sudoku_run, tmp_path, capsys, text, where, message
):
    puzzle = tmp_path / "bad.txt"
    puzzle.write_text(text)
    assert main(["predict", str(sudoku_run), str(puzzle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {puzzle}:{where}: ") and message in err[0]


# -- 3. TensorBoard -------------------------------------------------------------------------------
def test_tensorboard_event_files_hold_the_logged_scalars(sort_yaml, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    code = main(
        [
            "run",
            str(sort_yaml),
            "--out",
            str(run),
            "--quiet",
            "callbacks=[tensorboard]",
            "train.steps=20",
            "train.threads=1",
        ]  # fmt: skip
    )
    assert code == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in ("loss", "lr", "eval/exact_acc"):
        logged = {r["step"]: r[key] for r in records if key in r}
        seen = {e.step: e.value for e in events.Scalars(key)}
        assert seen.keys() == logged.keys() and logged
        assert all(abs(seen[s] - v) <= 1e-6 * max(1.0, abs(v)) for s, v in logged.items())


def test_tensorboard_missing_is_one_located_error(sort_yaml, monkeypatch, capsys):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else find(n, *a)
    )
    assert main(["validate", str(sort_yaml), "callbacks=[tensorboard]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "callbacks.0: " in err[0]
    assert "the tensorboard package is not installed" in err[0]
    assert "pip install 'ponderkit[tensorboard]'" in err[0]


# -- 7. new-plugin --------------------------------------------------------------------------------
def test_new_plugin_installs_into_a_venv_and_passes_its_own_test(tmp_path, capsys):
    pkg = tmp_path / "ponderkit-my-ffn"
    assert main(["new-plugin", str(pkg), "--kind", "ffn"]) == 0
    assert "pip install -e" in capsys.readouterr().out
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    py = venv / "bin" / "python"
    # this environment's packages (ponderkit, torch, pytest) seen from the new one
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    outer = sysconfig.get_paths()["purelib"]  # addsitedir: its own .pth files (editable) too
    Path(site, "outer.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"]
    subprocess.run(
        [*pip, "--no-deps", "--no-build-isolation", "--no-index", "-e", str(pkg)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PONDERKIT_DISABLE_PLUGIN_AUTOLOAD"}
    # its own test, then the example through the installed entry point (no --plugin)
    script = (
        "import sys, pytest; from ponderkit.app.cli import main; "
        f"code = pytest.main(['-q', '-p', 'no:cacheprovider', {str(pkg)!r}]); "
        f"sys.exit(code or main(['validate', {str(pkg / 'example.yaml')!r}]))"
    )
    result = subprocess.run(
        [str(py), "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "\nok: " in result.stdout


@pytest.mark.parametrize(
    "kind", ["ffn", "mixer", "halting", "router", "recursion", "schedule", "callback", "task"]
)
def test_new_plugin_component_passes_its_test_and_trains(tmp_path, monkeypatch, capsys, kind):
    import importlib

    pkg = tmp_path / "pkg"
    assert main(["new-plugin", str(pkg), "--kind", kind, "--name", f"my_{kind}"]) == 0
    monkeypatch.syspath_prepend(str(pkg))
    test = importlib.import_module(f"test_ponderkit_my_{kind}")
    getattr(test, f"test_my_{kind}_keeps_the_{kind}_contract")()
    example = str(pkg / "example.yaml")
    plugin = ["--plugin", f"ponderkit_my_{kind}"]
    assert main([*plugin, "validate", example]) == 0
    out = tmp_path / "run"
    args = ["train.steps=4", "train.log_every=2", "train.eval_every=4", "train.threads=1"]
    assert main([*plugin, "run", example, "--out", str(out), "--quiet", *args]) == 0
    assert (out / "checkpoints" / "final" / "model.safetensors").exists()
    capsys.readouterr()


def test_new_plugin_refuses_a_kind_without_a_template_and_a_used_folder(tmp_path, capsys):
    assert main(["new-plugin", str(tmp_path / "x"), "--kind", "fnn"]) == 2
    assert "did you mean 'ffn'" in capsys.readouterr().err
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "f").write_text("")
    assert main(["new-plugin", str(tmp_path / "used"), "--kind", "ffn"]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_predict_reads_and_prints_an_ascii_maze(write, tmp_path, capsys):
    from ponderkit.plugins.tasks import grid_text, maze_gen

    exp = write(
        "maze.yaml",
        """
        task: {name: maze, size: 5, min_path_len: 4, train_size: 40, eval_size: 4}
        model:
          d_model: 16
          recursion:
            name: universal
            block: {name: post_norm, mixer: {name: attention, heads: 2}, ffn: swiglu}
          halting: {name: fixed, steps: 2}
        train: {steps: 2, batch_size: 8, log_every: 1, eval_batch_size: 8, threads: 1}
        """,
    )
    run = tmp_path / "run"
    assert main(["run", str(exp), "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    maze = write("maze.txt", "#####\n#S..#\n#.#.#\n#..G#\n#####\n")
    code = main(["predict", str(run), str(maze)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[5] == "steps: 2 of 2 (halted by the policy)"
    answer = "".join(lines[:5])
    assert len(answer) == 25 and set(answer) <= set("#.SG*?")
    tokens = [grid_text.MAZE_CHARS.get(c, 0) for c in answer]
    inputs = grid_text.parse_maze(maze.read_text(), 5)
    valid = maze_gen.is_shortest_path(inputs, tokens, 5)  # the task's own rules
    assert lines[6] == f"valid: {'yes' if valid else 'no'}" and code == (0 if valid else 1)
