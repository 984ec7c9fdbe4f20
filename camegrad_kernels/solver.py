"""Gram-space CAME-Grad coefficients written in torch ops (the fallback solver).

Everything here works on the n x n Gram matrix ``M = G G^T`` only (design note
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
# Keep in step with csrc/cpu/solver.h (the CUDA solver uses it too).
DUAL_ITERS = 128
POLISH_EVERY = 8


def relative_tolerance(dtype: torch.dtype) -> float:
    """r / max_i ||g_i|| below which g_alpha is taken as 0 (0 in the convex hull).

    r^2 = a^T M a loses about eps(dtype) * max diag(M) to cancellation, so r is
    only known to about sqrt(eps) * max ||g_i||.
    """
    return 10.0 * math.sqrt(torch.finfo(dtype).eps)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of v [n] onto the unit simplex (sort based, exact)."""
    n = v.shape[-1]
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, dim=-1) - 1.0
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    # The condition holds on a prefix, so its count is the support size.
    count = (u - css / k > 0).sum(dim=-1, keepdim=True).clamp_min(1)
    theta = torch.gather(css, -1, count - 1) / count.to(v.dtype)
    return (v - theta).clamp_min(0.0)


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


def _power_lambda_max(M: Tensor, iters: int = 16) -> Tensor:
    """An estimate of lambda_max(M) from a fixed number of power iterations.

    Starts from the ramp 1, 2, ..., n: M is P M P here and P removes the ones.
    """
    v = torch.arange(1, M.shape[0] + 1, dtype=M.dtype, device=M.device)
    for _ in range(iters):
        v = M @ v
        v = v / v.norm().clamp_min(torch.finfo(M.dtype).tiny)
    return (v @ (M @ v)).clamp_min(torch.finfo(M.dtype).tiny)


def _face_solve(M: Tensor, b: Tensor, s: Tensor, support: Tensor) -> Tensor:
    """The exact dual optimum on the face with the given support (design note §2b).

    Returns alpha in the simplex (clamped and renormalised); when the face has no
    interior stationary point the result is still feasible, just not optimal, and
    the caller compares duality gaps.
    """
    n = M.shape[0]
    dtype = M.dtype
    S = support.to(dtype)
    eye = torch.eye(n, dtype=dtype, device=M.device)
    # Guard rank-deficient faces (collinear tasks, n > d): a relative ridge.
    ridge = 8.0 * n * torch.finfo(dtype).eps
    Ms = M * S[:, None] * S[None, :] + eye * (1.0 - S) + eye * (ridge * S)
    rhs = torch.stack([S, b * S], dim=1)
    X, _ = torch.linalg.solve_ex(Ms, rhs)
    p, q = X[:, 0] * S, X[:, 1] * S
    A, B, C = S @ p, S @ q, (b * S) @ q
    D = B * B - A * (C - s * s)
    tiny = torch.finfo(dtype).tiny
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


def duality_gap(M: Tensor, b: Tensor, s: Tensor, alpha: Tensor, r_tol: float) -> Tensor:
    """Normalised duality gap of alpha (design note §2): F(alpha) - min_i (M a_u)_i.

    Normalised by ||mu|| * max_i ||g_i||; 0 when everything is 0.
    """
    tiny = torch.finfo(M.dtype).tiny
    Ma = M @ alpha
    r = torch.sqrt((alpha @ Ma).clamp_min(0.0))
    max_norm = torch.sqrt(torch.diagonal(M).max().clamp_min(0.0))
    k = torch.where(r > r_tol * max_norm, s / r.clamp_min(tiny), torch.zeros_like(r))
    primal = (b + k * Ma).min()
    dual = alpha @ b + s * r
    mu_norm = torch.sqrt((b.mean()).clamp_min(0.0))
    return (dual - primal) / (mu_norm * max_norm).clamp_min(tiny)


def solve_dual(M: Tensor, b: Tensor, s: Tensor, iters: int = DUAL_ITERS) -> Tensor:
    """alpha* = argmin_{alpha in simplex} alpha^T b + s sqrt(alpha^T M alpha).

    Algorithm (identical in every backend):
      1. Work on M / max(diag M) so the iteration is scale free.
      2. ``iters`` steps of projected gradient: step 1/L with the local curvature
         bound L = s lambda_max(M) / r, then an exact line search along the
         feasible segment (closed form, :func:`_segment_step`), so F never rises.
      3. One exact solve on the face that the last projection identified.
      4. Keep whichever of (2) and (3) has the smaller duality gap.
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
        z = project_simplex(alpha - eta * grad)
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
        eta = torch.where(curv > tiny, (step @ step) / curv.clamp_min(tiny), eta).clamp(1e-10, 1e10)
        grad = grad_new
    polished = _face_solve(Mh, bh, sh, z > 0)
    r_tol = relative_tolerance(dtype)
    better = duality_gap(Mh, bh, sh, polished, r_tol) < duality_gap(Mh, bh, sh, alpha, r_tol)
    return torch.where(better, polished, alpha)


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
        alpha = solve_dual(M, b, s)
        Ma = M @ alpha
        r = torch.sqrt((alpha @ Ma).clamp_min(0.0))
        max_norm = torch.sqrt(torch.diagonal(M).max().clamp_min(0.0))
        k = torch.where(
            r > relative_tolerance(out_dtype) * max_norm, s / r.clamp_min(tiny), torch.zeros_like(r)
        )
        a_u = a_mu + k * alpha
        gap = duality_gap(M, b, s, alpha, relative_tolerance(out_dtype))
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
