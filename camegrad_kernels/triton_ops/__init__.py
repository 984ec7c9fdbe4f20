"""Triton kernels of the three CAME-Grad passes, one op per module, and the baselines.

Importing this package imports triton and decorates the kernels; Triton reads
TRITON_INTERPRET at that moment, so CPU runs must set it first. backends/triton.py
imports it lazily for that reason (and so ``import camegrad_kernels`` never needs
triton).
"""

import triton as _triton

if _triton.knobs.runtime.interpret:
    from . import interpreter_compat as _interpreter_compat

    _interpreter_compat.patch()  # triton 3.6 + numpy >= 2.4 (see the module)

from .combine import combine
from .gram import gram
from .methods import mgda_coefficients, pcgrad_coefficients
from .solve import cagrad_coefficients, coefficients

__all__ = [
    "cagrad_coefficients",
    "coefficients",
    "combine",
    "gram",
    "mgda_coefficients",
    "pcgrad_coefficients",
]
