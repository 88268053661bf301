"""Ablation files and grids: expansion, validation, budgets, skip and resume, parallel jobs."""

from __future__ import annotations

import json
import textwrap

import pytest
from ponderkit.app.cli import main
from ponderkit.contract.errors import ConfigError
from ponderkit.engine.flops import Replica
from ponderkit.lab import grid as ablation_run
from ponderkit.lab.ablation import load_ablation
from ponderkit.plugins.schedules.supervised import Supervised

TINY = "overrides: {train.log_every: 5, train.eval_every: 10, train.checkpoint_every: 10}\n"


@pytest.fixture
def grid(write, sort_yaml):
    """write_grid(text) -> path of an ablation file next to the tiny sort experiment."""

    def _grid(text: str, name: str = "abl.yaml"):
        return write(name, f"base: {sort_yaml.name}\n" + textwrap.dedent(text).lstrip("\n"))

    return _grid


def steps_of(run_dir) -> list[int]:
    return [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_grid_expands_variants_times_seeds_with_overrides(grid, registry):
    path = grid(
        """
        overrides: {model.d_model: 16}
        variants:
          one_layer: {model.recursion.layers: 1}
          heads: ["model.recursion.block.mixer.heads=2", "optimizer.lr=0.01"]
          swapped: {model.recursion.block.ffn: {name: none}}
        seeds: 3
        budget: {steps: 7}
        """
    )
    ablation = load_ablation(path, registry=registry)
    assert [v.name for v in ablation.variants] == ["base", "one_layer", "heads", "swapped"]
    runs = ablation.runs()
    assert [r.key for r in runs[:3]] == ["base/seed0", "base/seed1", "base/seed2"]
    assert len(runs) == 12 and {r.seed for r in runs} == {0, 1, 2}
    by_key = {r.key: r.config for r in runs}
    assert all(c.train.steps == 7 and c.model.d_model == 16 for c in by_key.values())
    assert by_key["base/seed1"].model.recursion.config.layers == 2
    assert by_key["one_layer/seed2"].model.recursion.config.layers == 1
    assert by_key["heads/seed0"].model.recursion.config.block.config.mixer.config.heads == 2
    assert by_key["heads/seed0"].optimizer.config.lr == 0.01
    assert by_key["swapped/seed0"].model.recursion.config.block.config.ffn.name == "none"
    assert by_key["one_layer/seed2"].seed == 2


def test_named_baseline_replaces_the_implicit_base(grid, registry):
    path = grid("baseline: ref\nvariants:\n  other: {model.d_model: 16}\n  ref: {}\nseeds: [4]\n")
    ablation = load_ablation(path, registry=registry)
    assert [v.name for v in ablation.variants] == ["ref", "other"]  # baseline first
    assert [r.key for r in ablation.runs()] == ["ref/seed4", "other/seed4"]


def test_every_error_of_every_variant_at_once(grid, registry):
    path = grid(
        """
        variant: {}
        variants:
          a: {model.recursion.layerz: 1}
          b: ["model.d_model=wide"]
          c:
            model.recursion:
              name: stacked
              block: {name: post_norm, mixer: {name: atention}}
          d: {train.steps: 5}
        budget: {steps: 10}
        """
    )
    with pytest.raises(ConfigError) as info:
        load_ablation(path, registry=registry)
    lines = [str(i) for i in info.value.issues]
    name = str(path)
    expected = [
        f"{name}:2: variant: unknown key (did you mean 'variants'?)",
        f"{name}:10: variants.d: 'train.steps=5' sets what the budget (steps) fixes",
        f"{name}:4: variants.a: model.recursion.layerz: unknown key (did you mean 'layers'?)",
        f"{name}:5: variants.b: model.d_model: expected int, got str 'wide'",
        f"{name}:9: variants.c: model.recursion.block.mixer.name: unknown mixer 'atention'; "
        "did you mean 'attention'?",
    ]
    assert len(lines) == len(expected)
    for want, got in zip(expected, lines, strict=True):
        assert got.startswith(want), (want, got)


def test_an_error_in_the_base_is_reported_once(write, registry):
    base = write("base.yaml", "task: {name: sort, lenght: 4}\nmodel: {recursion: stacked}\n")
    path = write("abl.yaml", f"base: {base.name}\nvariants: {{a: {{}}, b: {{}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_ablation(path, registry=registry)
    assert [str(i) for i in info.value.issues] == [
        f"{base}:1: task.lenght: unknown key (did you mean 'length'?)"
    ]


def test_unknown_components_are_reported_cleanly(grid, capsys):
    path = grid("variants:\n  adr: {model.recursion.block.mixer: {name: dynsihaa}}\n")
    assert main(["ablate", str(path), "--out", str(path.parent / "out")]) == 2
    err = capsys.readouterr().err
    want = "variants.adr: model.recursion.block.mixer.name: unknown mixer 'dynsihaa'"
    assert f"{want}; did you mean 'dynsiha'" in err
    assert "Traceback" not in err and not (path.parent / "out").exists()


def test_budgets(grid, registry, tmp_path, monkeypatch):
    timed = load_ablation(grid("budget: {time_s: 30}\n", "t.yaml"), registry=registry)
    assert timed.runs()[0].config.train.max_time_s == 30.0
    both = grid("budget: {steps: 3, flops: 1.0e9}\n", "both.yaml")
    with pytest.raises(ConfigError, match="set one of steps, epochs, time_s, flops"):
        load_ablation(both, registry=registry)

    flops = load_ablation(
        grid("variants: {small: {model.d_model: 16}}\nbudget: {flops: 1.0e9}\n", "f.yaml"),
        registry=registry,
    )
    runs = ablation_run.prepare(flops, tmp_path / "out")
    assert {(r.config.train.flops, r.config.train.steps, r.config.train.epochs) for r in runs} == {
        (1.0e9, None, None)
    }
    assert "1e+09 training FLOPs spent per run" in flops.plan()["budget_text"]


def test_skip_finished_and_resume_interrupted_runs(grid, monkeypatch, capsys):
    path = grid(
        "variants: {one_layer: {model.recursion.layers: 1}}\nseeds: [0, 1]\n"
        "budget: {steps: 20}\n" + TINY
    )
    out = path.parent / "out"
    real = Supervised.train_step
    calls = {"n": 0}

    def dying(self, *args):
        # the FLOPs count's replay of a step, or the one-step check before anything starts
        # (a trainer without a run directory)
        if isinstance(args[-1], Replica) or args[-1].run_dir is None:
            return real(self, *args)
        calls["n"] += 1
        if calls["n"] == 20 + 20 + 16:  # the third run, during step 16
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Supervised, "train_step", dying)
    assert main(["ablate", str(path), "--out", str(out)]) == 130
    first = out / "base" / "seed0" / "metrics.jsonl"
    stamp, text = first.stat().st_mtime_ns, first.read_text()
    broken = out / "one_layer" / "seed0"
    assert steps_of(broken) == [5, 10, 15] and not (broken / "halting.json").exists()
    assert "interrupted one_layer/seed0" in capsys.readouterr().out

    calls["n"] = 0

    def counting(self, *args):
        calls["n"] += not isinstance(args[-1], Replica) and args[-1].run_dir is not None
        return real(self, *args)

    monkeypatch.setattr(Supervised, "train_step", counting)
    assert main(["ablate", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert calls["n"] == 10 + 20  # the rest of the broken run, then the last run
    assert "skip     base/seed0" in printed and "resume   one_layer/seed0 (from step 10)" in printed
    assert first.stat().st_mtime_ns == stamp and first.read_text() == text
    for run in ("base/seed0", "base/seed1", "one_layer/seed0", "one_layer/seed1"):
        assert steps_of(out / run) == [5, 10, 15, 20], run  # nothing lost, nothing twice
        assert (out / run / "halting.json").exists()
    assert (out / "report.md").exists()

    def untrained(self, *args):  # only the one-step check, which has no run directory
        assert args[-1].run_dir is None, "a third ablate trained a finished run again"
        return real(self, *args)

    monkeypatch.setattr(Supervised, "train_step", untrained)  # a third run trains nothing
    assert main(["ablate", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("skip ") == 4


def test_a_changed_ablation_is_refused_before_anything_runs(grid, capsys):
    path = grid("budget: {steps: 10}\n" + TINY)
    out = path.parent / "out"
    assert main(["ablate", str(path), "--out", str(out)]) == 0
    path.write_text(path.read_text().replace("steps: 10", "steps: 20"))
    capsys.readouterr()
    assert main(["ablate", str(path), "--out", str(out)]) == 2
    assert "base/seed0" in capsys.readouterr().err and steps_of(out / "base/seed0") == [5, 10]


def test_parallel_jobs_run_as_subprocesses(grid, capsys, monkeypatch):
    path = grid("seeds: [0, 1]\nbudget: {steps: 10}\n" + TINY)
    out = path.parent / "out"
    # workers start with -P: a folder named ponderkit in the working directory is not imported
    shadow = path.parent / "ponderkit"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadow package was imported')\n")
    (shadow / "__main__.py").write_text("raise SystemExit('the shadow package ran')\n")
    monkeypatch.chdir(path.parent)
    assert main(["ablate", str(path), "--out", str(out), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("OMP_NUM_THREADS=") == 2 and "finished base/seed1" in printed
    for seed in (0, 1):
        assert steps_of(out / f"base/seed{seed}") == [5, 10]
        assert (out / "logs" / f"base-seed{seed}.log").exists()


def test_workers_are_not_shadowed_by_a_ponderkit_folder_in_the_working_directory(tmp_path):
    """`ablate --jobs` workers start from the user's directory; one holding a folder named
    `ponderkit` must not replace the installed package (all runs failed before)."""
    import subprocess
    from pathlib import Path

    shadow = tmp_path / "ponderkit"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadow package was imported')\n")
    (shadow / "__main__.py").write_text("raise SystemExit(3)\n")
    command = ablation_run.worker_command(Path("abl.yaml"), Path("out"), [])
    prefix = command[: command.index("ponderkit") + 1]  # python -P -m ponderkit
    result = subprocess.run([*prefix, "list", "task"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "sort" in result.stdout


def test_differences_outside_the_factor_are_confounds(grid, registry):
    """A planted optimizer difference in a depth ablation is found and nothing else is."""
    text = """
        factor: model.recursion
        variants:
          deeper: {model.recursion.layers: 3}
          deeper_lr: {model.recursion.layers: 3, optimizer.lr: 0.01}
          attention_swap: {model.recursion.block.mixer: {name: attention, heads: 2}}
        budget: {steps: 5}
        """
    plan = load_ablation(grid(text), registry=registry).plan()
    assert plan["factor"] == ["model.recursion"]
    assert plan["differences"]["deeper"] == {"model.recursion.layers": [2, 3]}
    assert plan["differences"]["deeper_lr"] == {
        "model.recursion.layers": [2, 3],
        "optimizer.lr": [0.003, 0.01],
    }
    assert plan["differences"]["attention_swap"] == {"model.recursion.block.mixer.heads": [4, 2]}
    assert plan["confounds"] == {"deeper": [], "deeper_lr": ["optimizer.lr"], "attention_swap": []}

    strict = grid(text + "confounds: error\n", "strict.yaml")
    with pytest.raises(ConfigError) as err:
        load_ablation(strict, registry=registry)
    (issue,) = err.value.issues
    assert issue.path == ("variants", "deeper_lr") and "optimizer.lr" in issue.message


def test_the_report_lists_the_arms_and_flags_confounds(grid, registry, tmp_path, capsys):
    path = grid(
        """
        factor: model.recursion
        variants:
          deeper_lr: {model.recursion.layers: 3, optimizer.lr: 0.01}
        budget: {steps: 2}
        """
    )
    out = tmp_path / "out"
    assert main(["ablate", str(path), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Fair arms" in report and "**1 confound(s)**" in report
    assert "| `deeper_lr` | `optimizer.lr` | `0.003` | `0.01` | **confound** |" in report
    assert "| `deeper_lr` | `model.recursion.layers` | `2` | `3` | factor |" in report


def test_nearest_names_arms_of_the_grid(grid, registry):
    """``nearest:`` accepts a name or a list; unknown names and an arm named as its own sibling
    are refused where they are written."""
    head = """
        variants:
          wide: {model.d_model: 16}
          narrow: {model.d_model: 8}
        budget: {steps: 2}
        """
    ok = load_ablation(grid(head + "nearest: {wide: narrow, narrow: [wide, base]}\n"),
                       registry=registry, build=False)  # fmt: skip
    assert ok.nearest == {"wide": ["narrow"], "narrow": ["wide", "base"]}
    assert ok.plan()["nearest"] == ok.nearest
    bad = grid(head + "nearest: {wide: narow, narrow: [narrow], wdie: base}\n", name="bad.yaml")
    with pytest.raises(ConfigError) as exc:
        load_ablation(bad, registry=registry, build=False)
    text = str(exc.value)
    assert "nearest.wide: no variant named 'narow' (did you mean 'narrow'?)" in text
    assert "nearest.narrow.0: an arm is not its own sibling" in text
    assert "nearest: no variant named 'wdie'" in text
