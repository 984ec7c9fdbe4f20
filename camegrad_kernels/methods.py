"""Gram-space coefficients of the baseline multi-task methods, in torch ops.

Like :func:`camegrad_kernels.solver.camegrad_coefficients`, every function here
works on the n x n Gram matrix ``M = G G^T`` only, runs on M's device with
fixed work (no ``.item()``, no data-dependent Python branching, no host sync)
and returns ``(alpha [n], coeffs [n], gap [], skipped [])`` with
``g_final = coeffs @ G``. ``skipped`` tells that M was not finite (then coeffs
are 0 and alpha/gap NaN).

Task weights: the baselines act on the gradients of the weighted losses,
``h_i = w_i g_i`` (Gram ``w w^T * M``), exactly as if each method were handed
``w_i L_i``; the coefficients come back for the raw ``g_i`` (``c = w * c_h``).
With the default all-ones weights this is the method as published.

Methods (the ``method=`` of :func:`camegrad_kernels.camegrad_step`):

* ``"camegrad"``: CAME-Grad (the backend's native solver; not in this module).
* ``"cagrad"``: CAGrad (Liu et al., NeurIPS 2021), public-code conventions:
  their ``c`` is our ``rho``; ``g0`` is the mean of the (weighted) gradients,
  ``w* = argmin_{w in simplex} w^T M a_0 + rho ||g0|| sqrt(w^T M w)``
  (CAME-Grad's Stage 1 dual), ``u = g0 + (rho ||g0|| / ||g_w||) g_w``, then
  ``rescale`` 0: ``u``, 1 (their default): ``u / (1 + rho^2)``, 2:
  ``u / (1 + rho)``. The code's absolute 1e-8 guards are not reproduced (they
  break scale invariance); ``g_w = 0`` (0 in the convex hull) gives ``u = g0``.
  alpha = w*, gap = the normalised duality gap of w* (docs/camegrad.md §2).
* ``"mgda"``: MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the
  convex hull, ``alpha = argmin_{alpha in simplex} alpha^T M alpha``, solved with
  :func:`solver.solve_dual` (b = 0, s = 1: minimising ``sqrt(alpha^T M alpha)`` is
  the same problem). ``normalization`` "none" (default) or "l2" (each gradient
  divided by its norm, as LibMTL's ``mgda_gn="l2"``; a zero gradient stays 0).
  ``coeffs = alpha`` un-normalised back to the raw gradients
  (``alpha_i / ||h_i||`` for "l2"), so ``g_final = sum_i alpha_i ĥ_i`` (LibMTL's
  convention; Sener & Koltun's code instead scales the raw losses by alpha).
  gap = the Frank-Wolfe gap ``(alpha^T M alpha - min_i (M alpha)_i) / max_i M_ii``
  (0 exactly at the min-norm point).
* ``"pcgrad"``: PCGrad (Yu et al., NeurIPS 2020), Algorithm 1: for each task i,
  ``g_i' = g_i``, then for each other task j in a random order, if
  ``<g_i', g_j> < 0``: ``g_i' -= <g_i', g_j> / ||g_j||^2 g_j``; the update is
  ``sum_i g_i'`` (``reduction="mean"``: divided by n, as the public code's
  default). Each g_i' is held as a coefficient vector a_i (``<g_i', g_j> =
  (M a_i)_j``); all tasks project in parallel, one step per position of their
  orders (n steps, each O(n^3) on n x n numbers). The orders are an [n, n]
  integer tensor made on the host by :func:`pcgrad_order` from an integer seed
  (an entry outside [0, n) or equal to its row is skipped).
  alpha and gap are NaN.
* ``"linear"``: linear scalarization, ``coeffs = w``. alpha and gap are NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import torch
from torch import Tensor

from . import backends, solver

METHODS = ("camegrad", "cagrad", "mgda", "pcgrad", "linear")
# The method_options each method accepts, with their defaults.
OPTIONS: dict[str, dict[str, object]] = {
    "camegrad": {},
    "cagrad": {"rescale": 1},
    "mgda": {"normalization": "none"},
    "pcgrad": {"seed": None, "reduction": "sum"},
    "linear": {},
}
_CHOICES: dict[str, tuple] = {
    "rescale": (0, 1, 2),
    "normalization": ("none", "l2"),
    "reduction": ("sum", "mean"),
}


def check_method(method: object, options: Mapping[str, object] | None) -> dict[str, object]:
    """Validate ``method`` and its ``method_options``; return the options with defaults."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"method_options: expected a dict or None, got {type(options).__name__}")
    allowed = OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"method_options: {unknown} not accepted by method {method!r}; "
            f"expected some of {sorted(allowed)}"
        )
    merged = {**allowed, **options}
    for key, value in merged.items():
        if key == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"method_options['seed']: expected an int or None, got {value!r}")
        elif key == "normalization" and value in ("loss", "loss+"):
            raise ValueError(
                f"method_options['normalization']: {value!r} needs the loss values and is not "
                "supported; expected 'none' or 'l2'"
            )
        elif isinstance(value, bool) or value not in _CHOICES[key]:
            raise ValueError(
                f"method_options[{key!r}]: expected one of {_CHOICES[key]}, got {value!r}"
            )
    return merged


