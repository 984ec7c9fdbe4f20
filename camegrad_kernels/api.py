"""The public ops: validation and the one dispatch point.

Data flows one way: grads -> validate -> gram -> coefficients -> combine.
Backends (backends/*.py) receive validated inputs and never sync the host;
the only host reads here are the documented ones (weights given as a device
tensor are checked on the host; ``nonfinite="raise"`` reads n flags back).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Optional, Union

import torch
from torch import Tensor

from . import backends, methods, solver
from .backends.reference import accumulate_dtype as _accumulate_dtype

Weights = Optional[Union[Sequence[float], Tensor]]
DEFAULT_STAGES = ("rectify", "rescale", "fuse")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKEND_NAMES = ("auto",) + backends.PRIORITY
_STEP_NONFINITE = ("raise", "skip")  # camegrad_step's nonfinite= choices


@dataclass
class Coefficients:
    """Result of :func:`camegrad_coefficients` (all tensors on the Gram's device).

    coeffs [n]: g_final = coeffs @ G. skipped [] bool: the Gram matrix was not
    finite. alpha [n] and duality_gap [] depend on the method
    (:mod:`camegrad_kernels.methods`):

    * "camegrad": the Stage-1 dual solution (NaN when Stage 1 is off) and its
      normalised duality gap (design note §2);
    * "cagrad": CAGrad's simplex weights w* (the same dual) and its gap;
    * "mgda": the min-norm weights on the (normalised) gradients and the
      normalised Frank-Wolfe gap (alpha^T M alpha - min_i (M alpha)_i) / max_i M_ii;
    * "pcgrad", "linear": NaN (nothing is solved).
    """

    alpha: Tensor
    coeffs: Tensor
    duality_gap: Tensor
    skipped: Tensor


@dataclass
class StepInfo(Coefficients):
    """What :func:`camegrad_step` computed, as device tensors (reading syncs).

    gram [n, n]: G G^T. cosines [n, n]: pairwise task cosines (0 for a zero
    gradient). backend: the backend that ran.
    """

    gram: Tensor = None  # type: ignore[assignment]
    cosines: Tensor = None  # type: ignore[assignment]
    backend: str = ""


def available_backends() -> list[str]:
    """Backends that can run on this machine, in "auto"'s priority order."""
    names = []
    for name in backends.PRIORITY:
        module = backends.load(name)
        device = torch.device("cuda" if name == "cuda" else _default_device(name))
        if module.unavailable_reason(device, torch.float32) is None:
            names.append(name)
    return names


def _default_device(name: str) -> str:
    return "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"


def _check_backend_name(backend: object) -> None:
    if not isinstance(backend, str) or backend not in _BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {_BACKEND_NAMES}, got {backend!r}")


def _select_backend(backend: str, device: torch.device, dtype: torch.dtype) -> ModuleType:
    _check_backend_name(backend)
    if backend == "auto":
        backend = os.environ.get("CAMEGRAD_BACKEND", "auto") or "auto"
        if backend not in _BACKEND_NAMES:
            raise ValueError(
                f"CAMEGRAD_BACKEND: expected one of {_BACKEND_NAMES}, got {backend!r}"
            )
    if backend != "auto":
        module = backends.load(backend)
        reason = module.unavailable_reason(device, dtype)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} cannot run {dtype} on {device}: {reason}")
        return module
    for name in backends.PRIORITY:
        if name == "triton" and device.type == "cpu":
            continue  # the Triton interpreter is for tests, never a fast path
        module = backends.load(name)
        if module.unavailable_reason(device, dtype) is None:
            return module
    raise RuntimeError(f"no backend can run {dtype} on {device}")  # unreachable: reference


# --------------------------------------------------------------------------- checks


def _check_grads(grads: object, name: str = "grads") -> Tensor:
    if not isinstance(grads, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [n, d], got {type(grads).__name__}")
    if grads.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected dtype float16, bfloat16, float32 or float64, got {grads.dtype}"
        )
    if grads.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [n, d], got shape {tuple(grads.shape)}")
    n, d = grads.shape
    if n < 1:
        raise ValueError(f"{name}: expected n >= 1 task gradients (rows), got n = {n}")
    if d < 1:
        raise ValueError(f"{name}: expected d >= 1 parameters (columns), got d = {d}")
    if not grads.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous [n, d] tensor (rows back to back), got strides "
            f"{grads.stride()}; call .contiguous() or fill a preallocated buffer"
        )
    return grads.detach()


