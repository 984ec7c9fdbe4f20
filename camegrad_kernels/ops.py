"""The ``torch.ops.camegrad`` custom ops: loading the C++ library, fake kernels.

Schemas live in csrc/ops.cpp (TORCH_LIBRARY(camegrad, m)); the CPU kernels in
``camegrad_kernels._C`` and the CUDA kernels in ``camegrad_kernels._cuda``
register their implementations. The fake (meta) kernels below give shapes and
dtypes only, so ``torch.compile`` traces the ops and ``torch.library.opcheck``
passes.
"""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

from . import methods

LOAD_ERRORS: dict[str, str] = {}


def _load(module: str) -> bool:
    try:
        importlib.import_module(f"camegrad_kernels.{module}")
    except ImportError as exc:  # not built, or built against another torch
        LOAD_ERRORS[module] = str(exc)
        return False
    return True


HAS_CPU_OPS = _load("_C")
HAS_CUDA_OPS = HAS_CPU_OPS and _load("_cuda")


# The Gram (and so the coefficients solved from it) is float64 for every input
# dtype (dtypes.gram_dtype); the combine accumulates in fp32 for
# fp16/bf16/fp32 gradients but writes grads' dtype.
_GRAM_DTYPE = torch.float64


def solve_fake(gram: Tensor, *args: object) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fake of every solve (native or torch-ops): alpha [n], coeffs [n], gap [], skipped []."""
    n = gram.shape[0]
    return (
        gram.new_empty((n,)),
        gram.new_empty((n,)),
        gram.new_empty(()),
        gram.new_empty((), dtype=torch.bool),
    )


if HAS_CPU_OPS:

    @torch.library.register_fake("camegrad::gram")
    def _gram_fake(grads: Tensor) -> Tensor:
        n = grads.shape[0]
        return grads.new_empty((n, n), dtype=_GRAM_DTYPE)

    # Every method's native solve op (MethodSpec.native_op) has the same outputs.
    for _spec in methods.REGISTRY.values():
        if _spec.native_op is not None:
            torch.library.register_fake(f"camegrad::{_spec.native_op}")(solve_fake)

    @torch.library.register_fake("camegrad::combine")
    def _combine_fake(grads: Tensor, coeffs: Tensor, skip: Tensor | None = None) -> Tensor:
        return grads.new_empty((grads.shape[1],))

    @torch.library.register_fake("camegrad::combine_out")
    def _combine_out_fake(grads: Tensor, coeffs: Tensor, skip: Tensor | None, out: Tensor) -> None:
        return None

    @torch.library.register_fake("camegrad::step")
    def _step_fake(
        grads: Tensor, weights: Tensor, rho: float, kappa: float, nu: float, eps: float, stages: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        n, d = grads.shape
        acc = _GRAM_DTYPE  # the Gram's dtype: alpha, coeffs and gap come back in it
        return (
            grads.new_empty((d,)),
            grads.new_empty((n, n), dtype=acc),
            grads.new_empty((n,), dtype=acc),
            grads.new_empty((n,), dtype=acc),
            grads.new_empty((), dtype=acc),
            grads.new_empty((), dtype=torch.bool),
        )
