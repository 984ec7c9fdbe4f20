"""The baselines MGDA and PCGrad from the Gram matrix, each in ONE Triton program.

Ports of methods.mgda_coefficients and methods.pcgrad_coefficients (read those
first; CAGrad is a flag of the CAME-Grad kernel in solve.py, being its Stage 1).
As there, the task weights act on the gradients: the kernels work on the
weighted Gram Mw = M w w^T and hand the coefficients back for the raw g_i.
Everything is float64 in registers ([NPAD, NPAD] tiles, zeros past n), the
work is fixed and the launch shape depends on n only (no host sync).

* MGDA reuses solve.py's dual solver with b = 0 and s = sqrt(max_i Mn_ii): the
  min-norm point of the convex hull, any s > 0 giving the same argmin.
* PCGrad keeps the [n, n] coefficient matrix A (row i = g_i') in registers and
  runs the n steps of all tasks at once: at step k, row i reads the column
  order[i, k] of Mw (gathered from global memory, the same lines every step)
  and changes only A[i, order[i, k]]. An order entry outside [0, n) is skipped
  (never read out of bounds), as is j == i.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import solver
from .options import FP_FUSION
from .solve import INF, KEEP_NAN, NAN, TINY, diag_max, solve_dual, solve_options


@triton.jit(do_not_specialize=["n"], do_not_specialize_on_alignment=["n"])
def _mgda_kernel(
    m_ptr,
    w_ptr,
    alpha_ptr,
    coeffs_ptr,
    gap_ptr,
    skipped_ptr,
    n,
    NPAD: tl.constexpr,
    L2: tl.constexpr,
    ITERS: tl.constexpr,
    POLISH: tl.constexpr,
):
    """methods.mgda_coefficients; L2 selects normalization "l2"."""
    rows = tl.arange(0, NPAD)
    cols = rows
    valid = rows < n
    both = valid[:, None] & valid[None, :]
    eye = rows[:, None] == cols[None, :]
    nf = n.to(tl.float64)
    M = tl.load(m_ptr + rows[:, None] * n + cols[None, :], mask=both, other=0.0).to(tl.float64)
    w = tl.load(w_ptr + rows, mask=valid, other=0.0).to(tl.float64)
    non_finite = both & ~(tl.abs(M) < INF)  # NaN fails the test too
    skipped = tl.sum(tl.sum(non_finite.to(tl.int32), axis=1), axis=0) > 0
    M = tl.where(skipped, 0.0, M)
    Mw = M * w[:, None] * w[None, :]

    one = tl.full([NPAD], 1.0, tl.float64)
    if L2:
        norms = tl.sqrt(tl.maximum(tl.sum(tl.where(eye, Mw, 0.0), axis=1), 0.0, KEEP_NAN))
        # A zero gradient stays zero (inv 0), not 0/0.
        inv = tl.where(norms > 0, one / tl.maximum(norms, TINY, KEEP_NAN), 0.0)
    else:
        inv = one
    inv = tl.where(valid, inv, 0.0)
    Mn = Mw * inv[:, None] * inv[None, :]
    scale = tl.maximum(diag_max(Mn, valid, rows, cols), TINY, KEEP_NAN)
    b = tl.zeros([NPAD], tl.float64)
    alpha = solve_dual(Mn, b, tl.sqrt(scale), valid, rows, cols, n, nf, ITERS, POLISH)
    alpha = tl.maximum(alpha, 0.0, KEEP_NAN)
    # A singular Mn can leave 1^T alpha off by ~1e-10: back onto the simplex.
    total = tl.sum(alpha, axis=0)
    ok = (total > 0) & (tl.abs(total) < INF)
    alpha = tl.where(ok, alpha / tl.maximum(total, TINY, KEEP_NAN), 1.0 / nf)
    alpha = tl.where(valid, alpha, 0.0)
    Ma = tl.sum(Mn * alpha[None, :], axis=1)
    # Frank-Wolfe gap, 0 exactly at the min-norm point.
    fw = tl.sum(alpha * Ma, axis=0) - tl.min(tl.where(valid, Ma, INF), axis=0)
    gap = tl.maximum(fw / scale, 0.0, KEEP_NAN)
    coeffs = w * inv * alpha

    out_ty = coeffs_ptr.dtype.element_ty
    tl.store(coeffs_ptr + rows, tl.where(skipped, 0.0, coeffs).to(out_ty), mask=valid)
    tl.store(alpha_ptr + rows, tl.where(skipped, NAN, alpha).to(out_ty), mask=valid)
    tl.store(gap_ptr, tl.where(skipped, NAN, gap).to(out_ty))
    tl.store(skipped_ptr, skipped.to(tl.uint8))


@triton.jit(do_not_specialize=["n"], do_not_specialize_on_alignment=["n"])
def _pcgrad_kernel(
    m_ptr,
    w_ptr,
    order_ptr,
    alpha_ptr,
    coeffs_ptr,
    gap_ptr,
    skipped_ptr,
    n,
    NPAD: tl.constexpr,
    MEAN: tl.constexpr,
):
    """methods.pcgrad_coefficients; MEAN selects reduction "mean"."""
    rows = tl.arange(0, NPAD)
    cols = rows
    valid = rows < n
    both = valid[:, None] & valid[None, :]
    M = tl.load(m_ptr + rows[:, None] * n + cols[None, :], mask=both, other=0.0).to(tl.float64)
    w = tl.load(w_ptr + rows, mask=valid, other=0.0).to(tl.float64)
    non_finite = both & ~(tl.abs(M) < INF)  # NaN fails the test too
    skipped = tl.sum(tl.sum(non_finite.to(tl.int32), axis=1), axis=0) > 0

    A = tl.where(both & (rows[:, None] == cols[None, :]), 1.0, 0.0).to(tl.float64)
    for k in range(n):
        j = tl.load(order_ptr + rows.to(tl.int64) * n + k, mask=valid, other=-1)
        use = valid & (j >= 0) & (j < n)
        j = tl.where(use, j, 0)  # a bad entry points nowhere near memory
        # col[i, l] = Mw[l, j_i] (the column, as torch's (A @ Mw)[i, j_i] reads).
        col = tl.load(
            m_ptr + cols[None, :] * n + j[:, None], mask=use[:, None] & valid[None, :], other=0.0
        ).to(tl.float64)
        col = tl.where(skipped, 0.0, col)
        w_j = tl.load(w_ptr + j, mask=use, other=0.0).to(tl.float64)
        col = col * w[None, :] * w_j[:, None]
        at_j = cols[None, :] == j[:, None]
        sq = tl.sum(tl.where(at_j, col, 0.0), axis=1)  # Mw[j_i, j_i]
        dots = tl.sum(A * col, axis=1)  # <g_i', g_j>
        project = (dots < 0) & use & (j != rows) & (sq > 0)
        step = tl.where(project, dots / tl.maximum(sq, TINY, KEEP_NAN), 0.0)
        A = A - tl.where(at_j, step[:, None], 0.0)  # row i changes at j_i only
    coeffs = tl.sum(A, axis=0)
    if MEAN:
        coeffs = coeffs / n.to(tl.float64)
    coeffs = w * coeffs

    out_ty = coeffs_ptr.dtype.element_ty
    tl.store(coeffs_ptr + rows, tl.where(skipped, 0.0, coeffs).to(out_ty), mask=valid)
    tl.store(alpha_ptr + rows, tl.full([NPAD], NAN, tl.float64).to(out_ty), mask=valid)
    tl.store(gap_ptr, tl.full((), NAN, tl.float64).to(out_ty))
    tl.store(skipped_ptr, skipped.to(tl.uint8))


def _outputs(gram: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = gram.shape[0]
    alpha = torch.empty(n, dtype=gram.dtype, device=gram.device)
    coeffs = torch.empty_like(alpha)
    gap = torch.empty((), dtype=gram.dtype, device=gram.device)
    skipped = torch.empty((), dtype=torch.uint8, device=gram.device)
    return alpha, coeffs, gap, skipped


def mgda_coefficients(
    gram: Tensor, weights: Tensor, normalization: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha [n], coeffs [n], gap [], skipped [] bool), as methods.mgda_coefficients.

    gram [n, n] float32/float64 contiguous, weights [n] in its dtype and on its
    device, normalization "none" or "l2"; the outputs are in gram's dtype.
    """
    if normalization not in ("none", "l2"):
        raise ValueError(f"normalization: expected 'none' or 'l2', got {normalization!r}")
    n = gram.shape[0]
    npad = max(16, triton.next_power_of_2(n))
    alpha, coeffs, gap, skipped = _outputs(gram)
    _mgda_kernel[(1,)](
        gram,
        weights,
        alpha,
        coeffs,
        gap,
        skipped,
        n,
        NPAD=npad,
        L2=normalization == "l2",
        ITERS=solver.DUAL_ITERS,
        POLISH=solver.POLISH_EVERY,
        # The dual solve holds as many [NPAD, NPAD] tiles as solve.py's kernel.
        **solve_options(npad),
    )
    return alpha, coeffs, gap, skipped.view(torch.bool)


