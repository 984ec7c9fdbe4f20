"""MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the convex hull.

``alpha = argmin_{alpha in simplex} alpha^T M alpha``, solved with
:func:`camegrad_kernels.solver.solve_dual` (b = 0, s = 1: minimising
``sqrt(alpha^T M alpha)`` is the same problem). ``normalization`` "none"
(default) or "l2" (each gradient divided by its norm, as LibMTL's
``mgda_gn="l2"``; a zero gradient stays 0). ``coeffs = alpha`` un-normalised back
to the raw gradients (``alpha_i / ||h_i||`` for "l2"), so ``g_final = sum_i
alpha_i ĥ_i`` (LibMTL's convention; Sener & Koltun's code instead scales the raw
losses by alpha).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .. import solver
from .common import finish, prepare
from .spec import Hyper, MethodSpec, Option, SolveResult, TrainerArg


def mgda_coefficients(M: Tensor, w: Tensor, normalization: str = "none") -> SolveResult:
    """MGDA min-norm coefficients (see the module doc) on the weighted gradients."""
    finite, Mw, w, nan, out_dtype = prepare(M, w)
    tiny = torch.finfo(Mw.dtype).tiny
    if normalization == "l2":
        norms = torch.sqrt(torch.diagonal(Mw).clamp_min(0.0))
        inv = torch.where(norms > 0, 1.0 / norms.clamp_min(tiny), torch.zeros_like(norms))
    else:
        inv = torch.ones_like(w)
    Mn = Mw * inv[:, None] * inv[None, :]
    scale = torch.diagonal(Mn).max().clamp_min(tiny)
    # Any s > 0 gives the same argmin; s = sqrt(max_i M_ii) makes the solver's
    # normalised problem O(1) whatever the gradients' scale.
    alpha = solver.solve_dual(Mn, torch.zeros_like(w), torch.sqrt(scale)).clamp_min(0.0)
    # On a singular Gram (e.g. all gradients parallel) the projected-gradient
    # iterates can leave 1^T alpha off by ~1e-10: put alpha back on the simplex.
    total = alpha.sum()
    ok = (total > 0) & torch.isfinite(total)
    alpha = torch.where(ok, alpha / total.clamp_min(tiny), torch.full_like(alpha, 1.0 / w.shape[0]))
    Ma = Mn @ alpha
    gap = ((alpha @ Ma - Ma.min()) / scale).clamp_min(0.0)
    return finish(finite, alpha, w * inv * alpha, gap, nan, out_dtype)


def solve_args(
    hyper: Hyper, options: Mapping[str, object], n: int, device: torch.device
) -> tuple[str]:
    return (str(options["normalization"]),)


def _check_normalization(key: str, value: object) -> object:
    if value in ("loss", "loss+"):
        raise ValueError(
            f"{key}: {value!r} needs the loss values and is not supported; expected 'none' or 'l2'"
        )
    if value not in ("none", "l2"):
        raise ValueError(f"{key}: expected one of ('none', 'l2'), got {value!r}")
    return value


SPEC = MethodSpec(
    name="mgda",
    title="MGDA",
    solve=mgda_coefficients,
    solve_args=solve_args,
    options=(Option("normalization", "none", check=_check_normalization, doc='"none" or "l2"'),),
    native_op="mgda_coefficients",
    alpha="the min-norm weights on the (normalised) gradients",
    gap="the normalised Frank-Wolfe gap (alpha^T M alpha - min_i (M alpha)_i) / max_i M_ii",
    trainer="MGDA",
    trainer_args=(TrainerArg("normalization", "normalization", "none"),),
    trainer_doc=(
        "MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the task gradients' hull.\n\n"
        '``normalization``: "none" (default) or "l2" (each gradient divided by its norm first).'
    ),
    style=("tab:green", "^"),
)
