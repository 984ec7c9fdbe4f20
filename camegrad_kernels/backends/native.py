"""The passes of the C++ operator library, shared by the "cpu" and "cuda" backends.

``torch.ops.camegrad`` (schemas in csrc/ops.cpp) dispatches on the tensors'
device: the CPU kernels live in ``camegrad_kernels._C``, the CUDA ones in
``camegrad_kernels._cuda``. The native solvers are the ops that the method
specs name (``MethodSpec.native_op``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import methods
from ..dtypes import accumulate_dtype


def gram(grads: Tensor) -> Tensor:
    return torch.ops.camegrad.gram(grads)


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # float64 coefficients (the Gram's dtype) rounded to the combine's dtype.
    coeffs = coeffs.to(accumulate_dtype(grads.dtype))
    torch.ops.camegrad.combine_out(grads, coeffs, skip, out)
    return out


def solvers() -> dict[str, Callable[..., methods.SolveResult]]:
    return {
        name: getattr(torch.ops.camegrad, spec.native_op)
        for name, spec in methods.REGISTRY.items()
        if spec.native_op is not None
    }
