"""Argument checks of the public ops: clear TypeError/ValueError naming the argument.

Every entry point (api.py, distributed.py, trainer.py) validates through
these, once, before any device work; backends receive checked inputs only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from . import devices, solver
from .dtypes import FLOAT_DTYPES, accumulate_dtype

Weights = Optional[Union[Sequence[float], Tensor]]
DEFAULT_STAGES = ("rectify", "rescale", "fuse")
NONFINITE = ("raise", "skip")  # camegrad_step's nonfinite= choices


def check_grads(grads: object, name: str = "grads") -> Tensor:
    if not isinstance(grads, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [n, d], got {type(grads).__name__}")
    if grads.dtype not in FLOAT_DTYPES:
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


def check_gram(gram: object) -> Tensor:
    if not isinstance(gram, Tensor):
        raise TypeError(f"gram: expected a torch.Tensor [n, n], got {type(gram).__name__}")
    if gram.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"gram: expected dtype float32 or float64, got {gram.dtype}")
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        raise ValueError(f"gram: expected a square [n, n] tensor with n >= 1, got {tuple(gram.shape)}")
    return gram.detach().contiguous()


def check_hyper(
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


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool (True or False), got {type(value).__name__}")
    return value


def check_scales(
    weights: Sequence[float] | None,
    rho: float,
    kappa: float,
    eps: float,
    dtype: torch.dtype,
    what: str,
) -> None:
    """The weights, rho, kappa, eps and the products the solve forms are finite in ``dtype``.

    ``weights``: the checked host weights (None: all ones); ``dtype``: the
    compute dtype of the coefficients and the combine (``what`` says where it
    comes from). The step forms kappa * w and kappa * sum(w) (Stage 2's joint
    term and tau) and coefficients of order rho and kappa * sum(w), so each
    must be below finfo(dtype).max, or the update is Inf/NaN with no other
    error. Python floats only: no tensor op, so ``torch.compile`` traces it.
    """
    values = (1.0,) if weights is None else tuple(weights)
    info = torch.finfo(dtype)
    big = info.max
    where = f"{dtype} ({what})"
    w_max, w_sum = max(values), math.fsum(values)
    if w_max > big or w_sum > big:
        raise ValueError(
            f"weights: expected values (and a sum) finite in {where}, at most {big:.4g}; "
            f"got max {w_max:.4g}, sum {w_sum:.4g}"
        )
    # The smallest subnormal of dtype is smallest_normal * eps; half of it rounds to 0.
    if not w_max > info.smallest_normal * info.eps / 2:
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


def host_weights(weights: Weights, n: int) -> tuple[float, ...] | None:
    """The weights as n checked Python floats; None when None (all ones).

    A tensor is read to the host (the documented host read); a sequence is
    checked in Python, so that ``torch.compile`` traces a step given a list.
    """
    if weights is None:
        return None
    if isinstance(weights, Tensor):
        if weights.is_complex() or weights.dtype == torch.bool:
            raise TypeError(f"weights: expected real numbers, got dtype {weights.dtype}")
        if weights.shape != (n,):
            raise ValueError(
                f"weights: expected shape ({n},) (one per task), got {tuple(weights.shape)}"
            )
        values = tuple(weights.detach().to("cpu", torch.float64).tolist())
    else:
        try:
            values = tuple(_as_float(v) for v in weights)  # type: ignore[union-attr]
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"weights: expected a sequence of n = {n} numbers ({exc})") from None
        if len(values) != n:
            raise ValueError(f"weights: expected shape ({n},) (one per task), got ({len(values)},)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"weights: expected finite values, got {list(values)}")
    if any(v < 0 for v in values):
        raise ValueError(f"weights: expected values >= 0, got {list(values)}")
    if not any(v > 0 for v in values):
        raise ValueError("weights: expected a positive sum, got all zeros")
    return values


def _as_float(value: object) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"a tensor of shape {tuple(value.shape)} is not a number")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{value!r} is not a real number")
    return float(value)


def device_weights(
    host: Sequence[float] | None, n: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The weights as an [n] tensor of ``dtype`` on ``device`` (ones when None); no sync."""
    if host is None:
        return torch.ones(n, dtype=dtype, device=device)
    return devices.upload(torch.tensor(host, dtype=dtype), device)


def check_weights_device(weights: Weights, device: torch.device) -> None:
    if isinstance(weights, Tensor) and weights.device.type != "cpu" and weights.device != device:
        raise ValueError(f"weights: expected a tensor on {device} or the CPU, got {weights.device}")


def check_out(out: Tensor | None, grads: Tensor) -> Tensor:
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


def written(out: Tensor) -> Tensor:
    """Bump ``out``'s version counter, as torch's in-place ops do (the kernels do not).

    A tensor that autograd saved and that was then overwritten makes a later
    backward() raise instead of silently using the new values.
    """
    # Under torch.compile the functionalised write of out bumps it already.
    if not torch.compiler.is_compiling() and not out.is_inference():
        torch.autograd.graph.increment_version(out)
    return out


def check_coeffs(coeffs: object, grads: Tensor) -> Tensor:
    if not isinstance(coeffs, Tensor):
        raise TypeError(f"coeffs: expected a torch.Tensor [n], got {type(coeffs).__name__}")
    n = grads.shape[0]
    if coeffs.shape != (n,):
        raise ValueError(f"coeffs: expected shape ({n},), got {tuple(coeffs.shape)}")
    if not coeffs.is_floating_point():
        raise TypeError(f"coeffs: expected a floating dtype, got {coeffs.dtype}")
    if coeffs.device != grads.device:
        raise ValueError(f"coeffs: expected a tensor on {grads.device}, got {coeffs.device}")
    return coeffs.detach().to(accumulate_dtype(grads.dtype)).contiguous()


def gram_tolerances(dtype: torch.dtype) -> tuple[float, float]:
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


def check_host_gram(gram: Tensor) -> None:
    """ValueError when a CPU ``gram`` is not a Gram matrix (not run on a non-finite one)."""
    if not bool(torch.isfinite(gram).all()):
        return  # the solver flags it: skipped, coeffs 0
    sym_tol, psd_tol = gram_tolerances(gram.dtype)
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

