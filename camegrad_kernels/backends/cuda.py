"""The CUDA backend: ``torch.ops.camegrad`` ops implemented in csrc/cuda/.

The kernels cover up to MAX_TASKS["gram"] tasks for the Gram pass,
MAX_TASKS["solve"] for the one-block solvers and MAX_TASKS["combine"] for the
combine (csrc/cuda/camegrad_cuda.cuh);
beyond that the registry (backends/__init__.py) runs that pass with the torch
backend's ops, still on the device and without host syncs (the choice depends
on shapes only, and ``info.backends`` reports it).
"""

from __future__ import annotations

import torch

from .. import ops
from ..dtypes import FLOAT_DTYPES
from .native import combine, gram, solvers

NAME = "cuda"
# kGramMaxN, kSolveMaxN and kCombineMaxN of csrc/cuda/camegrad_cuda.cuh
# (tests/test_constants.py reads them there).
MAX_TASKS = {"gram": 256, "solve": 64, "combine": 4096}

__all__ = ["MAX_TASKS", "NAME", "combine", "gram", "solvers", "unavailable_reason"]


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if not ops.HAS_CUDA_OPS:
        error = ops.LOAD_ERRORS.get("_cuda") or ops.LOAD_ERRORS.get("_C")
        return f"the CUDA extension camegrad_kernels._cuda is not built ({error})"
    if device.type != "cuda":
        return f"it runs CUDA tensors only, got a tensor on {device}"
    if not torch.cuda.is_available():
        return "torch sees no usable CUDA device (torch.cuda.is_available() is False)"
    if dtype not in FLOAT_DTYPES:
        return f"it runs float16, bfloat16, float32 and float64 gradients, got {dtype}"
    return None
