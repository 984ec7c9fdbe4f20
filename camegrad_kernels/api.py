"""The public ops: validation and the one dispatch point.

Data flows one way: grads -> validate -> gram -> coefficients -> combine.
Backends (backends/*.py) receive validated inputs and never sync the host;
the only host reads here are the documented ones (weights given as a device
tensor are checked on the host; ``nonfinite="raise"`` reads n x n flags, n
coefficients and one bound back, plus, rarely, one flag of the update;
:func:`camegrad_coefficients` checks a CPU Gram on the host).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
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

    coeffs [n]: g_final = coeffs @ G. skipped [] bool: nothing was solved, coeffs
    are 0 and alpha / duality_gap NaN, because the Gram matrix was not finite or
    (:func:`camegrad_coefficients` given a Gram on a non-CPU device) failed the
    device-side Gram checks: a negative diagonal entry, an asymmetry
    |M_ij - M_ji| > 16 eps sqrt(M_ii M_jj), or |M_ij| > sqrt(M_ii M_jj) (1 + sqrt(eps))
    (eps of the Gram's dtype). A CPU Gram failing those checks, or not positive
    semidefinite, is a ValueError instead. From :func:`camegrad_step` with
    ``nonfinite="skip"``, skipped also says that the update overflowed grads'
    dtype (then zeroed; coeffs are kept). alpha [n] and duality_gap [] depend on the method
    (:mod:`camegrad_kernels.methods`):

    * "camegrad": the Stage-1 dual solution (NaN when Stage 1 is off) and its
      normalised duality gap (docs/camegrad.md §2);
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


def _check_hyper(
    rho: float, kappa: float, nu: float, eps: float
) -> tuple[float, float, float, float]:
    """The four hyperparameters as Python floats (any ``numbers.Real`` but bool is taken)."""
    checks = (
        ("rho", rho, lambda v: v >= 0, ">= 0"),
        ("kappa", kappa, lambda v: v > 0, "> 0"),
        ("nu", nu, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("eps", eps, lambda v: v >= 0, ">= 0"),
    )
    values = []
    for name, value, ok, expected in checks:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
        try:
            number = float(value)
        except (OverflowError, ValueError):  # e.g. an int beyond float64
            number = math.nan
        if not math.isfinite(number) or not ok(number):
            raise ValueError(f"{name}: expected a finite number {expected}, got {value}")
        values.append(number)
    return values[0], values[1], values[2], values[3]


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool (True or False), got {type(value).__name__}")
    return value


def _check_scales(
    weights: Tensor, rho: float, kappa: float, eps: float, dtype: torch.dtype, what: str
) -> None:
    """The weights, rho, kappa, eps and the products the solve forms are finite in ``dtype``.

    ``weights``: the float64 host weights; ``dtype``: the compute dtype of the
    coefficients and the combine (``what`` says where it comes from). The
    step forms kappa * w and kappa * sum(w) (Stage 2's joint term and tau) and
    coefficients of order rho and kappa * sum(w), so each must be below
    finfo(dtype).max, or the update is Inf/NaN with no other error.
    """
    big = torch.finfo(dtype).max
    where = f"{dtype} ({what})"
    w_max, w_sum = float(weights.max()), float(weights.sum())
    if w_max > big or w_sum > big:
        raise ValueError(
            f"weights: expected values (and a sum) finite in {where}, at most {big:.4g}; "
            f"got max {w_max:.4g}, sum {w_sum:.4g}"
        )
    if not float(weights.to(dtype).sum()) > 0:
        raise ValueError(
            f"weights: expected a positive sum in {where}, got weights that round to 0 "
            f"(max {w_max:.4g})"
        )
    for name, value in (("rho", rho), ("kappa", kappa), ("eps", eps)):
        if value > big:
            raise ValueError(
                f"{name}: expected a value finite in {where}, at most {big:.4g}; got {value:.4g}"
            )
    if kappa * w_sum > big:
        raise ValueError(
            f"kappa: kappa * sum(weights) = {kappa:.4g} * {w_sum:.4g} = {kappa * w_sum:.4g} "
            f"overflows {where} (at most {big:.4g}); scale kappa or the weights down"
        )


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


def _host_weights(weights: Weights, n: int) -> Tensor | None:
    """The weights as a float64 CPU tensor [n], checked; None when None (all ones)."""
    if weights is None:
        return None
    if isinstance(weights, Tensor):
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(f"weights: expected real numbers, got dtype {weights.dtype}")
        host = weights.detach().to("cpu", torch.float64)  # the documented host read
    else:
        try:
            host = torch.tensor(list(weights), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise TypeError(f"weights: expected a sequence of n = {n} numbers ({exc})") from None
    if host.shape != (n,):
        raise ValueError(f"weights: expected shape ({n},) (one per task), got {tuple(host.shape)}")
    if not torch.isfinite(host).all():
        raise ValueError(f"weights: expected finite values, got {host.tolist()}")
    if (host < 0).any():
        raise ValueError(f"weights: expected values >= 0, got {host.tolist()}")
    if host.sum() <= 0:
        raise ValueError("weights: expected a positive sum, got all zeros")
    return host


def _device_weights(
    host: Tensor | None, n: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    if host is None:
        return torch.ones(n, dtype=dtype, device=device)
    return backends.upload(host.to(dtype), device)


def _check_weights_device(weights: Weights, device: torch.device) -> None:
    if isinstance(weights, Tensor) and weights.device.type != "cpu" and weights.device != device:
        raise ValueError(f"weights: expected a tensor on {device} or the CPU, got {weights.device}")


def _check_weights(weights: Weights, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Weights as an [n] tensor of ``dtype`` on ``device`` (all ones when None).

    Also checks that they are finite in ``dtype``.
    """
    _check_weights_device(weights, device)
    host = _host_weights(weights, n)
    if host is not None:
        _check_scales(host, 0.0, 1.0, 0.0, dtype, "the weights' dtype")
    return _device_weights(host, n, dtype, device)


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
    if out.requires_grad and torch.is_grad_enabled():
        # As torch's in-place ops (leaves) and out= functions (all tensors) refuse them:
        # the update is written without autograd, so a graph through out would be wrong.
        if out.is_leaf:
            raise ValueError(
                "out: a leaf Variable that requires grad is being used in an in-place operation "
                "(the update is written into out); pass a tensor with requires_grad=False "
                "(e.g. a flat .grad), or write under torch.no_grad()"
            )
        raise ValueError(
            "out: expected a tensor that does not require grad: the update written into it is "
            "not differentiable (as torch's out= functions refuse); detach it, or write under "
            "torch.no_grad()"
        )
    return out


def _written(out: Tensor) -> Tensor:
    """Bump ``out``'s version counter, as torch's in-place ops do (the kernels do not).

    A tensor that autograd saved and that was then overwritten makes a later
    backward() raise instead of silently using the new values.
    """
    if not out.is_inference():
        torch.autograd.graph.increment_version(out)
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
    return_info: bool,
) -> tuple[Tensor, Tensor, int, ModuleType, tuple[float, float, float, float]]:
    """The checks of a step's other arguments, once ``grads`` passed its own.

    Returns (out, weights in the accumulation dtype on grads' device, stage
    mask, backend module, (rho, kappa, nu, eps) as floats).
    """
    hyper = _check_hyper(rho, kappa, nu, eps)
    mask = stage_mask(stages)
    if nonfinite not in _STEP_NONFINITE:
        raise ValueError(f"nonfinite: expected 'raise' or 'skip', got {nonfinite!r}")
    _check_bool(return_info, "return_info")
    out = _check_out(out, grads)
    n, acc = grads.shape[0], _accumulate_dtype(grads.dtype)
    _check_weights_device(weights, grads.device)
    host = _host_weights(weights, n)
    ones = torch.ones(n, dtype=torch.float64)
    rho, kappa, _, eps = hyper
    _check_scales(
        ones if host is None else host, rho, kappa, eps, acc,
        f"the combine dtype of {grads.dtype} gradients",
    )
    w = _device_weights(host, n, acc, grads.device)
    return out, w, mask, _select_backend(backend, grads.device, grads.dtype), hyper


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
    any_rank: Callable[[Tensor], Tensor] | None = None,
) -> Tensor | tuple[Tensor, StepInfo]:
    """A step after its Gram: the solve, the nonfinite checks, the combine into ``out``.

    ``solve_args`` = (weights, rho, kappa, nu, eps, stage mask), as the backend's
    ``coefficients`` takes them after the Gram. ``method`` other than "camegrad"
    solves with the backend's baseline solvers (:func:`methods.coefficients`,
    ``method_options`` as :func:`methods.check_method` returns them).
    ``any_rank`` (the sharded step): a 0-dim bool flag -> that flag OR-ed over
    all ranks, so that every rank skips, or raises on, an overflowed update alike.
    """
    alpha, coeffs, gap, skipped = _solve(module, gram, solve_args, method, method_options)
    # "raise": one host read of the Gram's flags, the coefficients' flags and the bound.
    check_update = nonfinite == "raise" and _raise_on_bad_solve(
        gram, coeffs, out.dtype, _accumulate_dtype(grads.dtype)
    )
    if grads.shape[1]:  # an empty column shard (camegrad_step_sharded) has nothing to combine
        module.combine(grads, coeffs, out, skipped if nonfinite == "skip" else None)
    _written(out)  # before a raise below, so that a caller catching it sees out changed
    skipped = _guard_update(out, skipped, nonfinite, check_update, any_rank)
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


