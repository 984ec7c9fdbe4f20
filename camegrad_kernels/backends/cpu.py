"""The C++ CPU backend: ``torch.ops.camegrad`` ops implemented in csrc/cpu/."""

from __future__ import annotations

import torch

from .. import ops
from .native import combine, gram, solvers

NAME = "cpu"
MAX_TASKS: dict[str, int] = {}  # every pass takes any n

__all__ = ["MAX_TASKS", "NAME", "combine", "gram", "solvers", "unavailable_reason"]


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if not ops.HAS_CPU_OPS:
        return f"the C++ extension camegrad_kernels._C is not built ({ops.LOAD_ERRORS.get('_C')})"
    if device.type != "cpu":
        return f"it runs CPU tensors only, got a tensor on {device}"
    return None
