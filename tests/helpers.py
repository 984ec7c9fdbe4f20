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