def _raise_on_nonfinite_gram(finite: Tensor, dtype: torch.dtype) -> None:
    """ValueError naming the tasks, from the host [n, n] bool flags of a Gram (of ``dtype``)."""
    if bool(finite.all()):
        return
    bad = [i for i, ok in enumerate(torch.diagonal(finite).tolist()) if not ok]
    if bad:
        raise ValueError(
            f"grads: task gradient(s) {bad} hold NaN or Inf values "
            f"(or values too large for the {dtype} Gram matrix)"
        )
    raise ValueError("grads: the Gram matrix overflowed (gradients too large for its dtype)")


def _raise_on_nonfinite(gram: Tensor) -> None:
    """``nonfinite="raise"``: one n x n read to the host, naming the bad tasks."""
    _raise_on_nonfinite_gram(torch.isfinite(gram).cpu(), gram.dtype)


def _update_bound(gram: Tensor, coeffs: Tensor) -> Tensor:
    """B = sum_i |c_i| sqrt(M_ii) >= max_k |(c @ G)_k| (Cauchy-Schwarz), on the device.

    Formed in the solver's work dtype (float64 but on MPS), where it cannot overflow.
    """
    dtype = solver.work_dtype(gram.device)
    norms = torch.sqrt(torch.diagonal(gram).to(dtype).clamp_min(0.0))
    return (coeffs.to(dtype).abs() * norms).sum()


