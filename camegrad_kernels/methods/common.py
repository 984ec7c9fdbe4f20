"""Helpers shared by the baselines' torch-ops solves (finite guard, weighting, outputs)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import solver
from .spec import SolveResult


def prepare(M: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, torch.dtype]:
    """(finite flag, weighted Gram w w^T M in the work dtype, w, NaN scalar, out dtype).

    The baselines act on the gradients of the weighted losses, h_i = w_i g_i.
    """
    out_dtype = M.dtype
    dtype = solver.work_dtype(M.device)
    M, w = M.to(dtype), w.to(dtype)
    finite = torch.isfinite(M).all()
    M = torch.where(finite, M, torch.zeros_like(M))
    Mw = M * w[:, None] * w[None, :]
    nan = torch.full((), float("nan"), dtype=dtype, device=M.device)
    return finite, Mw, w, nan, out_dtype


def finish(
    finite: Tensor, alpha: Tensor, coeffs: Tensor, gap: Tensor, nan: Tensor, out_dtype: torch.dtype
) -> SolveResult:
    """Zero coefficients and NaN alpha/gap where the Gram was not finite; back to out_dtype."""
    skipped = ~finite
    coeffs = torch.where(skipped, torch.zeros_like(coeffs), coeffs)
    alpha = torch.where(skipped, nan, alpha)
    gap = torch.where(skipped, nan, gap)
    return alpha.to(out_dtype), coeffs.to(out_dtype), gap.to(out_dtype), skipped
