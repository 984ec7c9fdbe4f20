"""camegrad_kernels: fused, exact, host-sync-free CAME-Grad multi-task gradient steps.

    update = camegrad_kernels.camegrad_step(G)      # G: [n_tasks, d] task gradients

See README.md; the maths is in docs/camegrad.md and ``camegrad_kernels.reference``.
"""

from . import methods, presets, reference
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
from .compat import CAME_Grad
from .presets import PRESETS
from .trainer import MGDA, CAGrad, CAMEGrad, LinearScalarization, PCGrad, TrainStepInfo

__all__ = [
    "MGDA",
    "PRESETS",
    "CAGrad",
    "CAMEGrad",
    "CAME_Grad",
    "Coefficients",
    "LinearScalarization",
    "PCGrad",
    "StepInfo",
    "TrainStepInfo",
    "available_backends",
    "camegrad_coefficients",
    "camegrad_step",
    "combine",
    "gram",
    "methods",
    "presets",
    "reference",
    "task_cosines",
]
__version__ = "0.1.0"
