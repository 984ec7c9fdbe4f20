"""Pass 2: out = c^T G, one read of G and one write of d, into a given ``out``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .options import FP_FUSION

if triton.knobs.runtime.interpret:
    # Autotuning under the interpreter only burns time: one config, big tiles.
    _CONFIGS = [triton.Config({"BLOCK": 4096})]
else:
    # Each column is summed over the rows in the same order whatever BLOCK is, so
    # tuning never changes the bits.
    _CONFIGS = [
        triton.Config({"BLOCK": b}, num_warps=w) for b in (1024, 2048, 4096) for w in (4, 8)
    ]


@triton.autotune(configs=_CONFIGS, key=["NPAD"])
@triton.jit
def _combine_kernel(
    g_ptr,
    c_ptr,
    skip_ptr,
    out_ptr,
    n,
    d,
    out_stride,
    NPAD: tl.constexpr,
    ACC: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < d
    idx = tl.arange(0, NPAD)
    c = tl.load(c_ptr + idx, mask=idx < n, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK], dtype=ACC)
    # Advancing a pointer row by row: i * d would overflow int32 for large models.
    row_ptr = g_ptr + cols
    for i in range(n):
        # c_i picked out of registers: the coefficients are read once per program.
        c_i = tl.sum(tl.where(idx == i, c, 0.0), axis=0)
        x = tl.load(row_ptr, mask=ok, other=0.0)
        acc += c_i * x.to(ACC)
        row_ptr += d
    if HAS_SKIP:
        # A select, not a product: 0 * NaN from a non-finite G must not leak.
        acc = tl.where(tl.load(skip_ptr) != 0, 0.0, acc)
    tl.store(out_ptr + cols * out_stride, acc.to(out_ptr.dtype.element_ty), mask=ok)


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    """out[d] = coeffs @ grads (fp32 accumulation, fp64 for fp64); zeros when ``skip``."""
    n, d = grads.shape
    _combine_kernel[lambda meta: (triton.cdiv(d, meta["BLOCK"]),)](
        grads,
        coeffs,
        # A bool tensor viewed as bytes: Triton loads those without any i1 quirks.
        skip.view(torch.uint8) if skip is not None else coeffs,
        out,
        n,
        d,
        out.stride(0),
        NPAD=max(16, triton.next_power_of_2(n)),
        ACC=tl.float64 if grads.dtype == torch.float64 else tl.float32,
        HAS_SKIP=skip is not None,
        enable_fp_fusion=FP_FUSION,
    )
    return out
