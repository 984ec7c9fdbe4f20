"""The C++ CPU backend: ``torch.ops.camegrad`` ops implemented in csrc/cpu/."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import ops
from . import reference

NAME = "cpu"


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if not ops.HAS_CPU_OPS:
        return f"the C++ extension camegrad_kernels._C is not built ({ops.LOAD_ERRORS.get('_C')})"
    if device.type != "cpu":
        return f"it runs CPU tensors only, got a tensor on {device}"
    return None


def gram(grads: Tensor) -> Tensor:
    return torch.ops.camegrad.gram(grads)


def coefficients(
    gram: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.ops.camegrad.coefficients(gram, weights, rho, kappa, nu, eps, stages)


def cagrad_coefficients(
    gram: Tensor, weights: Tensor, rho: float, rescale: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.ops.camegrad.cagrad_coefficients(gram, weights, rho, rescale)


def mgda_coefficients(
    gram: Tensor, weights: Tensor, normalization: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.ops.camegrad.mgda_coefficients(gram, weights, normalization)


def pcgrad_coefficients(
    gram: Tensor, weights: Tensor, order: Tensor, reduction: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.ops.camegrad.pcgrad_coefficients(gram, weights, order, reduction)


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # float64 coefficients (the Gram's dtype) rounded to the combine's dtype.
    coeffs = coeffs.to(reference.accumulate_dtype(grads.dtype))
    torch.ops.camegrad.combine_out(grads, coeffs, skip, out)
    return out
