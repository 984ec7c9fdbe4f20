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
from .backends.reference import accumulate_dtype as _accumulate_dtype

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


def solve_dual(g: Tensor, mu: Tensor, rho: float) -> tuple[Tensor, Tensor]:
    """alpha* of Eq. 9 for the rows of g [n, d] (float64) and its normalised gap."""
    M = g @ g.T
    b = g @ mu
    s = rho * mu.norm()
    alpha = solver.solve_dual(M, b, s, iters=_REFERENCE_ITERS)
    gap = solver.duality_gap(M, b, s, alpha, solver.relative_tolerance(torch.float64))
    return alpha, gap


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
        alpha, gap = solve_dual(g, mu, rho)
        g_alpha = (alpha[:, None] * g).sum(dim=0)
        r = g_alpha.norm()
        max_norm = g.norm(dim=1).max()
        # r is compared at the precision of the Gram matrix the fast paths form.
        well_posed = r > solver.relative_tolerance(_accumulate_dtype(grads.dtype)) * max_norm
        # The certificate needs r > 0; rank-deficient Grams are degenerate duals
        # that the fixed-work solver may not close (README, Limits).
        full_rank = torch.linalg.matrix_rank(g @ g.T, hermitian=True) == n
        if well_posed and full_rank and gap > REFERENCE_GAP:
            raise RuntimeError(f"reference dual solver stopped at gap {gap.item():.3e}")
        if well_posed:
            u_rect = mu + (rho * mu.norm() / r) * g_alpha
        else:  # 0 in the convex hull of the gradients: keep the mean
            u_rect = mu.clone()
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
