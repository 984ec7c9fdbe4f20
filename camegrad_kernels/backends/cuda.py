"""The CUDA backend: ``torch.ops.camegrad`` ops implemented in csrc/cuda/.

The kernels cover up to GRAM_MAX_TASKS tasks for the Gram pass and
SOLVE_MAX_TASKS for the one-block solvers (CAME-Grad and the baselines CAGrad,
MGDA, PCGrad; csrc/cuda/camegrad_cuda.cuh); beyond that the same step runs
through the reference backend's torch ops (methods.py for the baselines), still
on the device and without host syncs (the choice depends on shapes only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import methods, ops
from . import reference

NAME = "cuda"

# kGramMaxN and kSolveMaxN in csrc/cuda/camegrad_cuda.cuh.
GRAM_MAX_TASKS = 256
SOLVE_MAX_TASKS = 64

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if not ops.HAS_CUDA_OPS:
        error = ops.LOAD_ERRORS.get("_cuda") or ops.LOAD_ERRORS.get("_C")
        return f"the CUDA extension camegrad_kernels._cuda is not built ({error})"
    if device.type != "cuda":
        return f"it runs CUDA tensors only, got a tensor on {device}"
    if not torch.cuda.is_available():
        return "torch sees no usable CUDA device (torch.cuda.is_available() is False)"
    if dtype not in _DTYPES:
        return f"it runs float16, bfloat16, float32 and float64 gradients, got {dtype}"
    return None


def gram(grads: Tensor) -> Tensor:
    if grads.shape[0] > GRAM_MAX_TASKS:
        return reference.gram(grads)
    return torch.ops.camegrad.gram(grads)


def coefficients(
    gram: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if gram.shape[0] > SOLVE_MAX_TASKS:
        return reference.coefficients(gram, weights, rho, kappa, nu, eps, stages)
    return torch.ops.camegrad.coefficients(gram, weights, rho, kappa, nu, eps, stages)


def cagrad_coefficients(
    gram: Tensor, weights: Tensor, rho: float, rescale: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if gram.shape[0] > SOLVE_MAX_TASKS:
        return methods.cagrad_coefficients(gram, weights, rho, rescale)
    return torch.ops.camegrad.cagrad_coefficients(gram, weights, rho, rescale)


def mgda_coefficients(
    gram: Tensor, weights: Tensor, normalization: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if gram.shape[0] > SOLVE_MAX_TASKS:
        return methods.mgda_coefficients(gram, weights, normalization)
    return torch.ops.camegrad.mgda_coefficients(gram, weights, normalization)


def pcgrad_coefficients(
    gram: Tensor, weights: Tensor, order: Tensor, reduction: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if gram.shape[0] > SOLVE_MAX_TASKS:
        return methods.pcgrad_coefficients(gram, weights, order, reduction)
    return torch.ops.camegrad.pcgrad_coefficients(gram, weights, order, reduction)


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # float64 coefficients (the Gram's dtype) rounded to the combine's dtype.
    coeffs = coeffs.to(reference.accumulate_dtype(grads.dtype))
    torch.ops.camegrad.combine_out(grads, coeffs, skip, out)
    return out
