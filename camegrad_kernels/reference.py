"""Paper-literal CAME-Grad (Algorithm 1) in float64 pure PyTorch: the ground truth.

Unlike the fast paths, this materialises every d-vector of the paper (mu,
g_joint, g_alpha, u_rect, u_en, g_final) exactly as Algorithm 1 reads. Only the
dual of Eq. 9 is solved on the Gram matrix (it is an n-dimensional problem);
it is run to a normalised duality gap of <= 1e-9, checked here on every call.
The tests also check it against an independent SciPy SLSQP oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import solver

REFERENCE_GAP = 1e-9
_REFERENCE_ITERS = 512


@dataclass
class ReferenceInfo:
    """Intermediate vectors of Algorithm 1 (all float64 on G's device)."""

    alpha: Tensor
    mu: Tensor
    g_joint: Tensor
    g_alpha: Tensor
    u_rect: Tensor
    u_en: Tensor
    duality_gap: Tensor


def solve_dual(g: Tensor, mu: Tensor, rho: float) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 9 for the rows of g [n, d] (float64), smoothed at float64 precision.

    Returns (alpha*, k, gap): u_rect = mu + k g_alpha with k = rho ||mu|| / r',
    r' = sqrt(||g_alpha||^2 + gamma (sum_i alpha_i ||g_i||)^2) (docs/camegrad.md
    §3: r' = r up to gamma unless r* = 0, where Eq. 10 has no answer and r' gives
    a primal-optimal u), and the normalised duality gap of that u.
    """
    M = g @ g.T
    b = g @ mu
    s = rho * mu.norm()
    alpha, k = solver.rectify(M, b, s, solver.smoothing(torch.float64), iters=_REFERENCE_ITERS)
    return alpha, k, solver.duality_gap(M, b, s, alpha, k)


def camegrad_step(
    grads: Tensor,
    weights: Sequence[float] | Tensor | None = None,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = ("rectify", "rescale", "fuse"),
    return_info: bool = False,
) -> Tensor | tuple[Tensor, ReferenceInfo]:
    """g_final of Algorithm 1 for task gradients ``grads`` [n, d] (any float dtype).

    Returns the float64 update [d] (and a :class:`ReferenceInfo`). Inputs are
    not validated beyond what the maths needs: the public API does that.
    """
    g = grads.detach().to(torch.float64)
    n = g.shape[0]
    w = torch.ones(n, dtype=torch.float64, device=g.device)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64).to(g.device)
    use = set(stages)

    mu = g.mean(dim=0)
    g_joint = (w[:, None] * g).sum(dim=0)

    # Stage 1: conflict-averse direction rectification (Eq. 8-10).
    if "rectify" in use:
        alpha, k, gap = solve_dual(g, mu, rho)
        g_alpha = (alpha[:, None] * g).sum(dim=0)
        # What the smoothing itself costs (docs/camegrad.md §4): task i loses
        # s gamma ||g_i|| (sum_j alpha_j ||g_j||) / r' of <g_i, u>, at most rho sqrt(gamma).
        norms = g.norm(dim=1)
        cost = k * solver.smoothing(torch.float64) * (alpha @ norms) / mu.norm().clamp_min(1e-300)
        bound = REFERENCE_GAP + cost
        if gap > bound:
            raise RuntimeError(f"reference dual solver stopped at gap {gap.item():.3e}")
        u_rect = mu + k * g_alpha
    else:
        alpha = torch.full((n,), float("nan"), dtype=torch.float64, device=g.device)
        gap = torch.tensor(float("nan"), dtype=torch.float64, device=g.device)
        g_alpha = torch.zeros_like(mu)
        u_rect = g_joint.clone()

    # Stage 2: magnitude-enhanced energy injection (Eq. 11-12).
    if "rescale" in use:
        tau = kappa * g_joint.norm()
        denom = u_rect.norm() + eps
        u_en = u_rect * (tau / denom) if denom > 0 else torch.zeros_like(u_rect)
        joint = kappa * g_joint
    else:
        u_en = u_rect
        joint = g_joint

    # Stage 3: adaptive gradient fusion (Eq. 13).
    fuse = nu if "fuse" in use else 0.0
    g_final = (1.0 - fuse) * u_en + fuse * joint
    if not return_info:
        return g_final
    return g_final, ReferenceInfo(alpha, mu, g_joint, g_alpha, u_rect, u_en, gap)