def _raise_on_bad_solve(
    gram: Tensor, coeffs: Tensor, out_dtype: torch.dtype, combine_dtype: torch.dtype
) -> bool:
    """``nonfinite="raise"``: one host read (n x n + n + 1 numbers); whether to check the update.

    Raises ValueError naming the tasks when the Gram is not finite, or naming the
    coefficients when they are not (a finite Gram, but weights, kappa or rho too
    large for the solve). Returns whether the bound B of :func:`_update_bound`
    reaches finfo(out_dtype).max / 2 (a factor 2 of margin for the rounding of
    M_ii and of the combine): only then can the update overflow, and only then
    is it read (``torch.isfinite(out).all()``, one more host read).
    """
    n = gram.shape[0]
    dtype = solver.work_dtype(gram.device)
    packed = torch.cat(
        [
            torch.isfinite(gram).reshape(-1).to(dtype),
            torch.isfinite(coeffs).to(dtype),
            coeffs.to(dtype).abs().max().reshape(1),
            _update_bound(gram, coeffs).reshape(1),
        ]
    ).cpu()
    _raise_on_nonfinite_gram(packed[: n * n].view(n, n) > 0, gram.dtype)
    flags = packed[n * n : n * n + n].tolist()
    bad = [i for i, ok in enumerate(flags) if not ok]
    if bad:
        raise ValueError(
            f"coeffs: the coefficients of task(s) {bad} are not finite although the Gram matrix "
            f"is (the weights, kappa or rho are too large for the {coeffs.dtype} solve)"
        )
    largest = float(packed[-2])
    if not largest < torch.finfo(combine_dtype).max:
        raise ValueError(
            f"coeffs: a coefficient of {largest:.4g} does not fit the {combine_dtype} combine "
            f"(tasks whose gradient norms differ by more than the dtype's range)"
        )
    bound = float(packed[-1])
    return not bound < torch.finfo(out_dtype).max / 2


