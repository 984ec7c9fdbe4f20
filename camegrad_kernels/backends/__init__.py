"""Backends: modules with the same small interface, picked in one place (api.py).

Every backend module defines::

    NAME: str
    def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None
        # None when it can run tensors of this device and dtype, else why not.
    def gram(grads: Tensor) -> Tensor
        # grads [n, d] contiguous fp16/bf16/fp32/fp64 -> M [n, n], fp32 (fp64 for fp64).
    def coefficients(gram, weights, rho, kappa, nu, eps, stages: int)
        -> (alpha [n], coeffs [n], duality_gap [], skipped [] bool)
        # gram [n, n] fp32/fp64, weights [n] in gram's dtype on its device,
        # stages a bit mask of solver.RECTIFY | RESCALE | FUSE. No host sync.
    def combine(grads, coeffs, out, skip) -> Tensor
        # out[d] = coeffs @ grads written into ``out`` (grads' dtype); zeros when
        # ``skip`` (a 0-dim bool tensor, or None) is true. No host sync.

Inputs reach a backend already validated (api.py); backends do no checking.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Priority order of "auto": fastest first; "reference" runs anywhere.
PRIORITY = ("cuda", "triton", "cpu", "reference")


def load(name: str) -> ModuleType:
    """The backend module called ``name`` (one of PRIORITY)."""
    return importlib.import_module(f"{__name__}.{name}")
