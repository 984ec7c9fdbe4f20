"""The public ops: argument checks (validation.py), then the step core (core.py).

Data flows one way: grads -> validate -> gram -> coefficients -> combine.
Backends (backends/*.py) receive validated inputs and never sync the host;
the only host reads are the documented ones (weights given as a device
tensor are read to the host; ``nonfinite="raise"`` reads n x n flags, n
coefficients and one bound back, plus, rarely, one flag of the update;
:func:`camegrad_coefficients` checks a CPU Gram on the host).

``step`` / ``coefficients`` take any method of :mod:`camegrad_kernels.methods`;
``camegrad_step`` / ``camegrad_coefficients`` are the same with CAME-Grad as the
default method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import backends, core, distributed, validation
from .core import Coefficients, StepInfo, task_cosines
from .dtypes import accumulate_dtype
from .validation import DEFAULT_STAGES, Weights

__all__ = [
    "DEFAULT_STAGES",
    "Coefficients",
    "StepInfo",
    "Weights",
    "available_backends",
    "camegrad_coefficients",
    "camegrad_step",
    "coefficients",
    "combine",
    "gram",
    "step",
    "task_cosines",
]


def available_backends() -> list[str]:
    """Backends that can run on this machine, in "auto"'s priority order."""
    return backends.available()


def gram(grads: Tensor, *, backend: str = "auto") -> Tensor:
    """The Gram matrix M = G G^T of task gradients ``grads`` [n, d].

    Returns [n, n] float64 for every input dtype (fp16/bf16/fp32/fp64): the
    products of the inputs are exact in fp64 and summed there, so M is accurate
    to ~eps64 |g_i| |g_j| even when task norms differ by 1e7x, where an fp32
    Gram would decide the solver's answer. Deterministic: same bits for the
    same input, whatever the thread count.
    """
    grads = validation.check_grads(grads)
    plan = backends.resolve(backends.requested(backend), grads.device, grads.dtype, grads.shape[0])
    return plan.gram.fn(grads)


def coefficients(
    gram: Tensor,
    method: str = "camegrad",
    weights: Weights = None,
    *,
    method_options: dict | None = None,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = DEFAULT_STAGES,
    backend: str = "auto",
) -> Coefficients:
    """The coefficients of ``method`` from the Gram matrix ``gram`` [n, n] (fp32/fp64).

    ``g_final = coeffs @ G``. Arguments as :func:`step`. The weights, rho,
    kappa and eps must be finite in gram's dtype (as must kappa * sum(weights)),
    else ValueError.

    ``gram`` is checked to be a Gram matrix (symmetric positive semidefinite,
    to rounding: :func:`validation.gram_tolerances`). A CPU tensor is checked on
    the host (an eigvalsh of the n x n matrix) and a failure is a ValueError.
    On another device it runs without a host sync: cheap necessary conditions
    (no negative diagonal entry, symmetry, Cauchy-Schwarz for every pair) are
    checked there, and a Gram failing them comes back ``skipped`` (coeffs 0,
    alpha and the gap NaN), as a non-finite one does.
    """
    gram = validation.check_gram(gram)
    validation.check_weights_device(weights, gram.device)
    config = core.make_config(
        n=gram.shape[0], dtype=gram.dtype, what="the Gram's dtype", weights=weights, rho=rho,
        kappa=kappa, nu=nu, eps=eps, stages=stages, backend=backend, method=method,
        method_options=method_options,
    )
    return core.coefficients(config, gram, check_gram=True)


def camegrad_coefficients(
    gram: Tensor,
    weights: Weights = None,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = DEFAULT_STAGES,
    backend: str = "auto",
    method: str = "camegrad",
    method_options: dict | None = None,
) -> Coefficients:
    """CAME-Grad coefficients from the Gram matrix ``gram`` [n, n]: :func:`coefficients`."""
    return coefficients(
        gram, method, weights, method_options=method_options, rho=rho, kappa=kappa, nu=nu,
        eps=eps, stages=stages, backend=backend,
    )


