"""The Triton backend: the three passes as Triton kernels (camegrad_kernels/triton_ops).

CUDA tensors run compiled; CPU tensors run only under Triton's interpreter
(TRITON_INTERPRET=1, slow, for tests). triton is imported lazily so that
``import camegrad_kernels`` works without it.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor

from .reference import accumulate_dtype

NAME = "triton"


@functools.cache
def _import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - not installed, or broken against this torch
        return f"triton is not importable ({exc})"
    return None


def _ops() -> ModuleType:
    # Imported on first use: Triton reads TRITON_INTERPRET when the kernels are defined.
    from .. import triton_ops

    return triton_ops


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    error = _import_error()
    if error is not None:
        return error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "torch sees no usable CUDA device (torch.cuda.is_available() is False)"
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    return f"Triton runs CUDA tensors (CPU ones under TRITON_INTERPRET=1), got a tensor on {device}"


def gram(grads: Tensor) -> Tensor:
    return _ops().gram(grads)


def coefficients(
    gram: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _ops().coefficients(gram, weights, rho, kappa, nu, eps, stages)


def cagrad_coefficients(
    gram: Tensor, weights: Tensor, rho: float, rescale: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _ops().cagrad_coefficients(gram, weights, rho, rescale)


def mgda_coefficients(
    gram: Tensor, weights: Tensor, normalization: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _ops().mgda_coefficients(gram, weights, normalization)


def pcgrad_coefficients(
    gram: Tensor, weights: Tensor, order: Tensor, reduction: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _ops().pcgrad_coefficients(gram, weights, order, reduction)


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # float64 coefficients (the Gram's dtype) rounded to the combine's dtype.
    return _ops().combine(grads, coeffs.to(accumulate_dtype(grads.dtype)), out, skip)
