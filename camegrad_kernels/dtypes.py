"""The package's dtype policy: which dtypes go in, what the Gram and the combine work in."""

from __future__ import annotations

import torch

# Gradient dtypes every backend takes.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


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
