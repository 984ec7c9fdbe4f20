"""Triton kernels of the three CAME-Grad passes, one op per module.

Importing this package imports triton and decorates the kernels; Triton reads
TRITON_INTERPRET at that moment, so CPU runs must set it first. backends/triton.py
imports it lazily for that reason (and so ``import camegrad_kernels`` never needs
triton).
"""

from .combine import combine
from .gram import gram
from .solve import coefficients

__all__ = ["coefficients", "combine", "gram"]