def _check_gram(gram: object) -> Tensor:
    if not isinstance(gram, Tensor):
        raise TypeError(f"gram: expected a torch.Tensor [n, n], got {type(gram).__name__}")
    if gram.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"gram: expected dtype float32 or float64, got {gram.dtype}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram: expected a square [n, n] tensor with n >= 1, got {tuple(gram.shape)}")
    return gram.detach().contiguous()


def _check_hyper(rho: float, kappa: float, nu: float, eps: float) -> None:
    checks = (
        ("rho", rho, lambda v: v >= 0, ">= 0"),
        ("kappa", kappa, lambda v: v > 0, "> 0"),
        ("nu", nu, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("eps", eps, lambda v: v >= 0, ">= 0"),
    )
    for name, value, ok, expected in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
        if not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name}: expected a finite number {expected}, got {value}")


def stage_mask(stages: Sequence[str]) -> int:
    """The solver's bit mask for a collection of stage names."""
    if isinstance(stages, str):
        raise TypeError(f"stages: expected a collection of stage names, got the string {stages!r}")
    mask = 0
    for stage in stages:
        if stage not in solver.STAGE_FLAGS:
            raise ValueError(f"stages: unknown stage {stage!r}; expected some of {DEFAULT_STAGES}")
        mask |= solver.STAGE_FLAGS[stage]
    return mask


