"""The multi-task methods: one module (one :class:`MethodSpec`) each, one registry.

Adding a method is one module here (its spec, its torch-ops solve) plus one
line in ``_MODULES``; dispatch, fakes, trainer classes, CLI choices and bench
labels follow from the registry. A native solver (C++/CUDA/Triton) is
optional: a backend without one runs the spec's torch-ops solve, and
``info.backends["solve"]`` says so.

Every solve works on the n x n Gram matrix ``M = G G^T`` only, runs on M's
device with fixed work (no ``.item()``, no data-dependent Python branching, no
host sync) and returns ``(alpha [n], coeffs [n], gap [], skipped [])`` with
``g_final = coeffs @ G``; ``skipped`` says that M was not finite (then coeffs
are 0 and alpha/gap NaN).

Task weights: the baselines act on the gradients of the weighted losses,
``h_i = w_i g_i`` (Gram ``w w^T * M``), exactly as if each method were handed
``w_i L_i``; the coefficients come back for the raw ``g_i`` (``c = w * c_h``).
With the default all-ones weights each method is as published.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import cagrad, camegrad, linear, mgda, pcgrad
from .cagrad import cagrad_coefficients
from .linear import linear_coefficients
from .mgda import mgda_coefficients
from .pcgrad import pcgrad_coefficients, pcgrad_order
from .spec import Hyper, MethodSpec, Option, SolveResult, TrainerArg

_MODULES = (camegrad, cagrad, mgda, pcgrad, linear)
REGISTRY: dict[str, MethodSpec] = {module.SPEC.name: module.SPEC for module in _MODULES}
METHODS = tuple(REGISTRY)


def get(method: object) -> MethodSpec:
    """The spec of ``method`` (a registered name), else ValueError naming the choices."""
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    return REGISTRY[method]


def check_method(method: object, options: Mapping[str, object] | None) -> dict[str, object]:
    """Validate ``method`` and its ``method_options``; return the options with defaults."""
    return get(method).check_options(options)


__all__ = [
    "METHODS",
    "REGISTRY",
    "Hyper",
    "MethodSpec",
    "Option",
    "SolveResult",
    "TrainerArg",
    "cagrad_coefficients",
    "check_method",
    "get",
    "linear_coefficients",
    "mgda_coefficients",
    "pcgrad_coefficients",
    "pcgrad_order",
]
