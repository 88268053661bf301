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


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_imports(script, monkeypatch):
    assert "__main__" in script.read_text(), f"{script.name} runs on import"
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/NAME.py` sees it
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
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
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("_bench_family", BENCHMARKS / "trm_profile.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
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
