"""Gram-space CAME-Grad coefficients written in torch ops (the fallback solver).

Everything here works on the n x n Gram matrix ``M = G G^T`` only (docs/camegrad.md
§1): the dual of Stage 1 is solved over the simplex and the three stages are
turned into n coefficients ``c`` with ``g_final = c^T G``.

The code is written for devices that must not sync the host: no ``.item()``,
no data-dependent Python branching, a fixed number of iterations, and
``torch.linalg.solve_ex`` (which, unlike ``solve``, does not check for errors on
the host). The native solvers (C++ CPU, Triton, CUDA) implement the very same
algorithm, described in :func:`solve_dual`, so all backends agree to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Stage bit flags, shared with the C++/Triton/CUDA solvers (csrc/cpu/solver.h).
RECTIFY, RESCALE, FUSE = 1, 2, 4
ALL_STAGES = RECTIFY | RESCALE | FUSE
STAGE_FLAGS = {"rectify": RECTIFY, "rescale": RESCALE, "fuse": FUSE}

# Fixed work: projected-gradient iterations of the dual, with an exact face solve
# every POLISH_EVERY of them. 128 closes the gap to rounding on every full-rank
# case we test; rank-deficient Grams (n > d) can need more (README, Limits).
# The C++ and CUDA solvers read csrc/cpu/solver.h: tests/test_constants.py checks it.
DUAL_ITERS = 128
POLISH_EVERY = 8
POWER_ITERS = 16  # power iterations for the curvature bound lambda_max
# gamma = max(SMOOTHING_DATA eps(Gram), SMOOTHING_WORK eps(work)), see smoothing().
# Checked against csrc/cpu/solver.h by tests/test_constants.py.
SMOOTHING_DATA = 16.0
SMOOTHING_WORK = 1e5
# Floor of the scaled (max 1) diagonal in the projected-gradient metric and the face
# solve's scaling: a zero gradient stays finite (tests/test_constants.py).
PRECOND_FLOOR = 1e-30


def smoothing(gram_dtype: torch.dtype, work: torch.dtype = torch.float64) -> float:
    """gamma, the relative weight of the smoothing term of the dual (docs/camegrad.md §4).

    r^2 = a^T M a is known only to about eps * (sum_i a_i ||g_i||)^2: the Gram's
    rounding of each M_ij is relative to ||g_i|| ||g_j||, and evaluating a^T M a
    in the work dtype cancels to that level too. So the dual is solved on
    M + gamma n n^T with n_i = ||g_i||, i.e. r becomes
    r' = sqrt(r^2 + gamma (sum_i a_i ||g_i||)^2): the same as r unless r sits at
    that noise floor, scaled by the alpha-weighted norms (never by the largest
    norm), and never a noisy 0 to divide by. The rectified direction then falls
    short of the primal optimum by at most rho sqrt(gamma) (normalised), and the
    duality gap reports by how much it does.
    """
    # SMOOTHING_WORK is set for float64 work; float32 work (MPS) keeps the data's factor.
    work_factor = SMOOTHING_WORK if work == torch.float64 else SMOOTHING_DATA
    return max(SMOOTHING_DATA * torch.finfo(gram_dtype).eps, work_factor * torch.finfo(work).eps)


def smoothed_gram(M: Tensor, gamma: float) -> Tensor:
    """M + gamma n n^T with n_i = sqrt(M_ii): the Gram of the rows [g_i, sqrt(gamma) ||g_i||]."""
    norms = torch.sqrt(torch.diagonal(M).clamp_min(0.0))
    return M + gamma * (norms[:, None] * norms[None, :])


def rectify_scale(Ms: Tensor, s: Tensor, alpha: Tensor) -> Tensor:
    """k with a_u = a_mu + k alpha (Eq. 10 on the smoothed dual): s / r', 0 when r' = 0."""
    r = torch.sqrt((alpha @ (Ms @ alpha)).clamp_min(0.0))
    return torch.where(r > 0, s / r.clamp_min(torch.finfo(Ms.dtype).tiny), torch.zeros_like(r))


def project_simplex(v: Tensor, w: Tensor | None = None) -> Tensor:
    """Projection of v [n] onto the unit simplex in the norm sum_i w_i x_i^2 (sort based, exact).

    The minimiser is x_i = max(0, v_i - theta / w_i): with the breakpoints
    t_i = w_i v_i sorted in decreasing order, the support is the prefix on which
    t_k > theta_k = (sum_{j<=k} v_j - 1) / (sum_{j<=k} 1 / w_j). w = None is
    the Euclidean projection (all w_i = 1).
    """
    if w is None:
        w = torch.ones_like(v)
    order = torch.argsort(w * v, descending=True)
    t, vs, iw = (w * v)[order], v[order], (1.0 / w)[order]
    theta_k = (torch.cumsum(vs, dim=-1) - 1.0) / torch.cumsum(iw, dim=-1)
    # The condition holds on a prefix, so its count is the support size.
    count = (t - theta_k > 0).sum(dim=-1, keepdim=True).clamp_min(1)
    theta = torch.gather(theta_k, -1, count - 1)
    return (v - theta * (1.0 / w)).clamp_min(0.0)


def _segment_step(beta: Tensor, p: Tensor, q: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """argmin over t in [0, 1] of phi(t) = beta t + s sqrt(p + 2 q t + m t^2).

    phi is convex; its stationary point has a closed form (y = q + m t solves
    y^2 (s^2 m - beta^2) = beta^2 (p m - q^2) with sign(y) = -sign(beta)).
    Candidates {0, t*, 1} are compared, so the step never increases phi.
    """
    tiny = torch.finfo(beta.dtype).tiny
    denom = s * s * m - beta * beta
    delta = (p * m - q * q).clamp_min(0.0)
    y = -beta * torch.sqrt(delta / denom.clamp_min(tiny))
    t_star = torch.where((denom > 0) & (m > 0), (y - q) / m.clamp_min(tiny), torch.ones_like(m))
    t_star = t_star.clamp(0.0, 1.0)

    def phi(t: Tensor) -> Tensor:
        return beta * t + s * torch.sqrt((p + 2.0 * q * t + m * t * t).clamp_min(0.0))

    t_best = torch.zeros_like(m)
    phi_best = phi(t_best)
    for t in (t_star, torch.ones_like(m)):
        val = phi(t)
        better = val < phi_best
        t_best = torch.where(better, t, t_best)
        phi_best = torch.where(better, val, phi_best)
    return t_best


def _power_lambda_max(M: Tensor, iters: int = POWER_ITERS) -> Tensor:
    """An estimate of lambda_max(M) from a fixed number of power iterations.

    Starts from the ramp 1, 2, ..., n: M is P M P here and P removes the ones.
    """
    v = torch.arange(1, M.shape[0] + 1, dtype=M.dtype, device=M.device)
    for _ in range(iters):
        v = M @ v
        v = v / v.norm().clamp_min(torch.finfo(M.dtype).tiny)
    return (v @ (M @ v)).clamp_min(torch.finfo(M.dtype).tiny)


def _face_solve(M: Tensor, b: Tensor, s: Tensor, support: Tensor) -> Tensor:
    """The exact dual optimum on the face with the given support (docs/camegrad.md §2b).

    Returns alpha in the simplex (clamped and renormalised); when the face has no
    interior stationary point the result is still feasible, just not optimal, and
    the caller compares duality gaps.
    """
    n = M.shape[0]
    dtype = M.dtype
    tiny = torch.finfo(dtype).tiny
    S = support.to(dtype)
    eye = torch.eye(n, dtype=dtype, device=M.device)
    # Solve in the Jacobi-scaled basis (unit diagonal on the face), so that tasks
    # whose norms differ by orders of magnitude are treated alike, with a relative
    # ridge that guards rank-deficient faces (collinear tasks, n > d). M is scaled
    # to max diag 1 here; the floor keeps a zero gradient's row finite.
    inv = S / torch.sqrt(torch.diagonal(M).clamp_min(PRECOND_FLOOR))
    ridge = 8.0 * n * torch.finfo(dtype).eps
    Ms = M * inv[:, None] * inv[None, :] + eye * (1.0 - S) + eye * (ridge * S)
    rhs = torch.stack([inv, b * inv], dim=1)
    X, _ = torch.linalg.solve_ex(Ms, rhs)
    p, q = X[:, 0] * inv, X[:, 1] * inv
    A, B, C = S @ p, S @ q, (b * S) @ q
    D = B * B - A * (C - s * s)
    sqrt_d = torch.sqrt(D.clamp_min(tiny))
    lam = (B + sqrt_d) / A.clamp_min(tiny)
    alpha = ((lam * p - q) / sqrt_d).clamp_min(0.0)
    total = alpha.sum()
    ok = (D > 0) & (A > 0) & (total > 0) & torch.isfinite(total)
    fallback = S / S.sum().clamp_min(1.0)
    return torch.where(ok, alpha / total.clamp_min(tiny), fallback)


def _objective(M: Tensor, b: Tensor, s: Tensor, alpha: Tensor) -> Tensor:
    """The dual objective F(alpha) = alpha^T b + s sqrt(alpha^T M alpha)."""
    return alpha @ b + s * torch.sqrt((alpha @ (M @ alpha)).clamp_min(0.0))


def duality_gap(M: Tensor, b: Tensor, s: Tensor, alpha: Tensor, k: Tensor) -> Tensor:
    """Normalised duality gap (docs/camegrad.md §2) of alpha and the primal point a_u = a_mu + k alpha.

    F(alpha) - min_i (M a_u)_i, normalised by ||mu|| max_i ||g_i|| (0 when all is
    0). With ||u - mu|| = k r <= s (as :func:`rectify_scale` guarantees), u is
    feasible for Eq. 8, so by weak duality this bounds how far u falls short of
    the primal optimum whatever solver produced alpha, r* = 0 included.
    """
    finfo = torch.finfo(M.dtype)
    Ma = M @ alpha
    r = torch.sqrt((alpha @ Ma).clamp_min(0.0))
    norms = torch.sqrt(torch.diagonal(M).clamp_min(0.0))
    max_norm = norms.max()
    primal = (b + k * Ma).min()
    # Every vertex e_i of the simplex is a dual point too: F(e_i) = b_i + s ||g_i||
    # (0 for a zero gradient, which alpha itself never carries, see rectify).
    dual = torch.minimum(alpha @ b + s * r, (b + s * norms).min())
    mu_norm = torch.sqrt((b.mean()).clamp_min(0.0))
    # ||mu||^2 = mean(b) is known to ~eps max_i ||g_i||^2, so ||mu|| only down to
    # sqrt(eps) max_i ||g_i||: the normaliser is floored there (mu = 0: no 1e292 gaps).
    denom = torch.maximum(mu_norm, math.sqrt(finfo.eps) * max_norm) * max_norm
    return (dual - primal) / denom.clamp_min(finfo.tiny)


def rectify(M: Tensor, b: Tensor, s: Tensor, gamma: float, iters: int = DUAL_ITERS) -> tuple[Tensor, Tensor]:
    """Stage 1 on the Gram: (alpha [n], k []) with a_u = a_mu + k alpha (docs/camegrad.md §4).

    The dual is solved on the smoothed Gram (:func:`smoothed_gram`), b and s being
    those of M. A zero gradient is a vertex with F = 0 that the smoothing cannot
    lift (its extra coordinate is 0 too), so its row is replaced by a copy of the
    largest task's for the solve (a duplicated row changes neither the primal nor
    the dual) and its weight handed back to that task: alpha never sits on a zero
    gradient, and the vertex bound of :func:`duality_gap` accounts for it.
    """
    n = M.shape[0]
    diag = torch.diagonal(M)
    zero = ~(diag > 0)
    top = torch.argmax(diag)
    idx = torch.where(zero, top, torch.arange(n, device=M.device))
    Ms = smoothed_gram(M[idx][:, idx], gamma)
    alpha = solve_dual(Ms, b[idx], s, iters)
    k = rectify_scale(Ms, s, alpha)
    moved = torch.where(zero, alpha, torch.zeros_like(alpha)).sum()
    at_top = torch.arange(n, device=M.device) == top
    alpha = torch.where(zero, torch.zeros_like(alpha), alpha) + torch.where(at_top, moved, 0.0)
    return alpha, k


def solve_dual(M: Tensor, b: Tensor, s: Tensor, iters: int = DUAL_ITERS) -> Tensor:
    """alpha* = argmin_{alpha in simplex} alpha^T b + s sqrt(alpha^T M alpha).

    Algorithm (identical in every backend):
      1. Work on M / max(diag M) so the iteration is scale free.
      2. ``iters`` steps of projected gradient in the diagonal metric
         sum_i M_ii x_i^2 (docs/camegrad.md §5: every task moves at its own
         scale), a Barzilai-Borwein step (the first from the curvature bound
         s lambda_max(M) / r), then an exact line search along the feasible
         segment (closed form, :func:`_segment_step`), so F never rises.
      3. One exact solve on the face that the last projection identified
         (and one every POLISH_EVERY steps, kept when it lowers F).
      4. Keep whichever of (2) and (3) has the smaller duality gap, renormalised
         onto the simplex.
    """
    n = M.shape[0]
    dtype = M.dtype
    tiny = torch.finfo(dtype).tiny
    scale = torch.diagonal(M).max().clamp_min(tiny)
    Mh, bh, sh = M / scale, b / scale, s / torch.sqrt(scale)
    # Curvature only matters along the simplex (1^T v = 0): project out the ones.
    P = torch.eye(n, dtype=dtype, device=M.device) - 1.0 / n
    lam = _power_lambda_max(P @ Mh @ P)
    alpha = torch.full((n,), 1.0 / n, dtype=dtype, device=M.device)
    Ma = Mh @ alpha
    r = torch.sqrt((alpha @ Ma).clamp_min(0.0)).clamp_min(tiny)
    grad = bh + sh * Ma / r
    # Diagonal (Jacobi) metric: the steps and the projection are in the norm
    # sum_i w_i x_i^2, w_i = Mh_ii, so that tasks of very different norms move
    # at their own scale (floored, so a zero gradient stays finite).
    wd = torch.diagonal(Mh).clamp_min(PRECOND_FLOOR)
    eta = r / (sh * lam + 1e-6 * r)
    z = alpha
    for it in range(iters):
        if it % POLISH_EVERY == POLISH_EVERY - 1:
            # Jump to the exact optimum of the face the projection points at,
            # when that lowers F (the face solve is exact once the support is).
            face = _face_solve(Mh, bh, sh, z > 0)
            alpha = torch.where(_objective(Mh, bh, sh, face) < _objective(Mh, bh, sh, alpha), face, alpha)
            Ma = Mh @ alpha
            r = torch.sqrt((alpha @ Ma).clamp_min(0.0)).clamp_min(tiny)
            grad = bh + sh * Ma / r
        z = project_simplex(alpha - eta * grad / wd, wd)
        d = z - alpha
        Md = Mh @ d
        t = _segment_step(d @ bh, r * r, Ma @ d, d @ Md, sh)
        alpha = alpha + t * d
        Ma = Mh @ alpha
        r = torch.sqrt((alpha @ Ma).clamp_min(0.0)).clamp_min(tiny)
        grad_new = bh + sh * Ma / r
        # Spectral (Barzilai-Borwein) step for the next direction; the exact
        # segment search keeps every step monotone whatever eta is.
        step, dgrad = t * d, grad_new - grad
        curv = step @ dgrad
        eta = torch.where(curv > tiny, (step @ (wd * step)) / curv.clamp_min(tiny), eta).clamp(1e-10, 1e10)
        grad = grad_new
    polished = _face_solve(Mh, bh, sh, z > 0)
    gap_polished = duality_gap(Mh, bh, sh, polished, rectify_scale(Mh, sh, polished))
    better = gap_polished < duality_gap(Mh, bh, sh, alpha, rectify_scale(Mh, sh, alpha))
    alpha = torch.where(better, polished, alpha)
    # Long steps leave 1^T alpha off by ~|alpha - eta grad| eps: back onto the simplex.
    return alpha / alpha.sum().clamp_min(tiny)


def work_dtype(device: torch.device) -> torch.dtype:
    """The solver's arithmetic: float64 (n x n work is free), float32 on MPS."""
    return torch.float32 if device.type == "mps" else torch.float64