def pcgrad_coefficients(
    gram: Tensor, weights: Tensor, order: Tensor, reduction: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha [n] NaN, coeffs [n], gap [] NaN, skipped [] bool), as methods.pcgrad_coefficients.

    gram [n, n] float32/float64 contiguous, weights [n] in its dtype and on its
    device, order [n, n] int64 on its device (row i: the order in which task i
    visits the others, methods.pcgrad_order), reduction "sum" or "mean"; the
    outputs are in gram's dtype.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    n = gram.shape[0]
    if order.shape != (n, n) or order.dtype != torch.int64:
        raise ValueError(f"order: expected [{n}, {n}] int64, got {list(order.shape)} {order.dtype}")
    npad = max(16, triton.next_power_of_2(n))
    alpha, coeffs, gap, skipped = _outputs(gram)
    _pcgrad_kernel[(1,)](
        gram,
        weights,
        order.to(gram.device, non_blocking=True).contiguous(),
        alpha,
        coeffs,
        gap,
        skipped,
        n,
        NPAD=npad,
        MEAN=reduction == "mean",
        # Three [NPAD, NPAD] float64 tiles (A, the gathered column, a temporary).
        num_warps=max(4, npad // 8),
        enable_fp_fusion=FP_FUSION,
    )
    return alpha, coeffs, gap, skipped.view(torch.bool)
