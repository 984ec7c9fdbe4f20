"""Linear scalarization: coeffs = w, the update sum_i w_i g_i (nothing to solve, no Gram)."""

from __future__ import annotations

import torch
from torch import Tensor

from .spec import MethodSpec, SolveResult


def linear_coefficients(M: Tensor, w: Tensor) -> SolveResult:
    """coeffs = w; skipped when the Gram is not finite (four small ops on M's device)."""
    skipped = ~torch.isfinite(M).all()
    coeffs = torch.where(skipped, torch.zeros((), dtype=M.dtype, device=M.device), w.to(M.dtype))
    nan = torch.full((w.shape[0],), float("nan"), dtype=M.dtype, device=M.device)
    return nan, coeffs, nan[0].clone(), skipped


SPEC = MethodSpec(
    name="linear",
    title="linear scalarization",
    solve=linear_coefficients,
    needs_gram=False,
    trainer="LinearScalarization",
    trainer_doc=(
        "Linear scalarization: the update is sum_i w_i g_i (the baseline), on the same passes "
        "(no Gram pass, no solve)."
    ),
    style=("tab:gray", "x"),
)
