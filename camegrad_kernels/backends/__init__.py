"""Backends: modules with the same small interface, picked in one place (api.py).

Every backend module defines::

    NAME: str
    def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None
        # None when it can run tensors of this device and dtype, else why not.
    def gram(grads: Tensor) -> Tensor
        # grads [n, d] contiguous fp16/bf16/fp32/fp64 -> M [n, n] float64 for every
        # dtype (reference.gram_dtype), accurate to ~eps64 |g_i| |g_j|.
    def coefficients(gram, weights, rho, kappa, nu, eps, stages: int)
        -> (alpha [n], coeffs [n], duality_gap [], skipped [] bool)
        # gram [n, n] fp32/fp64, weights [n] in gram's dtype on its device,
        # stages a bit mask of solver.RECTIFY | RESCALE | FUSE. No host sync.
    def cagrad_coefficients(gram, weights, rho, rescale: int)
    def mgda_coefficients(gram, weights, normalization: str)
    def pcgrad_coefficients(gram, weights, order, reduction: str)
        # The baselines of camegrad_kernels/methods.py (same arguments, same
        # returns as coefficients); order [n, n] int64 on gram's device.
    def combine(grads, coeffs, out, skip) -> Tensor
        # out[d] = coeffs @ grads written into ``out`` (grads' dtype); zeros when
        # ``skip`` (a 0-dim bool tensor, or None) is true. No host sync. coeffs
        # come in the Gram's dtype (float64) and are rounded to the combine's
        # dtype, reference.accumulate_dtype(grads.dtype), before the kernel.

Inputs reach a backend already validated (api.py); backends do no checking.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor

# Priority order of "auto": fastest first; "reference" runs anywhere.
PRIORITY = ("cuda", "triton", "cpu", "reference")


def load(name: str) -> ModuleType:
    """The backend module called ``name`` (one of PRIORITY)."""
    return importlib.import_module(f"{__name__}.{name}")


def upload(host: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on ``device``; to CUDA pinned and non-blocking (no host sync)."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
