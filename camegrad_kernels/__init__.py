"""camegrad_kernels: fused, exact, host-sync-free CAME-Grad multi-task gradient steps.

    update = camegrad_kernels.camegrad_step(G)      # G: [n_tasks, d] task gradients

See README.md; the maths is in the design note and ``camegrad_kernels.reference``.
"""

from .api import (
    Coefficients,
    StepInfo,
    available_backends,
    camegrad_coefficients,
    camegrad_step,
    combine,
    gram,
    task_cosines,
)
from . import reference
from .trainer import CAMEGrad, TrainStepInfo

__all__ = [
    "CAMEGrad",
    "Coefficients",
    "TrainStepInfo",
    "StepInfo",
    "available_backends",
    "camegrad_coefficients",
    "camegrad_step",
    "combine",
    "gram",
    "task_cosines",
]
__version__ = "0.1.0"
