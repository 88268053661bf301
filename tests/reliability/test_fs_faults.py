"""The file system and run folders: special files, link loops, ``extends`` outside the
experiment's folder, damaged run folders, a full disk, ``eval --checkpoint`` outside the run,
and a non-finite loss. Each fault is one line naming the path and what is wrong, with the exit
status the docs give (2; 3 for a non-finite loss), and nothing of a run lost.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from ponderkit.app.cli import main
from ponderkit.engine.runs import load_checkpoint
from safetensors.torch import load_file


# -- config and extends files: (id, files to make, argv, expected) -------------------------------
def _fifo(name):
    return lambda root: os.mkfifo(root / name)


def _link(name, target):
    return lambda root: (root / name).symlink_to(target)


def _text(name, text):
    return lambda root: (root / name).write_text(text)


SPECIAL_CASES = [
    (
        "config_fifo",
        [_fifo("p.yaml")],
        ["validate", "p.yaml"],
        "config file p.yaml is a named pipe",
    ),
    (
        "extends_fifo",
        [_fifo("p.yaml"), _text("c.yaml", "extends: p.yaml\n")],
        ["validate", "c.yaml"],
        "c.yaml: extends: extends file p.yaml is a named pipe",
    ),
    (
        "ablation_base_fifo",
        [_fifo("p.yaml"), _text("a.yaml", "base: p.yaml\n")],
        ["ablate", "a.yaml", "--out", "o"],
        "p.yaml is a named pipe",
    ),
    ("config_dev_zero", [], ["validate", "/dev/zero"], "/dev/zero is a special file"),
    ("config_loop", [_link("l.yaml", "l.yaml")], ["validate", "l.yaml"], "l.yaml: "),
    (
        "config_loop_pair",
        [_link("a.yaml", "b.yaml"), _link("b.yaml", "a.yaml")],
        ["validate", "a.yaml"],
        "a.yaml: ",
    ),
    (
        "extends_loop",
        [_link("l.yaml", "l.yaml"), _text("c.yaml", "extends: l.yaml\n")],
        ["validate", "c.yaml"],
        "c.yaml: extends: ",
    ),
    ("config_dangling", [_link("d.yaml", "gone.yaml")], ["validate", "d.yaml"], "not found"),
    (
        "extends_dangling",
        [_link("d.yaml", "gone.yaml"), _text("c.yaml", "extends: d.yaml\n")],
        ["validate", "c.yaml"],
        "extends file not found",
    ),
    (
        "extends_parent_dir",
        [_text("c.yaml", "extends: ../exp.yaml\n")],
        ["validate", "c.yaml"],
        "c.yaml:1: extends: '../exp.yaml' is outside",
    ),
    (
        "extends_absolute",
        [_text("c.yaml", "extends: /etc/passwd\n")],
        ["validate", "c.yaml"],
        "c.yaml:1: extends: '/etc/passwd' is outside",
    ),
    (
        "extends_link_out",
        [_link("up.yaml", "../exp.yaml"), _text("c.yaml", "extends: up.yaml\n")],
        ["validate", "c.yaml"],
        "extends: 'up.yaml' is outside",
    ),
    (
        "extends_empty",
        [_text("c.yaml", "extends: ''\n")],
        ["validate", "c.yaml"],
        "c.yaml:1: extends: extends must be a file name",
    ),
    (
        "extends_number",
        [_text("c.yaml", "extends: 3\n")],
        ["validate", "c.yaml"],
        "extends must be a file name",
    ),
    (
        "extends_long",
        [_text("c.yaml", "extends: ../" + "x" * 5000 + "\n")],
        ["validate", "c.yaml"],
        "is outside",
    ),
]


@pytest.mark.parametrize(("makes", "argv", "expected"), [c[1:] for c in SPECIAL_CASES],
                         ids=[c[0] for c in SPECIAL_CASES])  # fmt: skip
def test_special_files_and_extends(here, fails, makes, argv, expected):
    sub = here / "sub"  # the experiment's folder; exp.yaml sits above it
    sub.mkdir()
    os.chdir(sub)
    for make in makes:
        make(sub)
    line = fails(argv, expected)
    assert len(line) < 600


def test_extends_outside_is_allowed_when_asked(here, capsys, monkeypatch):
    (here / "sub").mkdir()
    (here / "sub" / "c.yaml").write_text("extends: ../exp.yaml\n")
    monkeypatch.setenv("PONDERKIT_EXTENDS_ANYWHERE", "1")
    assert main(["validate", "sub/c.yaml"]) == 0, capsys.readouterr().err


def test_extends_into_a_subfolder_is_inside(here, capsys):
    (here / "parts").mkdir()
    shutil.copy(here / "exp.yaml", here / "parts" / "base.yaml")
    (here / "c.yaml").write_text("extends: parts/base.yaml\ntrain: {steps: 5}\n")
    assert main(["validate", "c.yaml"]) == 0, capsys.readouterr().err


# -- extends merging: what a child file means ------------------------------------------------
def merged(here, child: str):
    from ponderkit.contract.experiment import load_experiment
    from ponderkit.contract.loading import Plugins

    (here / "child.yaml").write_text("extends: exp.yaml\n" + child)
    return load_experiment(here / "child.yaml", registry=Plugins(autoload=False).registry).config


def test_null_in_a_child_keeps_the_parents(here):
    cfg = merged(here, "train: null\noptimizer: {lr: null, weight_decay: 0.5}\n")
    assert cfg.train.steps == 4 and cfg.train.batch_size == 8  # the parent's whole section
    assert cfg.optimizer.config.lr == 1.0e-3 and cfg.optimizer.config.weight_decay == 0.5


def test_a_bare_name_of_the_same_component_keeps_its_fields(here):
    cfg = merged(here, "model: {recursion: {block: {ffn: swiglu}}}\n")
    assert cfg.model.recursion.config.block.config.ffn.config.expansion == 2  # not the default 4


def test_fields_under_a_parents_bare_name_merge(here):
    cfg = merged(here, "model: {recursion: {block: {mixer: {heads: 4}}}}\ncallbacks: [ema]\n")
    mixer = cfg.model.recursion.config.block.config.mixer
    assert mixer.name == "attention" and mixer.config.heads == 4


def test_another_component_replaces_the_fields(here):
    cfg = merged(here, "model: {recursion: {block: {ffn: {name: none}}}}\n")
    assert cfg.model.recursion.config.block.config.ffn.name == "none"


def test_an_override_null_sets_null(here, capsys):
    from ponderkit.contract.experiment import load_experiment
    from ponderkit.contract.loading import Plugins

    registry = Plugins(autoload=False).registry
    cfg = load_experiment(here / "exp.yaml", ["optimizer.grad_clip=null"], registry=registry)
    assert cfg.config.optimizer.config.grad_clip is None


# -- run folders -------------------------------------------------------------------------------
def _finished_run(root: Path, base_yaml: str) -> Path:
    (root / "exp.yaml").write_text(base_yaml)
    out = root / "run"
    argv = ["run", str(root / "exp.yaml"), "--out", str(out), "--quiet", "train.checkpoint_every=2"]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from ponderkit.contract.loading import Plugins  # noqa: F401 -- warm the plugins once

    root = tmp_path_factory.mktemp("real")
    base = (Path(__file__).parent / "conftest.py").read_text().split('BASE = """\\\n')[1]
    return _finished_run(root, base.split('"""')[0])


