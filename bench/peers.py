"""Peer implementations of one CAME-Grad step, timed by bench_step.py.

Every peer maps task gradients ``G`` [n, d] to ``g_final`` [d] in G's dtype with
the paper's defaults (rho=0.5, kappa=1.5, nu=0.2, eps=1e-8, unit weights):

* :func:`naive_step`: paper-literal eager PyTorch in the input dtype. mu, g_joint,
  g_alpha, u_rect, u_en and g_final are materialised as d-vectors (Algorithm 1),
  and the Stage-1 dual is solved the way CAGrad's public code does it
  (github.com/Cranial-XIX/CAGrad, ``cagrad()``): the Gram G G^T is moved to the
  host as numpy and SciPy SLSQP is started from alpha = 1/n with bounds [0, 1]
  and the equality constraint sum(alpha) = 1, objective evaluated by numpy with
  finite-difference gradients (no jac), exactly as there, but run to
  convergence (``ftol=1e-12``; see NAIVE_FTOL for why).
* :func:`best_effort_step`: what a careful PyTorch user writes with the design
  note in hand: M = G @ G.T accumulated in fp32, the Gram-space solver of
  ``camegrad_kernels.solver`` on the device (no host sync), then ``c @ G``.
* :func:`make_compiled_step`: ``torch.compile`` of :func:`best_effort_step`.

The camegrad_kernels backends are called through the public API in implementations.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from camegrad_kernels import solver

RHO, KAPPA, NU, EPS = 0.5, 1.5, 0.2, 1e-8


# SLSQP's stopping tolerance. CAGrad calls minimize() with SciPy's default
# (ftol=1e-6, absolute on the objective): with task-gradient norms ~1 that stops
# 1e-5..3e-3 away from the optimum (relative L2 error of g_final), beyond an fp32
# tolerance, and with ||g||^2 ~ 1e6 it can stop at the start alpha = 1/n. The
# timed naive peer runs the same call to convergence; bench_step.py records the
# error of the verbatim default call beside it (``slsqp_default_rel_err``).
NAIVE_FTOL = 1e-12
CAGRAD_FTOL = 1e-6  # SciPy's default, what CAGrad's code gets


def _cagrad_dual(GG: np.ndarray, c: float, ftol: float = NAIVE_FTOL) -> np.ndarray:
    """CAGrad's dual solve (``cagrad()`` in their mtl code), same objective and call.

    ``min_{x in simplex} x^T A b + c sqrt(x^T A x + 1e-8)`` with A = G G^T and
    b = 1/n, SLSQP (SciPy's default when constraints are given) from x = 1/n,
    finite-difference gradients; only ``ftol`` differs (see NAIVE_FTOL).
    """
    n = GG.shape[0]
    x_start = np.ones(n) / n
    bnds = tuple((0, 1) for _ in x_start)
    cons = ({"type": "eq", "fun": lambda x: 1 - sum(x)},)
    A = GG
    b = x_start.copy()

    def objfn(x):
        return (
            x.reshape(1, n).dot(A).dot(b.reshape(n, 1))
            + c * np.sqrt(x.reshape(1, n).dot(A).dot(x.reshape(n, 1)) + 1e-8)
        ).sum()

    res = minimize(
        objfn, x_start, bounds=bnds, constraints=cons, method="SLSQP", options={"ftol": ftol}
    )
    return res.x


def naive_step(G: Tensor, ftol: float = NAIVE_FTOL) -> Tensor:
    """Paper-literal CAME-Grad (Algorithm 1) in G's dtype, CAGrad-style SLSQP dual.

    ``ftol=CAGRAD_FTOL`` is CAGrad's call verbatim (SciPy's default tolerance).
    """
    n = G.shape[0]
    dtype = G.dtype
    w = torch.ones(n, dtype=dtype, device=G.device)
    # d-vectors of Algorithm 1, in the input dtype, as eager PyTorch computes them.
    mu = G.mean(dim=0)
    g_joint = (G * w.view(-1, 1)).sum(dim=0)  # CAGrad's idiom: (grads * ww).sum()
    # The dual, exactly as CAGrad: Gram on the device in the input dtype, moved
    # to the host as numpy (float64 there: numpy has no bfloat16), SciPy SLSQP.
    GG = (G @ G.T).cpu().to(torch.float64).numpy()
    s = RHO * float(mu.norm())  # c = alpha * ||g0|| in CAGrad (rho * ||mu|| here)
    alpha = _cagrad_dual(GG, s, ftol)
    ww = torch.as_tensor(alpha, dtype=dtype).to(G.device)
    g_alpha = (G * ww.view(-1, 1)).sum(dim=0)
    # Eq. 10 as CAGrad writes it: lmbda = c / (||g_w|| + 1e-8) (no threshold on r;
    # r = 0 means g_alpha = 0, so u_rect = mu then).
    lmbda = s / (float(g_alpha.norm()) + 1e-8)
    u_rect = mu + lmbda * g_alpha
    tau = KAPPA * g_joint.norm()  # Eq. 11
    u_en = u_rect * (tau / (u_rect.norm() + EPS))  # Eq. 12
    g_final = (1.0 - NU) * u_en + NU * KAPPA * g_joint  # Eq. 13
    return g_final


def best_effort_step(G: Tensor, w: Tensor) -> Tensor:
    """M = G G^T (fp32 accumulation), the torch-ops Gram solver, ``c @ G``.

    ``w``: [n] float32 weights on G's device (passed in so torch.compile sees no
    constant tensor creation in the timed region).
    """
    # bf16/fp16 matmul on the CPU would round M to the input dtype: upcast.
    g32 = G if G.dtype == torch.float32 or G.dtype == torch.float64 else G.float()
    M = g32 @ g32.T
    _, coeffs, _, _ = solver.camegrad_coefficients(M, w.to(M.dtype), RHO, KAPPA, NU, EPS)
    # c @ G in G's dtype: the matmul accumulates in fp32 internally, writes G's dtype.
    return coeffs.to(G.dtype) @ G


def make_compiled_step(**compile_kwargs) -> Callable[[Tensor, Tensor], Tensor]:
    """``torch.compile`` of :func:`best_effort_step` (compiles on first call)."""
    return torch.compile(best_effort_step, **compile_kwargs)
