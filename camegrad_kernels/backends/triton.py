"""The Triton backend: the three passes as Triton kernels (camegrad_kernels/triton_ops).

CUDA tensors run compiled; CPU tensors run only under Triton's interpreter
(TRITON_INTERPRET=1, slow, for tests). triton is imported lazily so that
``import camegrad_kernels`` works without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from .. import methods
from ..dtypes import accumulate_dtype

NAME = "triton"
# triton_ops.gram.MAX_N and triton_ops.solve.SOLVE_MAX_N (tests/test_registry.py
# checks): beyond them the tiles spill, and the torch pass runs instead.
MAX_TASKS = {"gram": 128, "solve": 64}


_IMPORT_ERROR: list[str | None] = []  # filled on first use (a plain list: torch.compile reads it)


def _import_error() -> str | None:
    if not _IMPORT_ERROR:
        try:
            import triton  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - not installed, or broken against this torch
            _IMPORT_ERROR.append(f"triton is not importable ({exc})")
        else:
            _IMPORT_ERROR.append(None)
    return _IMPORT_ERROR[0]


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


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # float64 coefficients (the Gram's dtype) rounded to the combine's dtype.
    return _ops().combine(grads, coeffs.to(accumulate_dtype(grads.dtype)), out, skip)


def solvers() -> dict[str, Callable[..., methods.SolveResult]]:
    ops = _ops()
    return {
        name: getattr(ops, spec.native_op)
        for name, spec in methods.REGISTRY.items()
        if spec.native_op is not None
    }