def _as_dir(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.mkdir()


def _as_file(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.write_text("x")


RESUME = ["run", "exp.yaml", "train.checkpoint_every=2", "--out", "copy", "--resume"]
RUN_DIR_CASES = [
    (
        "checkpoints_a_file",
        lambda r: _as_file(r / "checkpoints"),
        RESUME,
        "copy/checkpoints is not a folder",
    ),
    (
        "metrics_a_folder",
        lambda r: _as_dir(r / "metrics.jsonl"),
        RESUME,
        "copy/metrics.jsonl is not a file",
    ),
    ("meta_a_folder", lambda r: _as_dir(r / "meta.json"), RESUME, "copy/meta.json is not a file"),
    (
        "lock_a_folder",
        lambda r: _as_dir(r / ".lock"),
        RESUME,
        "copy/.lock: cannot open the lock file (Is a directory)",
    ),
    (
        "config_a_folder",
        lambda r: _as_dir(r / "config.yaml"),
        RESUME,
        "copy is not a run directory (no config.yaml)",
    ),
    (
        "config_a_fifo",
        lambda r: (r.joinpath("config.yaml").unlink(), os.mkfifo(r / "config.yaml")),
        RESUME,
        "copy is not a run directory (no config.yaml)",
    ),
    (
        "config_loop",
        lambda r: (
            r.joinpath("config.yaml").unlink(),
            r.joinpath("config.yaml").symlink_to("config.yaml"),
        ),
        RESUME,
        "copy is not a run directory (no config.yaml)",
    ),
    (
        "eval_dotdot",
        None,
        ["eval", "copy", "--checkpoint", "../../etc"],
        "--checkpoint '../../etc'",
    ),
    ("eval_absolute", None, ["eval", "copy", "--checkpoint", "/etc"], "not a checkpoint of copy"),
    ("eval_slash", None, ["eval", "copy", "--checkpoint", "final/x"], "not a checkpoint of copy"),
    ("eval_parent", None, ["eval", "copy", "--checkpoint", ".."], "not a checkpoint of copy"),
    ("eval_empty", None, ["eval", "copy", "--checkpoint", ""], "not a checkpoint of copy"),
    ("eval_long", None, ["eval", "copy", "--checkpoint", "x" * 50_000], "not a checkpoint of"),
    (
        "eval_link_out",
        lambda r: (r / "checkpoints" / "evil").symlink_to(r.parent),
        ["eval", "copy", "--checkpoint", "evil"],
        "--checkpoint 'evil': not a checkpoint of copy",
    ),
]


@pytest.mark.parametrize(("damage", "argv", "expected"), [c[1:] for c in RUN_DIR_CASES],
                         ids=[c[0] for c in RUN_DIR_CASES])  # fmt: skip
def test_damaged_run_folder(here, real_run, fails, damage, argv, expected):
    run = here / "copy"
    shutil.copytree(real_run, run, symlinks=True)
    if damage:
        damage(run)
    kept = {p.name: p.stat().st_size for p in run.iterdir() if p.is_file()}
    line = fails(argv, expected)
    assert len(line) < 600
    assert {p.name: p.stat().st_size for p in run.iterdir() if p.is_file()} == kept  # nothing lost


OUT_CASES = [
    (
        "out_loop",
        lambda r: (r / "o").symlink_to("o"),
        ["run", "exp.yaml", "--out", "o"],
        "--out o: a symbolic link to nothing (or a link loop)",
    ),
    (
        "out_dangling",
        lambda r: (r / "o").symlink_to("gone"),
        ["run", "exp.yaml", "--out", "o"],
        "--out o: a symbolic link to nothing",
    ),
    (
        "out_under_a_file",
        lambda r: (r / "f").write_text("x"),
        ["run", "exp.yaml", "--out", "f/run"],
        "--out f/run: cannot create it (Not a directory)",
    ),
    (
        "resume_out_loop",
        lambda r: (r / "o").symlink_to("o"),
        ["run", "exp.yaml", "--out", "o", "--resume"],
        "--out o: a symbolic link to nothing",
    ),
    (
        "ablate_out_loop",
        lambda r: ((r / "a.yaml").write_text("base: exp.yaml\n"), (r / "o").symlink_to("o")),
        ["ablate", "a.yaml", "--out", "o"],
        "--out o: a symbolic link to nothing (or a link loop)",
    ),
]


@pytest.mark.parametrize(("make", "argv", "expected"), [c[1:] for c in OUT_CASES],
                         ids=[c[0] for c in OUT_CASES])  # fmt: skip
def test_bad_out(here, fails, make, argv, expected):
    make(here)
    fails(argv, expected)


def test_read_only_out(here, fails, monkeypatch):
    """A read-only file system (root ignores mode bits: the refusal is simulated where the
    run folder is made)."""
    real = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    fails(["run", "exp.yaml", "--out", "ro"], "--out ro: cannot create it (Read-only file system)")


# -- a full disk mid-run: the earlier checkpoints intact, the run resumable --------------------
RUN = ["run", "exp.yaml", "--out", "r", "--quiet", "train.checkpoint_every=2"]


def _enospc_on_call(monkeypatch, module, name, nth):
    real, calls = getattr(module, name), {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, full)


@pytest.mark.parametrize("writer", ["weights", "state"])
def test_disk_full_inside_a_checkpoint_keeps_the_previous_one(here, fails, monkeypatch, writer,
                                                              real_run):  # fmt: skip
    import safetensors.torch

    with monkeypatch.context() as patched:
        if writer == "weights":
            _enospc_on_call(patched, safetensors.torch, "save_file", 2)
        else:
            _enospc_on_call(patched, torch, "save", 2)
        fails(RUN, "r/checkpoints/step_0000004: no space left on device while writing the "
              "checkpoint (it needs about", creates=True)  # fmt: skip
    names = sorted(p.name for p in (here / "r" / "checkpoints").iterdir())
    assert names == ["step_0000002"]  # no temporary left, the earlier one whole
    _, state = load_checkpoint(here / "r" / "checkpoints" / "step_0000002")
    assert state["step"] == 2
    assert main([*RUN, "--resume"]) == 0  # space freed: it finishes, as an unbroken run
    want = load_file(str(real_run / "checkpoints/final/model.safetensors"))
    got = load_file(str(here / "r" / "checkpoints/final/model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_too_little_space_stops_before_the_checkpoint(here, fails, monkeypatch):
    from ponderkit.engine import runs

    monkeypatch.setattr(runs, "_free_bytes", lambda folder: 4096)
    fails(RUN, "MiB free, a checkpoint needs about", creates=True)
    assert list((here / "r" / "checkpoints").iterdir()) == []


def test_disk_full_on_the_metrics_log(here, fails, monkeypatch):
    from ponderkit.engine.runs import MetricsLog

    def full(self, line):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MetricsLog, "_append", full)
    fails(RUN, "r/metrics.jsonl: cannot append to it (No space left on device)", creates=True)


def test_disk_full_on_the_config_write(here, fails, monkeypatch):
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    fails(RUN, "r/config.yaml: cannot write it (No space left on device)", creates=True)
    monkeypatch.setattr(os, "fsync", real)
    assert not [p for p in (here / "r").iterdir() if p.name.endswith(".tmp")]


def test_every_written_file_follows_the_umask(here):
    old = os.umask(0o027)
    try:
        assert main(RUN) == 0
    finally:
        os.umask(old)
    for path in (here / "r").rglob("*"):
        want = 0o750 if path.is_dir() else 0o640
        assert path.stat().st_mode & 0o777 == want, path  # model.safetensors was 0600


# -- a non-finite loss or gradient -------------------------------------------------------------
def _poison(monkeypatch, at_step: int, how: str):
    """Make the loss (``loss``) or only the gradient (``grad``) non-finite at ``at_step``."""
    from ponderkit.engine.train import Trainer

    real = Trainer.optimize

    def optimize(self, loss):
        if self.step + 1 == at_step:
            if how == "loss":
                loss = loss * float("nan")
            else:  # d sqrt(x)/dx at 0 is inf, times 0: a nan gradient under a finite loss
                p = next(self.model.parameters())
                loss = loss + torch.sqrt(p.sum() * 0.0)
        return real(self, loss)

    monkeypatch.setattr(Trainer, "optimize", optimize)


@pytest.mark.parametrize(("how", "what"), [("loss", "loss (nan)"), ("grad", "gradient norm")])
def test_non_finite_stops_the_run_keeping_the_finite_checkpoints(here, fails, monkeypatch, how,
                                                                 what):  # fmt: skip
    _poison(monkeypatch, 3, how)
    line = fails(RUN, f"non-finite {what}", status=3, creates=True)
    assert "at step 3: the run stopped before updating the weights; its last checkpoint, " \
        "step_0000002, is kept" in line  # fmt: skip
    folder = here / "r" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000002"]
    weights, _ = load_checkpoint(folder / "step_0000002")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_non_finite_skip_counts_the_steps(here, capsys, monkeypatch):
    _poison(monkeypatch, 3, "loss")
    assert main([*RUN, "train.nonfinite=skip"]) == 0, capsys.readouterr().err
    records = [json.loads(x) for x in (here / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_skipped"] for r in records] == [0, 1]
    weights = load_file(str(here / "r" / "checkpoints/final/model.safetensors"))
    step2 = load_file(str(here / "r" / "checkpoints/step_0000002/model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert any(not torch.equal(weights[k], step2[k]) for k in weights)  # step 4 still trained


def test_case_count():
    assert len(SPECIAL_CASES) + len(RUN_DIR_CASES) + len(OUT_CASES) + 14 >= 45
