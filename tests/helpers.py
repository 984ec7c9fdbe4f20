"""Test-only problem makers and an independent SciPy oracle for the dual."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch


def make_grads(kind: str, n: int, d: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Task gradients [n, d] with a named geometry."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, d, generator=gen, dtype=torch.float64)
    scales = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 4 + 0.25
    if kind == "random":
        g = noise * scales
    elif kind == "conflicting":  # a shared part plus strongly opposing task parts
        g = 0.3 * base + noise * scales
        g[0] = -g[1:].sum(0) * 0.6 + 0.2 * noise[0]
    elif kind == "correlated":
        g = base + 0.3 * noise
    elif kind == "collinear":  # all along one direction, different lengths
        g = scales * base
    elif kind == "opposing":  # g and -g: 0 is in the convex hull
        g = torch.stack([base if i % 2 == 0 else -base for i in range(n)])
    elif kind == "zero":
        g = torch.zeros(n, d, dtype=torch.float64)
    elif kind == "tiny":
        g = noise * scales * 1e-20
    elif kind == "huge":
        g = noise * scales * 1e15
    else:
        raise ValueError(kind)
    return g.to(dtype).contiguous()


def slsqp_dual(M: np.ndarray, rho: float) -> tuple[np.ndarray, float]:
    """CAGrad public-code style: SciPy SLSQP from alpha = 1/n. Returns (alpha, F)."""
    n = M.shape[0]
    b = M.mean(axis=1)
    s = rho * np.sqrt(max(b.mean(), 0.0))

    def objective(a):
        return a @ b + s * np.sqrt(max(a @ M @ a, 0.0))

    res = scipy.optimize.minimize(
        objective,
        np.full(n, 1.0 / n),
        bounds=[(0.0, 1.0)] * n,
        constraints={"type": "eq", "fun": lambda a: a.sum() - 1.0},
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    return res.x, objective(res.x)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def primal_optimum(M: np.ndarray, rho: float) -> float:
    """P* of the paper's primal (Eq. 8) from the Gram matrix, by an independent route.

    max_u min_i <g_i, u> over ||u - mu|| <= rho ||mu||, written in a factor of M
    (M = L L^T from eigh, rank-revealing): u - mu = W v with ||v|| = ||u - mu|| and
    <g_i, u - mu> = (L v)_i, so it is max t s.t. b + L v >= t, ||v||^2 <= s^2,
    solved by SciPy SLSQP at tight tolerance from v = 0 (a feasible start).
    """
    M = np.asarray(M, dtype=np.float64)
    n = M.shape[0]
    lam, V = np.linalg.eigh((M + M.T) / 2)
    keep = lam > 1e-13 * max(lam.max(), 1e-300)
    L = V[:, keep] * np.sqrt(lam[keep])
    b = M.mean(axis=1)
    s = rho * np.sqrt(max(b.mean(), 0.0))
    scale = np.sqrt(max(np.diag(M).max(), 1e-300)) * max(s, 1e-300)
    r = L.shape[1]
    if r == 0 or s == 0:
        return float(b.min())

    def neg_t(x):
        return -x[-1]

    cons = [
        {"type": "ineq", "fun": lambda x: (b + L @ x[:-1] - x[-1]) / scale,
         "jac": lambda x: np.hstack([L, -np.ones((n, 1))]) / scale},
        {"type": "ineq", "fun": lambda x: 1.0 - (x[:-1] @ x[:-1]) / (s * s),
         "jac": lambda x: np.hstack([-2 * x[:-1] / (s * s), [0.0]])},
    ]
    best = float(b.min())
    x0 = np.zeros(r + 1)
    x0[-1] = best
    for _ in range(3):  # restarts from the last point tighten SLSQP's finish
        res = scipy.optimize.minimize(
            neg_t, x0, jac=lambda x: np.hstack([np.zeros(r), [-1.0]]), constraints=cons,
            method="SLSQP", options={"ftol": 1e-16, "maxiter": 1000},
        )
        v = res.x[:-1]
        v = v * min(1.0, s / max(np.linalg.norm(v), 1e-300))  # exactly feasible
        best = max(best, float((b + L @ v).min()))
        x0 = np.hstack([v, [best]])
    return best


def primal_shortfall(M: torch.Tensor, a_u: torch.Tensor, rho: float) -> float:
    """(P* - min_i <g_i, u>) / (||mu|| max_i ||g_i||) for u = a_u^T G, P* from primal_optimum.

    Also asserts u is feasible: ||u - mu|| <= rho ||mu|| (to rounding).
    """
    M64 = M.double()
    n = M64.shape[0]
    a_u = a_u.double()
    beta = a_u - 1.0 / n
    b = M64.mean(dim=1)
    s = rho * float(b.mean().clamp_min(0)) ** 0.5
    dist = float((beta @ M64 @ beta).clamp_min(0)) ** 0.5
    max_norm = float(M64.diagonal().max()) ** 0.5
    assert dist <= s * (1 + 1e-6) + 1e-12 * max_norm, (dist, s)
    value = float((M64 @ a_u).min())
    norm = max(float(b.mean().clamp_min(0)) ** 0.5 * max_norm, 1e-300)
    return (primal_optimum(M64.numpy(), rho) - value) / norm


# The one tolerance table: ||update - expected|| / ||expected|| against the float64
# answer on the same rounded input, the output rounding of each dtype (the Gram,
# hence the coefficients, are float64 for every gradient dtype).
UPDATE_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-9}
GRAM_TOL = 1e-12  # a Gram vs the float64 Gram of the rounded input, relative


# Without a GPU the Triton backend runs under its (slow) interpreter. The shared
# suites then give it a representative subset of their cases: the whole matrix
# runs compiled wherever a GPU is present, and tests/test_triton.py covers its
# kernels op by op (every n, dtype and option) under the interpreter too.
INTERPRETED = not torch.cuda.is_available()


def backend_cases(backends, cases, interpreted_keep):
    """[(backend, *case)] over ``backends`` x ``cases``; interpreted Triton only where
    ``interpreted_keep(case)`` is true."""
    out = []
    for backend in backends:
        for case in cases:
            case = case if isinstance(case, tuple) else (case,)
            if backend == "triton" and INTERPRETED and not interpreted_keep(case):
                continue
            out.append((backend, *case))
    return out