def _check_weights(weights: Weights, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Weights as an [n] tensor of ``dtype`` on ``device`` (all ones when None)."""
    if weights is None:
        return torch.ones(n, dtype=dtype, device=device)
    if isinstance(weights, Tensor):
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(f"weights: expected real numbers, got dtype {weights.dtype}")
        if weights.device.type != "cpu" and weights.device != device:
            raise ValueError(f"weights: expected a tensor on {device} or the CPU, got {weights.device}")
        host = weights.detach().to("cpu", torch.float64)  # the documented host read
    else:
        try:
            host = torch.tensor(list(weights), dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"weights: expected a sequence of n = {n} numbers ({exc})") from None
    if host.shape != (n,):
        raise ValueError(f"weights: expected shape ({n},) (one per task), got {tuple(host.shape)}")
    if not torch.isfinite(host).all():
        raise ValueError(f"weights: expected finite values, got {host.tolist()}")
    if (host < 0).any():
        raise ValueError(f"weights: expected values >= 0, got {host.tolist()}")
    if host.sum() <= 0:
        raise ValueError("weights: expected a positive sum, got all zeros")
    return backends.upload(host.to(dtype), device)


def _check_out(out: Tensor | None, grads: Tensor) -> Tensor:
    d = grads.shape[1]
    if out is None:
        return torch.empty(d, dtype=grads.dtype, device=grads.device)
    if not isinstance(out, Tensor):
        raise TypeError(f"out: expected a torch.Tensor [d], got {type(out).__name__}")
    if out.shape != (d,):
        raise ValueError(f"out: expected shape ({d},), got {tuple(out.shape)}")
    if out.dtype != grads.dtype:
        raise TypeError(f"out: expected dtype {grads.dtype} (the gradients' dtype), got {out.dtype}")
    if out.device != grads.device:
        raise ValueError(f"out: expected a tensor on {grads.device}, got {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous tensor, got stride {out.stride()}")
    return out


def _check_coeffs(coeffs: object, grads: Tensor) -> Tensor:
    if not isinstance(coeffs, Tensor):
        raise TypeError(f"coeffs: expected a torch.Tensor [n], got {type(coeffs).__name__}")
    n = grads.shape[0]
    if coeffs.shape != (n,):
        raise ValueError(f"coeffs: expected shape ({n},), got {tuple(coeffs.shape)}")
    if not coeffs.is_floating_point():
        raise TypeError(f"coeffs: expected a floating dtype, got {coeffs.dtype}")
    if coeffs.device != grads.device:
        raise ValueError(f"coeffs: expected a tensor on {grads.device}, got {coeffs.device}")
    return coeffs.detach().to(_accumulate_dtype(grads.dtype)).contiguous()


def _check_step_args(
    grads: Tensor,
    weights: Weights,
    rho: float,
    kappa: float,
    nu: float,
    eps: float,
    stages: Sequence[str],
    out: Tensor | None,
    backend: str,
    nonfinite: str,
) -> tuple[Tensor, Tensor, int, ModuleType]:
    """The checks of a step's other arguments, once ``grads`` passed its own.

    Returns (out, weights in the accumulation dtype on grads' device, stage
    mask, backend module).
    """
    _check_hyper(rho, kappa, nu, eps)
    mask = stage_mask(stages)
    if nonfinite not in _STEP_NONFINITE:
        raise ValueError(f"nonfinite: expected 'raise' or 'skip', got {nonfinite!r}")
    out = _check_out(out, grads)
    w = _check_weights(weights, grads.shape[0], _accumulate_dtype(grads.dtype), grads.device)
    return out, w, mask, _select_backend(backend, grads.device, grads.dtype)


def _finish_step(
    module: ModuleType,
    grads: Tensor,
    gram: Tensor,
    solve_args: tuple,
    out: Tensor,
    nonfinite: str,
    return_info: bool,
    method: str = "camegrad",
    method_options: dict | None = None,
) -> Tensor | tuple[Tensor, StepInfo]:
    """A step after its Gram: the nonfinite check, the solve, the combine into ``out``.

    ``solve_args`` = (weights, rho, kappa, nu, eps, stage mask), as the backend's
    ``coefficients`` takes them after the Gram. ``method`` other than "camegrad"
    solves with the backend's baseline solvers (:func:`methods.coefficients`,
    ``method_options`` as :func:`methods.check_method` returns them).
    """
    if nonfinite == "raise":
        _raise_on_nonfinite(gram)
    alpha, coeffs, gap, skipped = _solve(module, gram, solve_args, method, method_options)
    if grads.shape[1]:  # an empty column shard (camegrad_step_sharded) has nothing to combine
        module.combine(grads, coeffs, out, skipped if nonfinite == "skip" else None)
    if not return_info:
        return out
    return out, StepInfo(alpha, coeffs, gap, skipped, gram, task_cosines(gram), module.NAME)


def _solve(
    module: ModuleType, gram: Tensor, solve_args: tuple, method: str, options: dict | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha, coeffs, gap, skipped) from the backend's native solver of ``method``."""
    if method == "camegrad":
        return module.coefficients(gram, *solve_args)
    w, rho = solve_args[0], solve_args[1]
    return methods.coefficients(module, method, gram, w.to(gram.dtype), rho, options or {})


def _raise_on_nonfinite(gram: Tensor) -> None:
    """``nonfinite="raise"``: one n x n read to the host, naming the bad tasks."""
    finite = torch.isfinite(gram).cpu()
    if bool(finite.all()):
        return
    bad = [i for i, ok in enumerate(torch.diagonal(finite).tolist()) if not ok]
    if bad:
        raise ValueError(
            f"grads: task gradient(s) {bad} hold NaN or Inf values "
            f"(or values too large for the {gram.dtype} Gram matrix)"
        )
    raise ValueError("grads: the Gram matrix overflowed (gradients too large for its dtype)")


# --------------------------------------------------------------------------- public ops


def gram(grads: Tensor, *, backend: str = "auto") -> Tensor:
    """The Gram matrix M = G G^T of task gradients ``grads`` [n, d].

    Returns [n, n] float32 for fp16/bf16/fp32 input, float64 for fp64 input.
    """
    grads = _check_grads(grads)
    return _select_backend(backend, grads.device, grads.dtype).gram(grads)


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
    """CAME-Grad coefficients from the Gram matrix ``gram`` [n, n] (fp32/fp64).

    ``g_final = coeffs @ G``. Runs on the Gram's device without a host sync.
    ``method`` / ``method_options``: as :func:`camegrad_step`.
    """
    options = methods.check_method(method, method_options)
    gram = _check_gram(gram)
    _check_hyper(rho, kappa, nu, eps)
    mask = stage_mask(stages)
    w = _check_weights(weights, gram.shape[0], gram.dtype, gram.device)
    module = _select_backend(backend, gram.device, gram.dtype)
    solve_args = (w, rho, kappa, nu, eps, mask)
    return Coefficients(*_solve(module, gram, solve_args, method, options))


