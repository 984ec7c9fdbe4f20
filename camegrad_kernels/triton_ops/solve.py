"""The solve: CAME-Grad coefficients from the Gram matrix in ONE Triton program.

A step-for-step port of solver.camegrad_coefficients (read that first): M sits in
registers as an [NPAD, NPAD] float64 tile (solver.work_dtype), entries past n are
zero and every vector keeps zeros there. Fixed work, no host sync: the launch
shape depends on n only. Two implementation choices differ from the torch code
but compute the same quantities: the (diagonally weighted) simplex projection
counts, for each entry, the entries whose breakpoint is not below its own
(O(n^2), no sort), and the face solve is Gauss-Jordan
elimination with partial pivoting (the pivots LU would pick), an exactly zero
pivot marking the face invalid as a failed ``solve_ex`` does.

The same kernel serves CAGrad (methods.cagrad_coefficients, which is CAME-Grad's
Stage 1 on the weighted Gram): with CAGRAD set, M is replaced by M w w^T on load
(before the finiteness test, as the torch code tests the weighted Gram), the
stages must be RECTIFY only (the weights then play no part in the solve, exactly
as the all-ones weights of the torch code), and the stored coefficients are
w a_u / factor.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .. import solver
from .options import FP_FUSION

# The one-program solves (this module and methods.py) hold [NPAD, NPAD] float64
# tiles in registers, and Triton's layouts replicate each row vector over the 32
# lanes of a warp. Measured by .ci/check_triton_aot.py (sm_80/86/90, triton
# 3.6-3.9): no spill up to NPAD = 32; at NPAD = 64 (16 warps, 128 registers a
# thread) the dual solves (this kernel, MGDA) spill ~0.7-1.4 KB a thread, within
# that check's 2 KiB budget (PCGrad: none). At NPAD = 128 they spilled ~30 KB a
# thread, so for n > 64 the backend registry (backends/triton.py MAX_TASKS) runs
# the torch solve (the same algorithm, on the device, no host sync), as it does
# for the CUDA solve above its kSolveMaxN = 64.
SOLVE_MAX_N = 64


def solve_options(npad: int) -> dict:
    """Launch options of a one-program solve with [NPAD, NPAD] float64 tiles.

    Warps: 4, 8 and 16 for NPAD 16, 32 and 64 (8 values a thread per tile at
    64). maxnreg: at 16 warps ptxas keeps to 64 registers a thread (half of what
    one program of 512 threads may use) and spills more; 128 moves ~20% of the
    NPAD = 64 spill back into registers (.ci/check_triton_aot.py). One program
    per launch, so nothing else competes for that SM's registers. CUDA only
    (ROCm's triton has no such option).
    """
    warps = max(4, npad // 4)
    options = {"num_warps": warps, "enable_fp_fusion": FP_FUSION}
    if torch.version.hip is None and 65536 // (32 * warps) < 255:
        options["maxnreg"] = 65536 // (32 * warps)
    return options


# Globals read inside kernels must be constexpr. The work dtype is float64.
POWER_ITERS = tl.constexpr(solver.POWER_ITERS)
TINY = tl.constexpr(torch.finfo(torch.float64).tiny)
EPS = tl.constexpr(torch.finfo(torch.float64).eps)
SQRT_EPS = tl.constexpr(math.sqrt(torch.finfo(torch.float64).eps))
PRECOND_FLOOR = tl.constexpr(solver.PRECOND_FLOOR)
INF = tl.constexpr(math.inf)
NAN = tl.constexpr(math.nan)

# NB: tl.sqrt on float64 is the correctly rounded sqrt (only fp32 has a fast one).
# Clamps keep NaN (as torch.clamp does): a NaN total must still fail a face solve.
KEEP_NAN = tl.constexpr(tl.PropagateNan.ALL)
# Small helpers are written inline (tl.sum(a * b, axis=0) is a dot, tl.sum(M *
# v[None, :], axis=1) is M @ v): every jit call costs the interpreter ~1 ms.


@triton.jit
def _norm_of(M, a):
    """sqrt(a^T M a), clamped at 0 under the root as in solver.py."""
    return tl.sqrt(tl.maximum(tl.sum(a * tl.sum(M * a[None, :], axis=1), axis=0), 0.0, KEEP_NAN))


@triton.jit
def _project_simplex(v, w, valid):
    """solver.project_simplex(v, w): the projection in the norm sum_i w_i x_i^2, sort free.

    x_i = max(0, v_i - theta / w_i). With the breakpoints t_i = w_i v_i, c_j =
    #{i : t_i >= t_j}, S_j = sum of those v_i and I_j (S_iw) = sum of their 1 / w_i,
    entry j is in the support iff t_j - theta_j > 0 with theta_j = (S_j - 1) / I_j
    (the sorted-prefix test of solver.project_simplex at rank c_j; ties pass or
    fail together), and theta is the theta_j of the in-support entry with the
    largest c_j (the smallest breakpoint of the support). Should rounding leave
    no entry in the support, theta is that of the largest breakpoint (torch's
    count clamped to 1). w must be positive on the valid entries (1 on padding
    is fine: padded entries are masked).
    """
    t = w * v
    iw = 1.0 / w
    ge = (t[:, None] >= t[None, :]) & valid[:, None]
    S = tl.sum(tl.where(ge, v[:, None], 0.0), axis=0)
    S_iw = tl.sum(tl.where(ge, iw[:, None], 0.0), axis=0)
    c = tl.sum(ge.to(tl.float64), axis=0)
    theta_j = (S - 1.0) / tl.where(S_iw > 0, S_iw, 1.0)  # padded entries may count nothing
    in_support = (t - theta_j > 0) & valid
    count = tl.max(tl.where(in_support, c, 0.0), axis=0)
    c_min = tl.min(tl.where(valid, c, INF), axis=0)
    pick = tl.where(count > 0, in_support & (c == count), valid & (c == c_min))
    # Tied entries share S_j and I_j bit for bit (the same masked sums), so the max
    # picks one value.
    theta = tl.max(tl.where(pick, theta_j, -INF), axis=0)
    return tl.where(valid, tl.maximum(v - theta * iw, 0.0, KEEP_NAN), 0.0)


@triton.jit
def _phi(t, beta, p, q, m, s):
    return beta * t + s * tl.sqrt(tl.maximum(p + 2.0 * q * t + m * t * t, 0.0, KEEP_NAN))


@triton.jit
def _segment_step(beta, p, q, m, s):
    """solver._segment_step: argmin over t in [0, 1] of beta t + s sqrt(p + 2 q t + m t^2)."""
    denom = s * s * m - beta * beta
    delta = tl.maximum(p * m - q * q, 0.0, KEEP_NAN)
    y = -beta * tl.sqrt(delta / tl.maximum(denom, TINY, KEEP_NAN))
    t_star = tl.where((denom > 0) & (m > 0), (y - q) / tl.maximum(m, TINY, KEEP_NAN), 1.0)
    t_star = tl.clamp(t_star, 0.0, 1.0, KEEP_NAN)
    t_best = tl.zeros_like(m)
    phi_best = _phi(t_best, beta, p, q, m, s)
    val = _phi(t_star, beta, p, q, m, s)
    better = val < phi_best
    t_best = tl.where(better, t_star, t_best)
    phi_best = tl.where(better, val, phi_best)
    one = tl.full((), 1.0, tl.float64)
    better = _phi(one, beta, p, q, m, s) < phi_best
    return tl.where(better, one, t_best)


@triton.jit
def _power_lambda_max(A, valid, ITERS: tl.constexpr):
    """solver._power_lambda_max: fixed power iterations from the ramp 1..n."""
    v = tl.cumsum(valid.to(tl.float64), axis=0) * valid.to(tl.float64)
    for _ in range(ITERS):
        v = tl.sum(A * v[None, :], axis=1)
        v = v / tl.maximum(tl.sqrt(tl.sum(v * v, axis=0)), TINY, KEEP_NAN)
    return tl.maximum(tl.sum(v * tl.sum(A * v[None, :], axis=1), axis=0), TINY, KEEP_NAN)


@triton.jit
def _face_solve(M, b, s, support, valid, rows, cols, n, nf):
    """solver._face_solve: the exact dual optimum on the face ``support``.

    As there, the system is solved in the Jacobi-scaled basis (inv = S / sqrt(diag
    M), the diagonal floored at PRECOND_FLOOR: M has max diagonal 1 here, and a
    zero task's row stays finite) and x scaled back by inv. The augmented system [Ms | inv, b inv] is
    reduced by Gauss-Jordan with partial pivoting; column k is zeroed explicitly
    off its pivot row and the pivot row is normalised, so the matrix ends as an
    exact permutation P and x = P^T rhs.
    """
    S = tl.where(support & valid, 1.0, 0.0).to(tl.float64)
    eye = rows[:, None] == cols[None, :]
    diag = tl.sum(tl.where(eye, M, 0.0), axis=1)
    inv = S / tl.sqrt(tl.maximum(diag, PRECOND_FLOOR, KEEP_NAN))
    ridge = 8.0 * nf * EPS
    A = (
        M * inv[:, None] * inv[None, :]
        + tl.where(eye, 1.0 - S[None, :], 0.0)
        + tl.where(eye, ridge * S[None, :], 0.0)
    )
    x1 = inv
    x2 = b * inv
    free = valid
    singular = tl.full((), False, tl.int1)
    for k in range(n):
        col = tl.sum(tl.where(cols[None, :] == k, A, 0.0), axis=1)
        p = tl.argmax(tl.where(free, tl.abs(col), -1.0), axis=0)
        at_p = rows == p
        piv = tl.sum(tl.where(at_p, col, 0.0), axis=0)
        singular = singular | (piv == 0.0)
        piv = tl.where(piv == 0.0, 1.0, piv)
        prow = tl.sum(tl.where(at_p[:, None], A, 0.0), axis=0) / piv
        x1p = tl.sum(tl.where(at_p, x1, 0.0), axis=0) / piv
        x2p = tl.sum(tl.where(at_p, x2, 0.0), axis=0) / piv
        f = tl.where(at_p, 0.0, col)
        A = tl.where(at_p[:, None], prow[None, :], A - f[:, None] * prow[None, :])
        A = tl.where((cols[None, :] == k) & ~at_p[:, None], 0.0, A)
        x1 = tl.where(at_p, x1p, x1 - f * x1p)
        x2 = tl.where(at_p, x2p, x2 - f * x2p)
        free = free & ~at_p
    p_vec = tl.sum(A * x1[:, None], axis=0) * inv
    q_vec = tl.sum(A * x2[:, None], axis=0) * inv
    A_ = tl.sum(S * p_vec, axis=0)
    B = tl.sum(S * q_vec, axis=0)
    C = tl.sum(b * S * q_vec, axis=0)
    D = B * B - A_ * (C - s * s)
    sqrt_d = tl.sqrt(tl.maximum(D, TINY, KEEP_NAN))
    lam = (B + sqrt_d) / tl.maximum(A_, TINY, KEEP_NAN)
    alpha = tl.maximum((lam * p_vec - q_vec) / sqrt_d, 0.0, KEEP_NAN)
    total = tl.sum(alpha, axis=0)
    # |x| < inf is false for NaN too: this is isfinite.
    ok = (D > 0) & (A_ > 0) & (total > 0) & (tl.abs(total) < INF) & ~singular
    fallback = S / tl.maximum(tl.sum(S, axis=0), 1.0)
    return tl.where(ok, alpha / tl.maximum(total, TINY, KEEP_NAN), fallback)


@triton.jit
def diag_max(M, valid, rows, cols):
    diag = tl.sum(tl.where(rows[:, None] == cols[None, :], M, 0.0), axis=1)
    return tl.max(tl.where(valid, diag, -INF), axis=0)


@triton.jit
def _rectify_scale(Ms, s, alpha):
    """solver.rectify_scale: s / sqrt(alpha^T Ms alpha), 0 when that root is 0."""
    r = _norm_of(Ms, alpha)
    return tl.where(r > 0, s / tl.maximum(r, TINY, KEEP_NAN), 0.0)


@triton.jit
def _duality_gap(M, b, s, alpha, valid, diag, nf, k):
    """solver.duality_gap of alpha and a_u = a_mu + k alpha, normalised by ||mu|| max_i ||g_i||.

    diag: M's diagonal (any value on padding, masked here).
    """
    Ma = tl.sum(M * alpha[None, :], axis=1)
    r = tl.sqrt(tl.maximum(tl.sum(alpha * Ma, axis=0), 0.0, KEEP_NAN))
    norms = tl.sqrt(tl.maximum(diag, 0.0, KEEP_NAN))
    max_norm = tl.max(tl.where(valid, norms, -INF), axis=0)
    primal = tl.min(tl.where(valid, b + k * Ma, INF), axis=0)
    # Every vertex e_i of the simplex is a dual point too: F(e_i) = b_i + s ||g_i||.
    vertex = tl.min(tl.where(valid, b + s * norms, INF), axis=0)
    dual = tl.minimum(tl.sum(alpha * b, axis=0) + s * r, vertex, KEEP_NAN)
    mu_norm = tl.sqrt(tl.maximum(tl.sum(b, axis=0) / nf, 0.0, KEEP_NAN))
    # ||mu|| is known only down to sqrt(eps) max_i ||g_i||: the normaliser is floored there.
    # max_norm * SQRT_EPS, not SQRT_EPS * max_norm: triton 3.7's interpreter makes a
    # constexpr times a tensor a constexpr holding a tensor, and fails on it.
    denom = tl.maximum(mu_norm, max_norm * SQRT_EPS, KEEP_NAN) * max_norm
    return (dual - primal) / tl.maximum(denom, TINY, KEEP_NAN)


@triton.jit
def _dual_step(Mh, bh, sh, alpha, Ma, r, grad, eta, wd, valid):
    """One projected-gradient step of solver.solve_dual's loop (after any polish).

    In the diagonal metric wd (the floored diagonal of Mh): the step is eta grad /
    wd, projected in the norm sum_i wd_i x_i^2, and the Barzilai-Borwein step
    measures the step in that norm.
    """
    z = _project_simplex(alpha - eta * grad / wd, wd, valid)
    d = z - alpha
    Md = tl.sum(Mh * d[None, :], axis=1)
    t = _segment_step(
        tl.sum(d * bh, axis=0), r * r, tl.sum(Ma * d, axis=0), tl.sum(d * Md, axis=0), sh
    )
    alpha = alpha + t * d
    Ma = tl.sum(Mh * alpha[None, :], axis=1)
    r = tl.maximum(tl.sqrt(tl.maximum(tl.sum(alpha * Ma, axis=0), 0.0, KEEP_NAN)), TINY, KEEP_NAN)
    grad_new = bh + sh * Ma / r
    step = t * d
    curv = tl.sum(step * (grad_new - grad), axis=0)
    ss = tl.sum(step * (wd * step), axis=0)
    eta = tl.where(curv > TINY, ss / tl.maximum(curv, TINY, KEEP_NAN), eta)
    return z, alpha, Ma, r, grad_new, tl.clamp(eta, 1e-10, 1e10, KEEP_NAN)


@triton.jit
def solve_dual(M, b, s, valid, rows, cols, n, nf, ITERS: tl.constexpr, POLISH: tl.constexpr):
    """solver.solve_dual."""
    scale = tl.maximum(diag_max(M, valid, rows, cols), TINY, KEEP_NAN)
    Mh = M / scale
    bh = b / scale
    sh = s / tl.sqrt(scale)
    # P Mh P with P = I - 1/n: Mh P takes each row's mean off, P (Mh P) each column's.
    inv_n = 1.0 / nf
    both = valid[:, None] & valid[None, :]
    MP = tl.where(both, Mh - tl.sum(Mh, axis=1)[:, None] * inv_n, 0.0)
    PMP = tl.where(both, MP - tl.sum(MP, axis=0)[None, :] * inv_n, 0.0)
    lam = _power_lambda_max(PMP, valid, POWER_ITERS)
    alpha = tl.where(valid, inv_n, 0.0)
    Ma = tl.sum(Mh * alpha[None, :], axis=1)
    r = tl.maximum(tl.sqrt(tl.maximum(tl.sum(alpha * Ma, axis=0), 0.0, KEEP_NAN)), TINY, KEEP_NAN)
    grad = bh + sh * Ma / r
    # The Jacobi metric of the projected gradient (1 on padding, never read there).
    mh_diag = tl.sum(tl.where(rows[:, None] == cols[None, :], Mh, 0.0), axis=1)
    wd = tl.where(valid, tl.maximum(mh_diag, PRECOND_FLOOR, KEEP_NAN), 1.0)
    eta = r / (sh * lam + 1e-6 * r)
    z = alpha
    # The torch loop polishes at it % POLISH == POLISH - 1, before that step.
    tl.static_assert(ITERS % POLISH == 0)
    for _block in range(ITERS // POLISH):
        for _it in range(POLISH - 1):
            z, alpha, Ma, r, grad, eta = _dual_step(Mh, bh, sh, alpha, Ma, r, grad, eta, wd, valid)
        face = _face_solve(Mh, bh, sh, z > 0, valid, rows, cols, n, nf)
        f_face = tl.sum(face * bh, axis=0) + sh * _norm_of(Mh, face)
        f_alpha = tl.sum(alpha * bh, axis=0) + sh * _norm_of(Mh, alpha)
        alpha = tl.where(f_face < f_alpha, face, alpha)
        Ma = tl.sum(Mh * alpha[None, :], axis=1)
        r = tl.maximum(
            tl.sqrt(tl.maximum(tl.sum(alpha * Ma, axis=0), 0.0, KEEP_NAN)), TINY, KEEP_NAN
        )
        grad = bh + sh * Ma / r
        z, alpha, Ma, r, grad, eta = _dual_step(Mh, bh, sh, alpha, Ma, r, grad, eta, wd, valid)
    polished = _face_solve(Mh, bh, sh, z > 0, valid, rows, cols, n, nf)
    k_p = _rectify_scale(Mh, sh, polished)
    k_a = _rectify_scale(Mh, sh, alpha)
    gap_p = _duality_gap(Mh, bh, sh, polished, valid, mh_diag, nf, k_p)
    gap_a = _duality_gap(Mh, bh, sh, alpha, valid, mh_diag, nf, k_a)
    best = tl.where(gap_p < gap_a, polished, alpha)
    # Long steps leave 1^T alpha off by ~|alpha - eta grad| eps: back onto the simplex.
    return best / tl.maximum(tl.sum(best, axis=0), TINY, KEEP_NAN)


@triton.jit
def _load_gram(m_ptr, w, rows, cols, n, both, CAGRAD: tl.constexpr, RELOAD: tl.constexpr):
    """M (M w w^T for CAGRAD) in float64, zeros past n, and whether it has a non-finite entry.

    RELOAD: a volatile load, so that the compiler cannot merge it with the first
    one and keep that tile live (in registers, or spilled) across the solve. It
    reads the same entries and repeats the same operations: the same bits.
    """
    ptrs = m_ptr + rows[:, None] * n + cols[None, :]
    if RELOAD:
        M = tl.load(ptrs, mask=both, other=0.0, volatile=True).to(tl.float64)
    else:
        M = tl.load(ptrs, mask=both, other=0.0).to(tl.float64)
    if CAGRAD:
        M = M * w[:, None] * w[None, :]
    non_finite = both & ~(tl.abs(M) < INF)  # NaN fails the test too
    skipped = tl.sum(tl.sum(non_finite.to(tl.int32), axis=1), axis=0) > 0
    return tl.where(skipped, 0.0, M), skipped


@triton.jit
def _rectified_gram(M, zero, top, rows, cols, gamma):
    """solver.rectify's smoothed_gram(M[idx][:, idx], gamma), idx_i = top where zero_i, else i.

    Gather free: the row and the column of top are masked sums of one entry and
    zeros (exact). zero must be False on padding, which then stays 0.
    """
    m_row = tl.sum(tl.where(rows[:, None] == top, M, 0.0), axis=0)
    M1 = tl.where(zero[:, None], m_row[None, :], M)
    m_col = tl.sum(tl.where(cols[None, :] == top, M1, 0.0), axis=1)
    Mr = tl.where(zero[None, :], m_col[:, None], M1)
    nrm = tl.sqrt(
        tl.maximum(tl.sum(tl.where(rows[:, None] == cols[None, :], Mr, 0.0), axis=1), 0.0, KEEP_NAN)
    )
    return Mr + gamma * (nrm[:, None] * nrm[None, :])


@triton.jit(do_not_specialize=["n"], do_not_specialize_on_alignment=["n"])
def _coefficients_kernel(
    m_ptr,
    w_ptr,
    alpha_ptr,
    coeffs_ptr,
    gap_ptr,
    skipped_ptr,
    n,
    rho: tl.float64,
    kappa: tl.float64,
    nu: tl.float64,
    eps: tl.float64,
    factor: tl.float64,
    gamma: tl.float64,
    NPAD: tl.constexpr,
    CAGRAD: tl.constexpr,
    RECTIFY: tl.constexpr,
    RESCALE: tl.constexpr,
    FUSE: tl.constexpr,
    ITERS: tl.constexpr,
    POLISH: tl.constexpr,
):
    """solver.camegrad_coefficients, or methods.cagrad_coefficients when CAGRAD is set.

    Registers: M and the smoothed Gram are not kept across the dual solve but
    loaded (and formed) again after it (_load_gram's RELOAD), so that the solve
    holds only its own tiles (see SOLVE_MAX_N for what spills).
    """
    rows = tl.arange(0, NPAD)
    cols = rows
    valid = rows < n
    both = valid[:, None] & valid[None, :]
    nf = n.to(tl.float64)
    w = tl.load(w_ptr + rows, mask=valid, other=0.0).to(tl.float64)
    if CAGRAD:
        # CAGrad acts on h_i = w_i g_i; the solve below then uses all-ones weights,
        # which only the RESCALE and FUSE stages (off here) would read.
        tl.static_assert(RECTIFY and not RESCALE and not FUSE)
    M, skipped = _load_gram(m_ptr, w, rows, cols, n, both, CAGRAD, False)
    a_mu = tl.where(valid, 1.0 / nf, 0.0)
    b = tl.sum(M * a_mu[None, :], axis=1)
    s = rho * tl.sqrt(tl.maximum(tl.sum(a_mu * b, axis=0), 0.0, KEEP_NAN))
    diag = tl.sum(tl.where(rows[:, None] == cols[None, :], M, 0.0), axis=1)

    if RECTIFY:
        # solver.rectify: the dual on the smoothed Gram (gamma = solver.smoothing of the
        # gram's dtype) of M with each zero gradient's row and column replaced by those
        # of the largest task (top: the first index of the largest diagonal entry, as
        # torch.argmax), b remapped alike, s that of M; after the solve the zero
        # gradients' weight is handed to top. The gap is that of M and b.
        zero = valid & ~(diag > 0)
        top = tl.argmax(tl.where(valid, diag, -INF), axis=0, tie_break_left=True)
        br = tl.where(zero, tl.sum(tl.where(rows == top, b, 0.0), axis=0), b)  # exact: one entry
        Ms = _rectified_gram(M, zero, top, rows, cols, gamma)
        alpha = solve_dual(Ms, br, s, valid, rows, cols, n, nf, ITERS, POLISH)
        # M and Ms are not kept across the solve: loaded and formed again, the same bits.
        M, skipped = _load_gram(m_ptr, w, rows, cols, n, both, CAGRAD, True)
        k = _rectify_scale(_rectified_gram(M, zero, top, rows, cols, gamma), s, alpha)
        moved = tl.sum(tl.where(zero, alpha, 0.0), axis=0)
        alpha = tl.where(zero, 0.0, alpha) + tl.where(rows == top, moved, 0.0)
        a_u = a_mu + k * alpha
        gap = _duality_gap(M, b, s, alpha, valid, diag, nf, k)
    else:
        alpha = tl.full([NPAD], NAN, tl.float64)
        a_u = w
        gap = tl.full((), NAN, tl.float64)

    if RESCALE:
        tau = kappa * _norm_of(M, w)
        denom = _norm_of(M, a_u) + eps
        # u = 0 with eps = 0 stays 0 (the eps -> 0 limit), not 0/0.
        a_en = a_u * tl.where(denom > 0, tau / tl.maximum(denom, TINY, KEEP_NAN), 0.0)
        joint = kappa * w
    else:
        a_en = a_u
        joint = w
    # Typed fp64: the interpreter casts a float merged across branches to fp32.
    if FUSE:
        fuse = tl.full((), nu, tl.float64)
    else:
        fuse = tl.full((), 0.0, tl.float64)
    coeffs = (1.0 - fuse) * a_en + fuse * joint
    if CAGRAD:
        coeffs = w * coeffs / factor  # back to the raw g_i, then CAGrad's rescale

    out_ty = coeffs_ptr.dtype.element_ty
    tl.store(coeffs_ptr + rows, tl.where(skipped, 0.0, coeffs).to(out_ty), mask=valid)
    tl.store(alpha_ptr + rows, tl.where(skipped, NAN, alpha).to(out_ty), mask=valid)
    tl.store(gap_ptr, tl.where(skipped, NAN, gap).to(out_ty))
    tl.store(skipped_ptr, skipped.to(tl.uint8))


def coefficients(
    gram: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha [n], coeffs [n], duality_gap [], skipped [] bool), as solver.camegrad_coefficients.

    gram [n, n] float32/float64 contiguous, weights [n] in its dtype and on its
    device; the outputs are in gram's dtype (skipped is bool).
    """
    return _launch(gram, weights, rho, kappa, nu, eps, stages, False, 1.0)


def _cagrad_factor(rho: float, rescale: int) -> float:
    """What CAGrad's update u is divided by (their public code's ``rescale`` option)."""
    return {0: 1.0, 1: 1.0 + rho * rho, 2: 1.0 + rho}[rescale]


def cagrad_coefficients(
    gram: Tensor, weights: Tensor, rho: float, rescale: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha [n], coeffs [n], duality_gap [], skipped [] bool), as methods.cagrad_coefficients.

    gram [n, n] float32/float64 contiguous, weights [n] in its dtype and on its
    device, rescale in {0, 1, 2}; the outputs are in gram's dtype. The weighted
    Gram M w w^T is formed in float64 inside the kernel (the torch code forms it
    in gram's dtype: float32 grams differ by that rounding).
    """
    factor = _cagrad_factor(rho, rescale)
    return _launch(gram, weights, rho, 1.0, 0.0, 0.0, solver.RECTIFY, True, factor)


def _launch(
    gram: Tensor,
    weights: Tensor,
    rho: float,
    kappa: float,
    nu: float,
    eps: float,
    stages: int,
    cagrad: bool,
    factor: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n = gram.shape[0]
    npad = max(16, triton.next_power_of_2(n))
    alpha = torch.empty(n, dtype=gram.dtype, device=gram.device)
    coeffs = torch.empty_like(alpha)
    gap = torch.empty((), dtype=gram.dtype, device=gram.device)
    skipped = torch.empty((), dtype=torch.uint8, device=gram.device)
    _coefficients_kernel[(1,)](
        gram,
        weights,
        alpha,
        coeffs,
        gap,
        skipped,
        n,
        float(rho),
        float(kappa),
        float(nu),
        float(eps),
        float(factor),
        # The gram's dtype, also for CAGrad (the torch code weights it in that dtype).
        solver.smoothing(gram.dtype),
        NPAD=npad,
        CAGRAD=cagrad,
        RECTIFY=bool(stages & solver.RECTIFY),
        RESCALE=bool(stages & solver.RESCALE),
        FUSE=bool(stages & solver.FUSE),
        ITERS=solver.DUAL_ITERS,
        POLISH=solver.POLISH_EVERY,
        **solve_options(npad),
    )
    return alpha, coeffs, gap, skipped.view(torch.bool)
