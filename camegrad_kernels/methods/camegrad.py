"""CAME-Grad: rectify (S1), rescale (S2), fuse (S3) in Gram space (docs/camegrad.md).

The solve is :func:`camegrad_kernels.solver.camegrad_coefficients`; the native
op ``torch.ops.camegrad.coefficients`` (csrc/cpu/solver.h, csrc/cuda/solve.cu,
triton_ops/solve.py) runs the same algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import solver
from .spec import Hyper, MethodSpec


def solve_args(
    hyper: Hyper, options: Mapping[str, object], n: int, device: torch.device
) -> tuple[float, float, float, float, int]:
    return hyper.rho, hyper.kappa, hyper.nu, hyper.eps, hyper.stages


SPEC = MethodSpec(
    name="camegrad",
    title="CAME-Grad",
    solve=solver.camegrad_coefficients,
    solve_args=solve_args,
    reads=("rho", "kappa", "nu", "eps", "stages"),
    native_op="coefficients",
    alpha="the Stage-1 dual solution (NaN when Stage 1 is off)",
    gap="the normalised duality gap of alpha (docs/camegrad.md §2)",
    style=("tab:red", "o"),
)
