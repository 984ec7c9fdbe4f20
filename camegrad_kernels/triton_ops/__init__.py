"""Triton kernels of the three CAME-Grad passes, one op per module, and the baselines.

Importing this package imports triton and decorates the kernels; Triton reads
TRITON_INTERPRET at that moment, so CPU runs must set it first. backends/triton.py
imports it lazily for that reason (and so ``import camegrad_kernels`` never needs
triton).
"""

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
