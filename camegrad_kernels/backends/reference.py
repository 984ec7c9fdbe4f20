"""The pure-PyTorch Gram-space backend: runs on any device, the fallback of "auto".

Three torch steps: ``G @ G^T`` in float64 for every input dtype (fixed column
chunks converted to fp64: products of fp16/bf16/fp32 values are exact there),
the torch-ops solver of solver.py (methods.py for the baselines), and ``c @ G``
(fp32 accumulation, fp64 for fp64 input). (The paper-literal, vector-space
ground truth is ``camegrad_kernels.reference``, not this.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import methods, solver

NAME = "reference"

# Columns per fp64 chunk of the Gram: a fixed size (the summation order depends on
# d only), and at most n * 2^16 doubles of temporary memory whatever d is.
GRAM_CHUNK = 1 << 16


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The combine's dtype: fp16/bf16/fp32 accumulate in fp32, fp64 in fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_dtype(dtype: torch.dtype, device: torch.device | None = None) -> torch.dtype:
    """The Gram's dtype (and so the coefficients'): float64 for every gradient dtype.

    An fp32 Gram is off by ~eps32 |g_i| |g_j| in each cross term; relative to
    |g_i|^2 that grows with the norm ratio |g_j| / |g_i|, and at the 1e6-1e7
    ratios of multi-task training the solver's answer is wrong. Products of two
    fp16/bf16/fp32 values are exact in fp64, so an fp64 sum of them is accurate
    to ~eps64 |g_i| |g_j|. The one exception is an MPS ``device``, which has no
    float64: float32 there (as solver.work_dtype), with that fp32 limitation.
    """
    if device is not None and torch.device(device).type == "mps":
        return torch.float32
    return torch.float64


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def gram(grads: Tensor) -> Tensor:
    if grads.dtype == torch.float64:
        return grads @ grads.T
    n, d = grads.shape
    M = torch.zeros((n, n), dtype=gram_dtype(grads.dtype, grads.device), device=grads.device)
    for k in range(0, d, GRAM_CHUNK):  # chunk sums added in column order
        g = grads[:, k : k + GRAM_CHUNK].to(M.dtype)
        M.addmm_(g, g.T)
    return M


def coefficients(
    gram: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return solver.camegrad_coefficients(gram, weights, rho, kappa, nu, eps, stages)


cagrad_coefficients = methods.cagrad_coefficients
mgda_coefficients = methods.mgda_coefficients
pcgrad_coefficients = methods.pcgrad_coefficients


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # coeffs come in the Gram's dtype (float64) or any other: rounded to the combine's.
    acc = accumulate_dtype(grads.dtype)
    update = coeffs.to(acc) @ grads.to(acc)
    if skip is not None:
        update = torch.where(skip, torch.zeros_like(update), update)
    return out.copy_(update)
