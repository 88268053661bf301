"""Every benchmark script imports: a renamed or moved name in the package breaks it here, in
CI, not minutes into a GPU session. Scripts run only under ``__main__``, so importing them
runs nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")


def load_script(script: Path, monkeypatch):
    """A benchmark script imported as `python benchmarks/NAME.py` sees its folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_imports(script, monkeypatch):
    assert "__main__" in script.read_text(), f"{script.name} runs on import"
    module = load_script(script, monkeypatch)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def test_gpu_background_brings_runs_back_without_checkpoints(tmp_path):
    """`wait` packs runs/gpu for the trip back: a finished run's halting.json and metrics come
    along, its checkpoints/ folder (weights, or what is left of it) does not."""
    import subprocess
    import tarfile

    run = tmp_path / "runs" / "gpu" / "grid" / "base" / "seed0"
    (run / "checkpoints" / "final").mkdir(parents=True)
    (run / "checkpoints" / "final" / "model.safetensors").write_bytes(b"w")
    (run / "checkpoints" / "final" / "state.json").write_text("{}")
    (run / "halting.json").write_text("{}")
    (run / "metrics.jsonl").write_text("{}\n")
    out = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_background.sh"), "wait", "0", str(tmp_path / "back")],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "no driver started here" in out
    with tarfile.open(tmp_path / "back" / "gpu.tgz") as tar:
        names = set(tar.getnames())
    assert "runs/gpu/grid/base/seed0/halting.json" in names
    assert "runs/gpu/grid/base/seed0/metrics.jsonl" in names
    assert not [n for n in names if "checkpoints" in n]


def test_trm_profile_sorts_kernels_seen_on_an_h100_into_families(monkeypatch):
    """Kernel names from the maze step's profile (H100, torch 2.11): cuDNN's flash attention is
    attention although its name also says 'wgmma', a fused Triton kernel that feeds attention is
    Triton's, cuBLAS's nvjet GEMMs are GEMMs."""
    module = load_script(BENCHMARKS / "trm_profile.py", monkeypatch)
    names = {
        "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN": "gemm",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1": (
            "attention"
        ),
        "triton_poi_fused__unsafe_view_mul_silu_split_6": "triton",
        "triton_poi_fused__scaled_dot_product_cudnn_attention__to_copy__unsafe_view_add_c": (
            "triton"
        ),
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>": (
            "other"
        ),
    }
    assert {n: module.family(n) for n in names} == names


def test_gpu_setup_records_the_commit_the_sources_come_from(tmp_path):
    """`gpu_setup.sh commit` writes .carry/commit (hash, dirty flag) for the GPU machine, whose
    copy of the sources has no .git (sourcing the script there exports it for meta.json)."""
    import os
    import subprocess

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    script = BENCHMARKS / "gpu_setup.sh"

    def sh(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    sh("git", "init", "-q")
    (tmp_path / "f.txt").write_text("a")
    sh("git", "add", "f.txt")
    sh("git", "commit", "-q", "-m", "x")
    head = sh("git", "rev-parse", "HEAD")
    sh("bash", str(script), "commit")
    assert (tmp_path / ".carry" / "commit").read_text().split() == [head, "0"]
    (tmp_path / "f.txt").write_text("b")  # a tracked file changed: dirty
    sh("bash", str(script), "commit")
    assert (tmp_path / ".carry" / "commit").read_text().split() == [head, "1"]


def test_collect_runs_copies_finished_runs_without_weights_or_machine_paths(tmp_path, monkeypatch):
    import json

    module = load_script(BENCHMARKS / "collect_runs.py", monkeypatch)
    src, dest = tmp_path / "back", tmp_path / "results"
    plan = {"name": "g", "variants": {"a": [], "b": []}, "seeds": [0], "budget": {}}
    src.mkdir()
    (src / "ablation.json").write_text(json.dumps(plan))
    for key, finished in (("a/seed0", True), ("b/seed0", False)):
        run = src / key
        (run / "checkpoints" / "final").mkdir(parents=True)
        (run / "checkpoints" / "final" / "model.safetensors").write_bytes(b"w")
        (run / "config.yaml").write_text("seed: 0\n")
        (run / ".lock").write_text("")
        argv = [str(tmp_path / "site" / "ponderkit" / "__main__.py"), "ablate", "x.yaml"]
        (run / "meta.json").write_text(json.dumps({"command": argv}))
        if finished:
            (run / "halting.json").write_text("{}")
    done = module.collect(src, dest)
    assert done == {"copied": ["a/seed0"], "already there": [], "unfinished": ["b/seed0"]}
    assert sorted(p.name for p in (dest / "a" / "seed0").iterdir()) == [
        "config.yaml", "halting.json", "meta.json"
    ]  # fmt: skip
    meta = json.loads((dest / "a" / "seed0" / "meta.json").read_text())
    assert meta["command"] == ["ponderkit", "ablate", "x.yaml"]
    assert not (dest / "b").exists() and (dest / "ablation.json").is_file()
    # again: nothing replaced; another ablation's runs are refused
    assert module.collect(src, dest)["already there"] == ["a/seed0"]
    (dest / "ablation.json").write_text(json.dumps({**plan, "seeds": [0, 1]}))
    with pytest.raises(SystemExit, match="seeds differs"):
        module.collect(src, dest)