def _guard_update(
    out: Tensor,
    skipped: Tensor,
    nonfinite: str,
    check: bool,
    any_rank: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The nonfinite policy on the written update ``out``; returns ``skipped``.

    "raise" with ``check`` (see :func:`_raise_on_bad_solve`): ValueError when the
    update overflowed out's dtype (one host read). "skip": ``skipped`` also
    when the update is not finite, and then ``out`` is zeroed; all on the
    device (one extra read of the d-vector, and a masked write of it), no sync.
    """
    if nonfinite == "raise" and check:
        bad = ~torch.isfinite(out).all()
        if any_rank is not None:
            bad = any_rank(bad)
        if bool(bad):
            raise ValueError(
                f"grads: the update overflowed {out.dtype} (max {torch.finfo(out.dtype).max:.4g}): "
                "the Gram and the coefficients are finite, but sum_i c_i g_i is not; scale the "
                "losses or gradients down, or use a wider dtype"
            )
    elif nonfinite == "skip":
        bad = ~torch.isfinite(out).all()
        if any_rank is not None:
            bad = any_rank(bad)
        skipped = skipped | bad
        out.masked_fill_(skipped, 0.0)
    return skipped


# --------------------------------------------------------------------------- Gram checks


def _gram_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(symmetry, definiteness) tolerances for a Gram matrix of ``dtype``.

    Symmetry: |M_ij - M_ji| <= 16 eps sqrt(M_ii M_jj); every Gram that this
    package forms is symmetric to the bit (one triangle, mirrored), and
    another G G^T by at most a few roundings.
    Definiteness: min eig(D^-1/2 M D^-1/2) >= -sqrt(eps) n, D = diag M (and, on the device,
    |M_ij| <= sqrt(M_ii M_jj) (1 + sqrt(eps))). Rounding each entry of G G^T by a
    relative gamma of ||g_i|| ||g_j|| moves the eigenvalues by at most
    ||dM||_2 <= ||dM||_F <= gamma trace(M) (Weyl); gamma = sqrt(eps) bounds the
    accumulated error of a d-term dot product with margin (blocked sums; 30x
    above what fp32 G @ G.T with d = 4e6 collinear rows showed).
    """
    eps = torch.finfo(dtype).eps
    return 16.0 * eps, math.sqrt(eps)


def _gram_defect(gram: Tensor) -> Tensor:
    """0-dim bool on gram's device, no sync: cheap necessary conditions of a Gram fail.

    A negative diagonal entry, an asymmetry beyond rounding, or a pair breaking
    Cauchy-Schwarz (|M_ij| > sqrt(M_ii M_jj) (1 + tol)). NaN/Inf entries compare
    False here: the solver's own finiteness flag covers them.
    """
    sym_tol, psd_tol = _gram_tolerances(gram.dtype)
    diag = torch.diagonal(gram)
    norms = torch.sqrt(diag.clamp_min(0.0))
    bound = norms[:, None] * norms[None, :]
    negative = (diag < 0).any()
    asymmetric = ((gram - gram.T).abs() > sym_tol * bound).any()
    cauchy_schwarz = (gram.abs() > bound * (1.0 + psd_tol)).any()
    return negative | asymmetric | cauchy_schwarz


def _on_host(gram: Tensor) -> bool:
    """Whether a user-given Gram is checked on the host (CPU) or flagged on its device."""
    return gram.device.type == "cpu"


def _check_host_gram(gram: Tensor) -> None:
    """ValueError when a CPU ``gram`` is not a Gram matrix (not run on a non-finite one)."""
    if not bool(torch.isfinite(gram).all()):
        return  # the solver flags it: skipped, coeffs 0
    sym_tol, psd_tol = _gram_tolerances(gram.dtype)
    diag = torch.diagonal(gram)
    if bool((diag < 0).any()):
        i = int(torch.argmin(diag))
        raise ValueError(
            f"gram: not a Gram matrix: diagonal entry M[{i}, {i}] = {float(diag[i]):.4g} < 0 "
            "(M_ii = ||g_i||^2 >= 0)"
        )
    m = gram.to(torch.float64)
    norms = torch.sqrt(torch.diagonal(m))
    excess = (m - m.T).abs() - sym_tol * norms[:, None] * norms[None, :]
    if bool((excess > 0).any()):
        k = int(torch.argmax(excess))
        i, j = divmod(k, m.shape[0])
        raise ValueError(
            f"gram: not symmetric: M[{i}, {j}] = {float(m[i, j]):.6g} but M[{j}, {i}] = "
            f"{float(m[j, i]):.6g} (tolerance 16 eps({gram.dtype}) sqrt(M_ii M_jj))"
        )
    # In the Jacobi-scaled matrix (unit diagonal), so that a small task's block is
    # judged on its own scale, not on the trace the largest task sets.
    inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
    scaled = m * inv[:, None] * inv[None, :]
    lowest = float(torch.linalg.eigvalsh((scaled + scaled.T) / 2).min())
    trace = float(torch.diagonal(scaled).sum())
    if lowest < -psd_tol * trace:
        raise ValueError(
            f"gram: not positive semidefinite: the smallest eigenvalue of D^-1/2 M D^-1/2 "
            f"(D = diag M) is {lowest:.4g} < -sqrt(eps({gram.dtype})) * n = "
            f"{-psd_tol * trace:.4g} (a Gram matrix G G^T has none below rounding)"
        )


def _flag_bad_gram(
    gram: Tensor, result: tuple[Tensor, Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """On a non-CPU device: a Gram failing :func:`_gram_defect` is skipped (no sync)."""
    alpha, coeffs, gap, skipped = result
    bad = _gram_defect(gram)
    nan = torch.full((), math.nan, dtype=alpha.dtype, device=alpha.device)
    return (
        torch.where(bad, nan, alpha),
        torch.where(bad, torch.zeros_like(coeffs), coeffs),
        torch.where(bad, nan.to(gap.dtype), gap),
        skipped | bad,
    )


# --------------------------------------------------------------------------- public ops


def gram(grads: Tensor, *, backend: str = "auto") -> Tensor:
    """The Gram matrix M = G G^T of task gradients ``grads`` [n, d].

    Returns [n, n] float64 for every input dtype (fp16/bf16/fp32/fp64): the
    products of the inputs are exact in fp64 and summed there, so M is accurate
    to ~eps64 |g_i| |g_j| even when task norms differ by 1e7x, where an fp32
    Gram would decide the solver's answer. Deterministic: same bits for the
    same input, whatever the thread count.
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

    ``g_final = coeffs @ G``. ``method`` / ``method_options``: as :func:`camegrad_step`.
    The weights, rho, kappa and eps must be finite in gram's dtype (as must
    kappa * sum(weights)), else ValueError.

    ``gram`` is checked to be a Gram matrix (symmetric positive semidefinite,
    to rounding: :func:`_gram_tolerances`). A CPU tensor is checked on the
    host (an eigvalsh of the n x n matrix) and a failure is a ValueError. On
    another device it runs without a host sync: cheap necessary conditions
    (no negative diagonal entry, symmetry, Cauchy-Schwarz for every pair)
    are checked there, and a Gram failing them comes back ``skipped`` (coeffs
    0, alpha and the gap NaN), as a non-finite one does.
    """
    return _coefficients(
        gram, weights, rho=rho, kappa=kappa, nu=nu, eps=eps, stages=stages, backend=backend,
        method=method, method_options=method_options, check_gram=True,
    )


def _coefficients(
    gram: Tensor,
    weights: Weights,
    *,
    rho: float,
    kappa: float,
    nu: float,
    eps: float,
    stages: Sequence[str],
    backend: str,
    method: str,
    method_options: dict | None,
    check_gram: bool,
) -> Coefficients:
    """:func:`camegrad_coefficients`; ``check_gram=False``: a Gram formed here (one already)."""
    options = methods.check_method(method, method_options)
    gram = _check_gram(gram)
    rho, kappa, nu, eps = _check_hyper(rho, kappa, nu, eps)
    mask = stage_mask(stages)
    n = gram.shape[0]
    _check_weights_device(weights, gram.device)
    host = _host_weights(weights, n)
    ones = torch.ones(n, dtype=torch.float64)
    _check_scales(ones if host is None else host, rho, kappa, eps, gram.dtype, "the Gram's dtype")
    w = _device_weights(host, n, gram.dtype, gram.device)
    module = _select_backend(backend, gram.device, gram.dtype)
    on_host = _on_host(gram)
    if check_gram and on_host:
        _check_host_gram(gram)
    solve_args = (w, rho, kappa, nu, eps, mask)
    result = _solve(module, gram, solve_args, method, options)
    if check_gram and not on_host:
        result = _flag_bad_gram(gram, result)
    return Coefficients(*result)


def combine(
    grads: Tensor, coeffs: Tensor, *, out: Tensor | None = None, backend: str = "auto"
) -> Tensor:
    """``out = coeffs @ grads``: [n] x [n, d] -> [d] in grads' dtype (or into ``out``).

    ``out`` must not require grad (with grad mode on); its version counter is
    bumped, as by torch's in-place ops.
    """
    grads = _check_grads(grads)
    coeffs = _check_coeffs(coeffs, grads)
    out = _check_out(out, grads)
    module = _select_backend(backend, grads.device, grads.dtype)
    return _written(module.combine(grads, coeffs, out, None))


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
        weights: n non-negative task weights with a positive sum (default ones),
            finite in the combine dtype (fp32 for fp16/bf16/fp32 gradients,
            fp64 for fp64), as kappa * sum(weights) must be (else ValueError).
        rho, kappa, nu, eps: the paper's hyperparameters (Algorithm 1); any real
            numbers (numpy scalars too, not bool), taken as floats.
        stages: which of "rectify", "rescale", "fuse" run (paper Table 4).
        out: optional [d] tensor of grads' dtype to write into (e.g. a flat .grad).
            Not one that requires grad (with grad mode on; ValueError, as torch's
            in-place ops); its version counter is bumped, so a backward through
            a saved ``out`` raises instead of using the update.
        backend: "auto" (or $CAMEGRAD_BACKEND), "cuda", "triton", "cpu", "reference".
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
    out, w, mask, module, (rho, kappa, nu, eps) = _check_step_args(
        grads, weights, rho, kappa, nu, eps, stages, out, backend, nonfinite, return_info
    )
    solve_args = (w, rho, kappa, nu, eps, mask)
    return _finish_step(
        module, grads, module.gram(grads), solve_args, out, nonfinite, return_info, method, options
    )