def pcgrad_order(n: int, seed: int | None = None) -> Tensor:
    """[n, n] int64 CPU tensor: row i = the order in which task i visits the tasks.

    Made on the host (no device work): ``torch.randperm`` per task from a
    ``torch.Generator`` seeded with ``seed``; ``seed=None`` draws the seed from
    torch's global CPU generator (reproducible under ``torch.manual_seed``, and
    a fresh order on every call). Entry i of row i is skipped by PCGrad.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(n)])


def _prepare(M: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, torch.dtype]:
    """(finite flag, weighted Gram w w^T M in the work dtype, w, NaN scalar, out dtype)."""
    out_dtype = M.dtype
    dtype = solver.work_dtype(M.device)
    M, w = M.to(dtype), w.to(dtype)
    finite = torch.isfinite(M).all()
    M = torch.where(finite, M, torch.zeros_like(M))
    Mw = M * w[:, None] * w[None, :]
    nan = torch.full((), float("nan"), dtype=dtype, device=M.device)
    return finite, Mw, w, nan, out_dtype


def _finish(
    finite: Tensor, alpha: Tensor, coeffs: Tensor, gap: Tensor, nan: Tensor, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    skipped = ~finite
    coeffs = torch.where(skipped, torch.zeros_like(coeffs), coeffs)
    alpha = torch.where(skipped, nan, alpha)
    gap = torch.where(skipped, nan, gap)
    return alpha.to(out_dtype), coeffs.to(out_dtype), gap.to(out_dtype), skipped


def linear_coefficients(M: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear scalarization: coeffs = w (nothing to solve: four small ops on M's device)."""
    skipped = ~torch.isfinite(M).all()
    coeffs = torch.where(skipped, torch.zeros((), dtype=M.dtype, device=M.device), w.to(M.dtype))
    nan = torch.full((w.shape[0] + 1,), float("nan"), dtype=M.dtype, device=M.device)
    return nan[:-1], coeffs, nan[-1], skipped


def cagrad_coefficients(
    M: Tensor, w: Tensor, rho: float, rescale: int = 1
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CAGrad (public-code conventions, see the module doc) on the weighted gradients."""
    # CAME-Grad's Stage 1 alone is CAGrad's u (docs/camegrad.md §1): coeffs = a_u. The
    # weighted Gram stays in M's dtype so that the r = 0 threshold is M's.
    Mw = M * w[:, None] * w[None, :]
    alpha, a_u, gap, skipped = solver.camegrad_coefficients(
        Mw, torch.ones_like(w), rho, 1.0, 0.0, 0.0, solver.RECTIFY
    )
    factor = {0: 1.0, 1: 1.0 + rho * rho, 2: 1.0 + rho}[rescale]
    return alpha, w * a_u / factor, gap, skipped


def mgda_coefficients(
    M: Tensor, w: Tensor, normalization: str = "none"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MGDA min-norm coefficients (see the module doc) on the weighted gradients."""
    finite, Mw, w, nan, out_dtype = _prepare(M, w)
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
    return _finish(finite, alpha, w * inv * alpha, gap, nan, out_dtype)


def pcgrad_coefficients(
    M: Tensor, w: Tensor, order: Tensor, reduction: str = "sum"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PCGrad coefficients (see the module doc); ``order`` [n, n] from :func:`pcgrad_order`."""
    finite, Mw, w, nan, out_dtype = _prepare(M, w)
    n = Mw.shape[0]
    tiny = torch.finfo(Mw.dtype).tiny
    rows = torch.arange(n, device=Mw.device)
    A = torch.eye(n, dtype=Mw.dtype, device=Mw.device)  # row i: coefficients of g_i'
    sq = torch.diagonal(Mw)
    order = order.to(Mw.device)
    for k in range(n):
        j = order[:, k]  # the task each i projects against at this step
        valid = (j >= 0) & (j < n) & (j != rows)
        j = j.clamp(0, n - 1)  # an invalid entry reads a real task, then is ignored
        dots = (A @ Mw)[rows, j]  # <g_i', g_j>
        norm2 = sq[j]
        project = (dots < 0) & valid & (norm2 > 0)
        step = torch.where(project, dots / norm2.clamp_min(tiny), torch.zeros_like(dots))
        A = A - step[:, None] * torch.nn.functional.one_hot(j, n).to(A.dtype)
    coeffs = A.sum(dim=0)
    if reduction == "mean":
        coeffs = coeffs / n
    return _finish(finite, nan.expand(n).clone(), w * coeffs, nan.clone(), nan, out_dtype)


def coefficients(
    backend: ModuleType, method: str, M: Tensor, w: Tensor, rho: float, options: Mapping[str, object]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solve ``method`` (not "camegrad") with ``backend``'s native solver.

    ``backend`` is a module of :mod:`camegrad_kernels.backends`; ``options`` come
    from :func:`check_method`. Linear scalarization solves nothing: it runs here.
    """
    if method == "linear":
        return linear_coefficients(M, w)
    if method == "cagrad":
        return backend.cagrad_coefficients(M, w, rho, int(options["rescale"]))  # type: ignore[arg-type]
    if method == "mgda":
        return backend.mgda_coefficients(M, w, str(options["normalization"]))
    if method == "pcgrad":
        order = pcgrad_order(M.shape[0], options["seed"])  # type: ignore[arg-type]
        return backend.pcgrad_coefficients(
            M, w, backends.upload(order, M.device), str(options["reduction"])
        )
    raise ValueError(f"method: expected one of {METHODS[1:]}, got {method!r}")
