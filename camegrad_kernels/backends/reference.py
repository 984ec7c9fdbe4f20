"""The pure-PyTorch Gram-space backend: runs on any device, the fallback of "auto".

Three torch calls: ``G @ G^T`` (accumulated in fp32, or fp64 for fp64 input),
the torch-ops solver of solver.py (methods.py for the baselines), and ``c @ G``. (The paper-literal,
vector-space ground truth is ``camegrad_kernels.reference``, not this.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import methods, solver

NAME = "reference"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16/fp32 accumulate in fp32, fp64 in fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def gram(grads: Tensor) -> Tensor:
    g = grads.to(accumulate_dtype(grads.dtype))
    return g @ g.T


def coefficients(
    gram: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return solver.camegrad_coefficients(gram, weights, rho, kappa, nu, eps, stages)


cagrad_coefficients = methods.cagrad_coefficients
mgda_coefficients = methods.mgda_coefficients
pcgrad_coefficients = methods.pcgrad_coefficients


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    acc = accumulate_dtype(grads.dtype)
    update = coeffs.to(acc) @ grads.to(acc)
    if skip is not None:
        update = torch.where(skip, torch.zeros_like(update), update)
    return out.copy_(update)
