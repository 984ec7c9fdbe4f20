"""CAGrad (Liu et al., NeurIPS 2021), public-code conventions.

Their ``c`` is our ``rho``; ``g0`` is the mean of the (weighted) gradients,
``w* = argmin_{w in simplex} w^T M a_0 + rho ||g0|| sqrt(w^T M w)`` (CAME-Grad's
Stage 1 dual), ``u = g0 + (rho ||g0|| / ||g_w||) g_w``, then ``rescale`` 0:
``u``, 1 (their default): ``u / (1 + rho^2)``, 2: ``u / (1 + rho)``. The code's
absolute 1e-8 guards are not reproduced (they break scale invariance);
``g_w = 0`` (0 in the convex hull) gives ``u = g0``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .. import solver
from .spec import Hyper, MethodSpec, Option, SolveResult, TrainerArg

RESCALE_FACTORS = {0: lambda rho: 1.0, 1: lambda rho: 1.0 + rho * rho, 2: lambda rho: 1.0 + rho}


def cagrad_coefficients(M: Tensor, w: Tensor, rho: float, rescale: int = 1) -> SolveResult:
    """CAGrad on the weighted gradients: (w*, coeffs, gap of w*, skipped)."""
    # CAME-Grad's Stage 1 alone is CAGrad's u (docs/camegrad.md §1): coeffs = a_u. The
    # weighted Gram stays in M's dtype so that the smoothing is M's.
    Mw = M * w[:, None] * w[None, :]
    alpha, a_u, gap, skipped = solver.camegrad_coefficients(
        Mw, torch.ones_like(w), rho, 1.0, 0.0, 0.0, solver.RECTIFY
    )
    return alpha, w * a_u / RESCALE_FACTORS[rescale](rho), gap, skipped


def solve_args(
    hyper: Hyper, options: Mapping[str, object], n: int, device: torch.device
) -> tuple[float, int]:
    return hyper.rho, int(options["rescale"])  # type: ignore[call-overload]


SPEC = MethodSpec(
    name="cagrad",
    title="CAGrad",
    solve=cagrad_coefficients,
    solve_args=solve_args,
    options=(
        Option("rescale", 1, choices=(0, 1, 2), doc="0: u, 1: u / (1 + c^2), 2: u / (1 + c)"),
    ),
    reads=("rho",),
    native_op="cagrad_coefficients",
    alpha="CAGrad's simplex weights w* (CAME-Grad's Stage-1 dual)",
    gap="the normalised duality gap of w*",
    trainer="CAGrad",
    trainer_args=(TrainerArg("c", "rho", 0.4), TrainerArg("rescale", "rescale", 1)),
    trainer_doc=(
        "CAGrad (Liu et al., NeurIPS 2021) on the fused engine.\n\n"
        "``c`` is CAGrad's conflict-averse radius (our ``rho``; 0.4 is the value of their "
        "NYU-v2 experiments), ``rescale`` their public code's option (0: none, 1: divide by "
        "1 + c^2, the default, 2: divide by 1 + c)."
    ),
    style=("tab:blue", "s"),
)
