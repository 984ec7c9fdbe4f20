"""The torch-ops backend ("torch"): runs on any device, the fallback of every pass.

Three torch steps: ``G @ G^T`` in float64 for every input dtype (fixed column
chunks converted to fp64: products of fp16/bf16/fp32 values are exact there),
each method's torch-ops solve (``camegrad_kernels.methods``), and ``c @ G``
(fp32 accumulation, fp64 for fp64 input). The solves are registered as
``torch.ops.camegrad_torch.<method>`` custom ops: opaque to ``torch.compile``
(one node, not the 128 unrolled solver iterations) and checked by opcheck.
(The paper-literal, vector-space ground truth is ``camegrad_kernels.reference``.)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from .. import methods, ops
from ..dtypes import accumulate_dtype, gram_dtype

NAME = "torch"
MAX_TASKS: dict[str, int] = {}  # every pass takes any n

# Columns per fp64 chunk of the Gram: a fixed size (the summation order depends on
# d only), and at most n * 2^16 doubles of temporary memory whatever d is.
GRAM_CHUNK = 1 << 16


def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def gram(grads: Tensor) -> Tensor:
    if grads.dtype == torch.float64:
        return grads @ grads.T
    n, d = grads.shape
    M = torch.zeros((n, n), dtype=gram_dtype(grads.dtype, grads.device), device=grads.device)
    for k in range(0, d, GRAM_CHUNK):  # chunk sums added in column order
        g = grads[:, k : k + GRAM_CHUNK].to(M.dtype)
        M.addmm_(g, g.T)
    return M


def combine(grads: Tensor, coeffs: Tensor, out: Tensor, skip: Tensor | None) -> Tensor:
    # coeffs come in the Gram's dtype (float64) or any other: rounded to the combine's.
    acc = accumulate_dtype(grads.dtype)
    update = coeffs.to(acc) @ grads.to(acc)
    if skip is not None:
        update = torch.where(skip, torch.zeros_like(update), update)
    return out.copy_(update)


def _unaliased(solve: Callable[..., methods.SolveResult]) -> Callable[..., methods.SolveResult]:
    """``solve`` with every output a tensor of its own (a custom op's outputs may not alias)."""

    def run(*args: object) -> methods.SolveResult:
        seen = {a.untyped_storage().data_ptr() for a in args if isinstance(a, Tensor)}
        outs = []
        for t in solve(*args):
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
                ptr = t.untyped_storage().data_ptr()
            seen.add(ptr)
            outs.append(t)
        return tuple(outs)  # type: ignore[return-value]

    return run


def _register(spec: methods.MethodSpec) -> Callable[..., methods.SolveResult]:
    op = torch.library.custom_op(f"camegrad_torch::{spec.name}", mutates_args=())(
        _with_signature(_unaliased(spec.solve), spec.solve)
    )

    op.register_fake(ops.solve_fake)
    return op


def _with_signature(fn: Callable, like: Callable) -> Callable:
    """``fn`` carrying ``like``'s name, signature and annotations (custom_op reads them)."""
    wrapped = functools.wraps(like)(fn)
    wrapped.__signature__ = inspect.signature(like, eval_str=True)  # type: ignore[attr-defined]
    return wrapped


SOLVERS = {name: _register(spec) for name, spec in methods.REGISTRY.items()}


def solvers() -> dict[str, Callable[..., methods.SolveResult]]:
    return SOLVERS