def combine(
    grads: Tensor, coeffs: Tensor, *, out: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """``out = coeffs @ grads``: [n] x [n, d] -> [d] in grads' dtype (or into ``out``)."""
    grads = _check_grads(grads)
    coeffs = _check_coeffs(coeffs, grads)
    out = _check_out(out, grads)
    return _select_backend(backend, grads.device, grads.dtype).combine(grads, coeffs, out, None)


def task_cosines(gram: Tensor) -> Tensor:
    """Pairwise cosines M_ij / sqrt(M_ii M_jj) from the Gram matrix (0 for zero rows)."""
    norms = torch.sqrt(torch.diagonal(gram).clamp_min(0.0))
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(gram.dtype).tiny), 0.0)


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
    """One CAME-Grad step: g_final [d] from task gradients ``grads`` [n, d].

    Args:
        grads: contiguous [n, d] fp16/bf16/fp32/fp64 task gradients (row i = task i).
        weights: n non-negative task weights with a positive sum (default ones).
        rho, kappa, nu, eps: the paper's hyperparameters (Algorithm 1).
        stages: which of "rectify", "rescale", "fuse" run (paper Table 4).
        out: optional [d] tensor of grads' dtype to write into (e.g. a flat .grad).
        backend: "auto" (or $CAMEGRAD_BACKEND), "cuda", "triton", "cpu", "reference".
        nonfinite: "raise" reads n flags to the host and raises ValueError naming
            the tasks holding NaN/Inf; "skip" writes a zero update and sets
            ``info.skipped`` on the device, with no host sync.
        return_info: also return a :class:`StepInfo`.
        process_group: when given, ``grads`` is this rank's [n, d_local] column
            shard: the Gram partials are all-reduced on the group, every rank
            solves the same coefficients and combines its own shard
            (:func:`camegrad_kernels.distributed.camegrad_step_sharded`).
        method: "camegrad" (default: the backend's native fused solver),
            "cagrad", "mgda", "pcgrad" or "linear": the baselines of
            :mod:`camegrad_kernels.methods`, solved by the backend's native
            solver on the Gram's device (no host sync; linear solves nothing),
            then combined by the backend. They read
            ``rho`` (cagrad's ``c``) and ``weights`` (they act on the gradients
            of the weighted losses w_i L_i); kappa, nu, eps and stages are
            CAME-Grad's only and ignored by them.
        method_options: per-method options: cagrad ``{"rescale": 0 | 1 | 2}``
            (default 1), mgda ``{"normalization": "none" | "l2"}`` (default
            "none"), pcgrad ``{"seed": int | None, "reduction": "sum" | "mean"}``
            (default None: a seed drawn from torch's global CPU generator,
            "sum"). An option the method does not take is a ValueError.

    Returns:
        The update [d] in grads' dtype (``out`` when given), or (update, info).
    """
    if process_group is not None:
        from .distributed import camegrad_step_sharded  # distributed imports this module

        return camegrad_step_sharded(
            grads, weights, process_group=process_group, rho=rho, kappa=kappa, nu=nu, eps=eps,
            stages=stages, out=out, backend=backend, nonfinite=nonfinite, return_info=return_info,
            method=method, method_options=method_options,
        )
    options = methods.check_method(method, method_options)
    grads = _check_grads(grads)
    out, w, mask, module = _check_step_args(
        grads, weights, rho, kappa, nu, eps, stages, out, backend, nonfinite
    )
    solve_args = (w, rho, kappa, nu, eps, mask)
    return _finish_step(
        module, grads, module.gram(grads), solve_args, out, nonfinite, return_info, method, options
    )
