"""The ``nonfinite=`` policy: what a step does with NaN/Inf, and the device-side Gram flags.

"raise" reads a few numbers to the host and raises ValueError naming the tasks
or coefficients; "skip" decides on the device (no sync) and writes a zero
update with ``skipped`` set. The device flags of a user-given Gram live here
too: they are how a non-CPU Gram is rejected without a host sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import solver
from .validation import gram_tolerances


def raise_on_nonfinite_gram(finite: Tensor, dtype: torch.dtype) -> None:
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


def raise_on_nonfinite(gram: Tensor) -> None:
    """``nonfinite="raise"``: one n x n read to the host, naming the bad tasks."""
    raise_on_nonfinite_gram(torch.isfinite(gram).cpu(), gram.dtype)


def update_bound(gram: Tensor, coeffs: Tensor) -> Tensor:
    """B = sum_i |c_i| sqrt(M_ii) >= max_k |(c @ G)_k| (Cauchy-Schwarz), on the device.

    Formed in the solver's work dtype (float64 but on MPS), where it cannot overflow.
    """
    dtype = solver.work_dtype(gram.device)
    norms = torch.sqrt(torch.diagonal(gram).to(dtype).clamp_min(0.0))
    return (coeffs.to(dtype).abs() * norms).sum()


def raise_on_bad_solve(
    gram: Tensor, coeffs: Tensor, out_dtype: torch.dtype, combine_dtype: torch.dtype
) -> bool:
    """``nonfinite="raise"``: one host read (n x n + n + 1 numbers); whether to check the update.

    Raises ValueError naming the tasks when the Gram is not finite, or naming the
    coefficients when they are not (a finite Gram, but weights, kappa or rho too
    large for the solve). Returns whether the bound B of :func:`update_bound`
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
            update_bound(gram, coeffs).reshape(1),
        ]
    ).cpu()
    raise_on_nonfinite_gram(packed[: n * n].view(n, n) > 0, gram.dtype)
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


def guard_update(
    out: Tensor,
    skipped: Tensor,
    nonfinite: str,
    check: bool,
    any_rank: Callable[[Tensor], Tensor] | None = None,
    grads: Tensor | None = None,
) -> Tensor:
    """The nonfinite policy on the written update ``out``; returns ``skipped``.

    "raise" with ``check`` (see :func:`raise_on_bad_solve`): ValueError when the
    update overflowed out's dtype (one host read). "skip": ``skipped`` also
    when the update is not finite, and then ``out`` is zeroed; all on the
    device (one extra read of the d-vector, and a masked write of it), no sync.
    ``grads``: given when no Gram was formed (a Gram-free method): a non-finite
    update under "raise" then names the tasks from the gradients themselves.
    """
    if nonfinite == "raise" and check:
        bad = ~torch.isfinite(out).all()
        if any_rank is not None:
            bad = any_rank(bad)
        if bool(bad) and grads is not None:
            rows = torch.isfinite(grads).all(dim=1).tolist()
            tasks = [i for i, ok in enumerate(rows) if not ok]
            raise ValueError(
                f"grads: task gradient(s) {tasks} hold NaN or Inf values"
                if tasks
                else f"grads: the update is not finite in {out.dtype} (NaN/Inf in another "
                "rank's shard, or sum_i w_i g_i overflowed); scale the losses or gradients down"
            )
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


def gram_defect(gram: Tensor) -> Tensor:
    """0-dim bool on gram's device, no sync: cheap necessary conditions of a Gram fail.

    A negative diagonal entry, an asymmetry beyond rounding, or a pair breaking
    Cauchy-Schwarz (|M_ij| > sqrt(M_ii M_jj) (1 + tol)). NaN/Inf entries compare
    False here: the solver's own finiteness flag covers them.
    """
    sym_tol, psd_tol = gram_tolerances(gram.dtype)
    diag = torch.diagonal(gram)
    norms = torch.sqrt(diag.clamp_min(0.0))
    bound = norms[:, None] * norms[None, :]
    negative = (diag < 0).any()
    asymmetric = ((gram - gram.T).abs() > sym_tol * bound).any()
    cauchy_schwarz = (gram.abs() > bound * (1.0 + psd_tol)).any()
    return negative | asymmetric | cauchy_schwarz


def flag_bad_gram(
    gram: Tensor, result: tuple[Tensor, Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """On a non-CPU device: a Gram failing :func:`gram_defect` is skipped (no sync)."""
    alpha, coeffs, gap, skipped = result
    bad = gram_defect(gram)
    nan = torch.full((), math.nan, dtype=alpha.dtype, device=alpha.device)
    return (
        torch.where(bad, nan, alpha),
        torch.where(bad, torch.zeros_like(coeffs), coeffs),
        torch.where(bad, nan.to(gap.dtype), gap),
        skipped | bad,
    )

