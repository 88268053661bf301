"""Every Triton kernel compiles to a cubin for an H100 (sm_90) on this CPU-only machine:
catches what Triton's interpreter lets through (globals, constexpr misuse, type errors in
a branch), before a GPU run finds it."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton", reason="needs Triton (a dev dependency)")

from ponderkit import kernels  # noqa: E402
from ponderkit.plugins.dynmoe import dispatch_kernels  # noqa: E402
from ponderkit.plugins.routing import cosine_kernel  # noqa: E402

BF16, F32, I32, I8, BOOL = "*bf16", "*fp32", "*i32", "*i8", "*i1"

# kernel -> (pointer types by argument, scalar types, constexpr variants)
CASES = {
    "swiglu_fwd": (
        kernels._swiglu_fwd,
        {"gu_ptr": BF16, "h_ptr": BF16, "rows_ptr": I32},
        [{"HAS_ROWS": True, "BLOCK": 1024}, {"HAS_ROWS": False, "BLOCK": 1024}],
    ),
    "swiglu_bwd": (
        kernels._swiglu_bwd,
        {"gu_ptr": BF16, "dh_ptr": BF16, "dgu_ptr": BF16, "rows_ptr": I32},
        [{"HAS_ROWS": True, "BLOCK": 1024}, {"HAS_ROWS": False, "BLOCK": 1024}],
    ),
    "plan_counts": (
        dispatch_kernels._plan_counts,
        {"mask_ptr": BOOL, "counts_ptr": I32},
        [{"TOKENS": 256, "BLOCK_E": 16}, {"TOKENS": 32, "BLOCK_E": 128}],
    ),
    "plan_scan": (
        dispatch_kernels._plan_scan,
        {"counts_ptr": I32, "base_ptr": I32, "offsets_ptr": I32},
        [{"CHUNK": 128, "BLOCK_E": 16}, {"CHUNK": 1, "BLOCK_E": 128}],
    ),
    "plan_write": (
        dispatch_kernels._plan_write,
        {
            "mask_ptr": BOOL,
            "base_ptr": I32,
            "pos_ptr": I32,
            "rows_ptr": I32,
            "experts_ptr": I32,
            "k_ptr": I32,
        },
        [{"TOKENS": 256, "BLOCK_E": 16}, {"TOKENS": 32, "BLOCK_E": 128}],
    ),
    "scatter_rows": (
        dispatch_kernels._scatter_rows,
        {"x_ptr": BF16, "rows_ptr": I32, "k_ptr": I32, "xs_ptr": BF16},
        [{"TOKENS": 2, "BLOCK": 512}, {"TOKENS": 16, "BLOCK": 1024}],
    ),
    "gather_sum": (
        dispatch_kernels._gather_sum,
        {
            "y_ptr": BF16,
            "rows_ptr": I32,
            "experts_ptr": I32,
            "k_ptr": I32,
            "w_ptr": F32,
            "out_ptr": BF16,
        },
        [
            {"HAS_W": True, "TOKENS": 2, "BLOCK": 512},
            {"HAS_W": False, "TOKENS": 8, "BLOCK": 1024},
        ],
    ),
    "combine_backward": (
        dispatch_kernels._combine_backward,
        {
            "g_ptr": BF16,
            "y_ptr": BF16,
            "rows_ptr": I32,
            "experts_ptr": I32,
            "k_ptr": I32,
            "w_ptr": F32,
            "dy_ptr": BF16,
            "dw_ptr": F32,
        },
        [
            {"TOKENS": 2, "BLOCK": 2048, "BLOCK_E": 16},
            {"TOKENS": 1, "BLOCK": 512, "BLOCK_E": 128},
        ],
    ),
    "cosine_route_fwd": (
        cosine_kernel._route_fwd,
        {"x_ptr": BF16, "en_ptr": BOOL, "m_ptr": I8, "counts_ptr": I32, "g_ptr": BF16},
        [
            {
                "MIN_K": 1,
                "TOPK": True,
                "SOFTMAX": False,
                "BLOCK_N": 64,
                "BLOCK_D": 32,
                "BLOCK_E": 16,
                "PRECISION": "tf32x3",
            },
            {
                "MIN_K": 2,
                "TOPK": False,
                "SOFTMAX": True,
                "BLOCK_N": 32,
                "BLOCK_D": 32,
                "BLOCK_E": 64,
                "PRECISION": "ieee",
            },
        ],
    ),
    "cosine_route_bwd": (
        cosine_kernel._route_bwd,
        {"m_ptr": I8, "en_ptr": BOOL, "x_ptr": BF16, "dx_ptr": BF16, "ddot_ptr": BF16},
        [
            {
                "HAS_GC": True,
                "HAS_GK": True,
                "SOFTMAX": True,
                "BLOCK_N": 64,
                "BLOCK_D": 64,
                "BLOCK_E": 16,
                "PRECISION": "tf32",
            },
            {
                "HAS_GC": False,
                "HAS_GK": False,
                "SOFTMAX": False,
                "BLOCK_N": 32,
                "BLOCK_D": 32,
                "BLOCK_E": 128,
                "PRECISION": "ieee",
            },
        ],
    ),
    "route_stats": (
        cosine_kernel._route_stats,
        {"counts_ptr": I32, "en_ptr": BOOL},
        [{"BLOCK_E": 16}, {"BLOCK_E": 128}],
    ),
    "prototypes_fwd": (
        cosine_kernel._prototypes_fwd,
        {"w_ptr": BF16},
        [
            {"SDL": True, "BLOCK_D": 256, "BLOCK_E": 16},
            {"SDL": False, "BLOCK_D": 32, "BLOCK_E": 128},
            {"SDL": True, "BLOCK_D": 32, "BLOCK_E": 128},
        ],
    ),
    "prototypes_bwd": (
        cosine_kernel._prototypes_bwd,
        {"w_ptr": BF16, "dw_ptr": BF16, "dthreshold_ptr": BF16},
        [
            {"SDL_GRAD": True, "BLOCK_D": 256, "BLOCK_E": 16},
            {"SDL_GRAD": False, "BLOCK_D": 64, "BLOCK_E": 64},
            {"SDL_GRAD": True, "BLOCK_D": 32, "BLOCK_E": 128},
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_compiles_for_sm90(name):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, pointers, variants = CASES[name]
    for constexprs in variants:
        signature = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                signature[arg] = pointers.get(arg, F32)
            else:  # sizes are ints, the rest (tau) floats
                signature[arg] = "i32" if arg.isupper() else "fp32"
        assert set(constexprs) <= set(fn.arg_names), f"{name}: unknown {constexprs}"
        where = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
        src = ASTSource(fn=fn, signature=signature, constexprs=where)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], f"{name} {constexprs}: no cubin"
