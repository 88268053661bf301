"""FLOP counting: formulas torch's FlopCounterMode lacks (CPU attention, grouped GEMMs)."""

from __future__ import annotations

from typing import Any


def extra_flop_formulas() -> dict[Any, Any]:
    """Custom ``FlopCounterMode`` formulas for ops it does not count."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    extra: dict[Any, Any] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *_, out_shape=None, **__: fc.sdpa_flop_count(q, k, v)
        )
        extra[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *_, out_shape=None, **__: fc.sdpa_backward_flop_count(g, q, k, v)
        )
    if hasattr(aten, "_grouped_mm"):
        extra[aten._grouped_mm] = _grouped_mm_flop
    return extra


def _grouped_mm_flop(a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Rows of ``a`` meet one group's matrix each: (N, K) x (E, K, M) costs 2*N*K*M; the
    weight gradient (K, N) x (N, M) -> (E, K, M) costs 2*K*N*M; batched 3-D x 3-D as bmm."""
    if len(a) == 2 and len(b) == 3:
        return 2 * a[0] * a[1] * b[2]
    if len(a) == 2 and len(b) == 2:
        return 2 * a[0] * a[1] * b[1]
    if len(a) == 3 and len(b) == 3:
        return 2 * a[0] * a[1] * a[2] * b[2]
    return 2 * a[-2] * a[-1] * b[-1]