def combine(
    grads: Tensor, coeffs: Tensor, *, out: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """``out = coeffs @ grads``: [n] x [n, d] -> [d] in grads' dtype (or into ``out``).

    ``out`` must not require grad (with grad mode on); its version counter is
    bumped, as by torch's in-place ops.
    """
    grads = validation.check_grads(grads)
    coeffs = validation.check_coeffs(coeffs, grads)
    out = validation.check_out(out, grads)
    plan = backends.resolve(backends.requested(backend), grads.device, grads.dtype, grads.shape[0])
    return validation.written(plan.combine.fn(grads, coeffs, out, None))


def step(
    grads: Tensor,
    method: str = "camegrad",
    weights: Weights = None,
    *,
    method_options: dict | None = None,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = DEFAULT_STAGES,
    out: Tensor | None = None,
    backend: str = "auto",
    nonfinite: str = "raise",
    return_info: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
) -> Tensor | tuple[Tensor, StepInfo]:
    """One multi-task step of ``method``: g_final [d] from task gradients ``grads`` [n, d].

    Args:
        grads: contiguous [n, d] fp16/bf16/fp32/fp64 task gradients (row i = task i).
        method: a name of :data:`camegrad_kernels.methods.METHODS`: "camegrad"
            (default), "cagrad", "mgda", "pcgrad", "linear". Each is solved on
            the Gram's device with no host sync by the backend's native solver
            (or its torch-ops solve: ``info.backends``). The baselines read
            ``rho`` (cagrad's ``c``) and ``weights`` (they act on the gradients
            of the weighted losses w_i L_i); kappa, nu, eps and stages are
            CAME-Grad's only and ignored by them. "linear" forms no Gram unless
            ``return_info`` asks for one.
        weights: n non-negative task weights with a positive sum (default ones),
            finite in the combine dtype (fp32 for fp16/bf16/fp32 gradients,
            fp64 for fp64), as kappa * sum(weights) must be (else ValueError).
            A list (or None) is checked in Python; a tensor is read to the host.
        method_options: per-method options (``methods.get(method).options``):
            cagrad ``{"rescale": 0 | 1 | 2}`` (default 1), mgda
            ``{"normalization": "none" | "l2"}`` (default "none"), pcgrad
            ``{"seed": int | None, "reduction": "sum" | "mean"}`` (default None:
            a seed drawn from torch's global CPU generator, "sum"). An option
            the method does not take is a ValueError.
        rho, kappa, nu, eps: the paper's hyperparameters (Algorithm 1); any real
            numbers (numpy scalars too, not bool), taken as floats.
        stages: which of "rectify", "rescale", "fuse" run (paper Table 4).
        out: optional [d] tensor of grads' dtype to write into (e.g. a flat .grad).
            Not one that requires grad (with grad mode on; ValueError, as torch's
            in-place ops); its version counter is bumped, so a backward through
            a saved ``out`` raises instead of using the update.
        backend: "auto" (or $CAMEGRAD_BACKEND), "cuda", "triton", "cpu", "torch".
        nonfinite: "raise" reads the n x n Gram's finiteness flags, the n
            coefficients' and a bound B = sum_i |c_i| ||g_i|| of the update to the
            host (one read) and raises ValueError naming the tasks holding
            NaN/Inf, or the non-finite coefficients; when B reaches half of
            finfo(grads.dtype).max it reads whether the update is finite too (a
            second read, only then) and raises if it overflowed (``out`` then
            holds it). "skip" writes a zero update and sets ``info.skipped`` on
            the device, with no host sync, when the Gram is not finite or the
            update is not (this costs one extra read of the d-vector and a
            masked write of it).
        return_info: also return a :class:`StepInfo` (a bool, else TypeError).
        process_group: when given, ``grads`` is this rank's [n, d_local] column
            shard: the Gram partials are all-reduced on the group, every rank
            solves the same coefficients and combines its own shard
            (:func:`camegrad_kernels.distributed.step_sharded`).

    Returns:
        The update [d] in grads' dtype (``out`` when given), or (update, info).
    """
    settings = {
        "weights": weights, "rho": rho, "kappa": kappa, "nu": nu, "eps": eps, "stages": stages,
        "backend": backend, "nonfinite": nonfinite, "method": method,
        "method_options": method_options,
    }
    if process_group is not None:
        return distributed.step_sharded(
            grads, process_group=process_group, out=out, return_info=return_info, **settings
        )
    grads = validation.check_grads(grads)
    validation.check_bool(return_info, "return_info")
    out = validation.check_out(out, grads)
    validation.check_weights_device(weights, grads.device)
    acc = accumulate_dtype(grads.dtype)
    config = core.make_config(
        n=grads.shape[0], dtype=acc, what=f"the combine dtype of {grads.dtype} gradients",
        **settings,
    )
    out, info = core.run_step(config, grads, out, return_info=return_info)
    return (out, info) if return_info else out


def camegrad_step(
    grads: Tensor,
    weights: Weights = None,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = DEFAULT_STAGES,
    out: Tensor | None = None,
    backend: str = "auto",
    nonfinite: str = "raise",
    return_info: bool = False,
    process_group: torch.distributed.ProcessGroup | None = None,
    method: str = "camegrad",
    method_options: dict | None = None,
) -> Tensor | tuple[Tensor, StepInfo]:
    """One CAME-Grad step: g_final [d] from task gradients ``grads`` [n, d]; see :func:`step`."""
    return step(
        grads, method, weights, method_options=method_options, rho=rho, kappa=kappa, nu=nu,
        eps=eps, stages=stages, out=out, backend=backend, nonfinite=nonfinite,
        return_info=return_info, process_group=process_group,
    )