def camegrad_coefficients(
    M: Tensor,
    w: Tensor,
    rho: float,
    kappa: float,
    nu: float,
    eps: float,
    stages: int = ALL_STAGES,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CAME-Grad coefficients from the Gram matrix.

    Args:
        M: [n, n] Gram matrix, float32 or float64. The solve runs in
            :func:`work_dtype` and the results come back in M's dtype.
        w: [n] task weights, validated by the caller.
        stages: bit mask of RECTIFY | RESCALE | FUSE (paper Table 4 ablations).

    Returns:
        (alpha [n], coeffs [n], duality_gap [], skipped []) where ``skipped`` is a
        bool telling that M was not finite; then coeffs are 0 and the rest NaN.
        alpha and the gap are NaN when Stage 1 is off (no dual is solved).
    """
    out_dtype = M.dtype
    dtype = work_dtype(M.device)
    M, w = M.to(dtype), w.to(dtype)
    n = M.shape[0]
    tiny = torch.finfo(dtype).tiny
    finite = torch.isfinite(M).all()
    M = torch.where(finite, M, torch.zeros_like(M))
    a_mu = torch.full((n,), 1.0 / n, dtype=dtype, device=M.device)
    b = M @ a_mu
    s = rho * torch.sqrt((a_mu @ b).clamp_min(0.0))
    nan = torch.full((), float("nan"), dtype=dtype, device=M.device)

    if stages & RECTIFY:
        alpha, k = rectify(M, b, s, smoothing(out_dtype, dtype))
        a_u = a_mu + k * alpha
        gap = duality_gap(M, b, s, alpha, k)
    else:
        alpha = nan.expand(n).clone()
        a_u = w
        gap = nan.clone()

    if stages & RESCALE:
        tau = kappa * torch.sqrt((w @ (M @ w)).clamp_min(0.0))
        denom = torch.sqrt((a_u @ (M @ a_u)).clamp_min(0.0)) + eps
        # u = 0 with eps = 0 stays 0 (the eps -> 0 limit), not 0/0.
        a_en = a_u * torch.where(denom > 0, tau / denom.clamp_min(tiny), torch.zeros_like(denom))
        joint = kappa * w
    else:
        a_en = a_u
        joint = w
    fuse = nu if stages & FUSE else 0.0
    coeffs = (1.0 - fuse) * a_en + fuse * joint

    skipped = ~finite
    coeffs = torch.where(skipped, torch.zeros_like(coeffs), coeffs)
    alpha = torch.where(skipped, nan, alpha)
    gap = torch.where(skipped, nan, gap)
    return alpha.to(out_dtype), coeffs.to(out_dtype), gap.to(out_dtype), skipped
