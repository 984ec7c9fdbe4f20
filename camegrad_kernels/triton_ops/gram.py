"""Pass 1: the Gram matrix M = G G^T, a deterministic two-kernel blocked reduction.

M is float64 for every input dtype: tiles are converted to fp64 (exactly) and
multiplied by an fp64 ``tl.dot`` (``out_dtype`` given explicitly: triton <= 3.7
defaults it to fp32 and rejects an fp64 accumulator otherwise). Products of two
fp16/bf16/fp32 values are exact in fp64, so M is accurate to ~eps64 |g_i| |g_j|
(an fp32 accumulator's ~eps32 |g_i| |g_j| decides the solver's answer when task
norms differ by 1e6x and more). On GPUs with a low fp64 rate (A40-class, 1/64
of fp32) the plan is compensated fp32 instead, as in csrc/cuda/gram.cu.

Each program of the first kernel reduces one fixed slice of the d columns into an
n x n partial held in registers; the second kernel sums the partials in a fixed
order. No atomics, and the split into slices depends only on d (never on the
GPU) and the tile width only on n, so the same input gives the same bits on
every run; the autotuner only picks warps and pipeline stages.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dtypes import gram_dtype
from .options import FP_FUSION

# The register tiles are [NPAD, NPAD] and [NPAD, BLOCK_D]: beyond this n the
# kernel would spill (it fits at NPAD = 128 only with 8 warps, _configs_that_fit),
# and the torch pass is the better choice (backends/triton.py MAX_TASKS).
MAX_N = 128
# Columns per program are a multiple of GRAIN, so every BLOCK_D divides them.
GRAIN = 512
MAX_PROGRAMS = 1024
REDUCE_BLOCK_P, REDUCE_BLOCK_E = 16, 256


def split(d: int) -> tuple[int, int]:
    """(programs, columns per program): at least 2 grains each, at most MAX_PROGRAMS."""
    chunk = max(triton.cdiv(triton.cdiv(d, MAX_PROGRAMS), GRAIN), 2) * GRAIN
    return max(triton.cdiv(d, chunk), 1), chunk


def block_d(npad: int) -> int:
    """Columns per tile: fixed per NPAD (not tuned) so that the summation order,
    hence the bits, never depends on what the autotuner picked in this process."""
    if triton.knobs.runtime.interpret:
        return GRAIN  # fewest interpreted steps
    return max(32, 4096 // npad)  # an [NPAD, BLOCK_D] fp64 tile of 32 KiB


# Autotuning under the interpreter only burns time: one config there.
_CONFIGS = [triton.Config({})]
if not triton.knobs.runtime.interpret:
    _CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]


def _configs_that_fit(configs, named_args, **kwargs):
    """At NPAD = 128 the [128, 128] fp64 accumulator (64 KiB) fits in registers only
    with 8 warps (128 values a thread at 4 warps spilled 2-9 KB a thread) and 2
    pipeline stages (more stages spilled more). Measured by .ci/check_triton_aot.py:
    what is left, at every NPAD, is ptxas keeping a few registers of its unrolled
    column loop in local memory in some configs (8-152 B a thread, depending on
    the triton/ptxas release), within that check's 256 B budget for this kernel."""
    npad = kwargs.get("NPAD", named_args.get("NPAD"))
    if npad is not None and npad >= 128:
        return [c for c in configs if c.num_warps == 8 and c.num_stages == 2] or configs
    return configs


@triton.autotune(
    configs=_CONFIGS, key=["NPAD"], prune_configs_by={"early_config_prune": _configs_that_fit}
)
@triton.jit
def _gram_partial_kernel(
    g_ptr, ws_ptr, n, d, chunk, NPAD: tl.constexpr, BLOCK_D: tl.constexpr, LOW: tl.constexpr
):
    pid = tl.program_id(0)
    rows = tl.arange(0, NPAD)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n
    # int64: n * d passes 2^31 for the large models this is meant for.
    row_off = rows.to(tl.int64)[:, None] * d
    start = pid.to(tl.int64) * chunk
    acc = tl.zeros([NPAD, NPAD], dtype=tl.float64)
    for k in range(0, chunk, BLOCK_D):
        c = start + k + cols
        x = tl.load(
            g_ptr + row_off + c[None, :], mask=row_ok[:, None] & (c[None, :] < d), other=0.0
        )
        # Exact conversions (fp16/bf16/fp32 through fp32: the interpreter reads
        # bf16 as raw integers otherwise), then an fp64 dot, fp64 accumulator.
        if LOW:
            x = x.to(tl.float32)
        x = x.to(tl.float64)
        if g_ptr.dtype.element_ty.primitive_bitwidth == 16:
            # A sum over a unit axis (x itself; -0 becomes +0, which no product
            # sum sees): it keeps the compiler from moving the change to the dot's
            # operand layout above the conversions, which triton 3.6 and 3.7.1 then
            # fail to compile on sm_80/sm_90 ("fp64 don't support largeK MMA": an
            # operand layout picked for the 16-bit load). .ci/check_triton_aot.py.
            x = tl.sum(tl.reshape(x, (NPAD, BLOCK_D, 1)), axis=2)
        acc = tl.dot(x, tl.trans(x), acc, input_precision="ieee", out_dtype=tl.float64)
    ij = rows[:, None] * n + rows[None, :]
    tl.store(ws_ptr + pid * n * n + ij, acc, mask=row_ok[:, None] & row_ok[None, :])


@triton.jit
def _gram_reduce_kernel(ws_ptr, m_ptr, n, programs, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    ok = e < n * n
    i, j = e // n, e % n
    # Read the lower triangle for both (i, j) and (j, i): M comes out exactly symmetric.
    src = tl.maximum(i, j) * n + tl.minimum(i, j)
    acc = tl.zeros([BLOCK_E], dtype=m_ptr.dtype.element_ty)
    for p0 in range(0, programs, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        part = tl.load(
            ws_ptr + p[:, None] * n * n + src[None, :],
            mask=(p[:, None] < programs) & ok[None, :],
            other=0.0,
        )
        acc += tl.sum(part, axis=0)
    tl.store(m_ptr + e, acc, mask=ok)


def gram(grads: Tensor) -> Tensor:
    """grads [n, d] contiguous fp16/bf16/fp32/fp64 -> M [n, n] float64."""
    n, d = grads.shape
    acc = gram_dtype(grads.dtype)
    programs, chunk = split(d)
    npad = max(16, triton.next_power_of_2(n))
    ws = torch.empty((programs, n, n), dtype=acc, device=grads.device)
    _gram_partial_kernel[(programs,)](
        grads,
        ws,
        n,
        d,
        chunk,
        NPAD=npad,
        BLOCK_D=block_d(npad),
        LOW=grads.dtype != torch.float64,
        enable_fp_fusion=FP_FUSION,
    )
    M = torch.empty((n, n), dtype=acc, device=grads.device)
    grid = (triton.cdiv(n * n, REDUCE_BLOCK_E),)
    _gram_reduce_kernel[grid](
        ws,
        M,
        n,
        programs,
        BLOCK_P=REDUCE_BLOCK_P,
        BLOCK_E=REDUCE_BLOCK_E,
        enable_fp_fusion=FP_FUSION,
    )
    return M
