"""camegrad_kernels: fused, exact, host-sync-free CAME-Grad multi-task gradient steps.

    update = camegrad_kernels.camegrad_step(G)      # G: [n_tasks, d] task gradients
    update = camegrad_kernels.step(G, "mgda")       # any method of camegrad_kernels.methods

See README.md; the maths is in docs/camegrad.md and ``camegrad_kernels.reference``.
Importing the package registers the ``torch.ops.camegrad`` ops (C++/CUDA, where
built) and the ``torch.ops.camegrad_torch`` ones (the torch-ops solves).
"""

from . import methods, ops, presets, reference  # ops: registers torch.ops.camegrad at import
from .api import (
    Coefficients,
    StepInfo,
    available_backends,
    camegrad_coefficients,
    camegrad_step,
    coefficients,
    combine,
    gram,
    step,
    task_cosines,
)
from .backends import torch_ops as _torch_ops  # noqa: F401 - registers camegrad_torch::*
from .compat import CAME_Grad
from .presets import PRESETS
from .trainer import TRAINERS, CAMEGrad, TrainStepInfo

# One trainer class per method spec that names one (CAGrad, MGDA, PCGrad, ...).
globals().update(TRAINERS)

__all__ = [  # noqa: PLE0604 - the trainer classes' names come from the method registry
    "PRESETS",
    "CAMEGrad",
    "CAME_Grad",
    "Coefficients",
    "StepInfo",
    "TrainStepInfo",
    "available_backends",
    "camegrad_coefficients",
    "camegrad_step",
    "coefficients",
    "combine",
    "gram",
    "methods",
    "ops",
    "presets",
    "reference",
    "step",
    "task_cosines",
    *TRAINERS,
]
__version__ = "0.1.0"
