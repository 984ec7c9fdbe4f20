"""The conformance suite: backend x method x geometry x dtype, one tolerance table.

Every backend present runs every registered method (``methods.REGISTRY``: a new
method or backend is covered without editing this file) on the same inputs,
and the update is compared with the float64 answer on the same rounded input:
CAME-Grad's paper-literal vector-space reference (``camegrad_kernels.reference``)
and, for the other methods, their torch-ops solve on the float64 Gram.
Interpreted Triton (no GPU) runs a representative subset (tests/helpers.py).
Backend files keep only what is specific to them.
"""

from __future__ import annotations

import pytest
import torch
from helpers import GRAM_TOL, UPDATE_TOL, backend_cases, make_grads, rel_err

import camegrad_kernels as ck
from camegrad_kernels import methods, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
GAP_TOL = {torch.float64: 1e-9}  # the solved methods' certificates; 1e-5 for the others
# (kind, n, d): conflicting and random tasks, one and many tasks.
GEOMETRIES = (("random", 1, 1031), ("conflicting", 3, 517), ("conflicting", 8, 301),
              ("random", 16, 257))
RHO = 0.4
SOLVED = ("camegrad", "cagrad", "mgda")  # methods whose gap certifies an optimum


def _on(backend: str) -> str:
    """The device a backend's tensors live on here: the C++ cpu backend runs CPU tensors."""
    return "cpu" if backend == "cpu" else DEVICE


def _options(method: str) -> dict:
    return {"seed": 3} if methods.get(method).random_option else {}


def _expected(method: str, g: torch.Tensor, w: list[float]) -> torch.Tensor:
    g64 = g.double()
    if method == "camegrad":
        return reference.camegrad_step(g64, w, rho=RHO)
    M = g64 @ g64.T
    coeffs = ck.coefficients(
        M, method, w, rho=RHO, method_options=_options(method), backend="torch"
    ).coeffs
    return coeffs @ g64


def _keep_interpreted(case: tuple) -> bool:
    """Interpreted Triton: every method on 3 conflicting tasks in fp32 and CAME-Grad in every
    dtype there (test_triton.py: its kernels at every n, dtype and option)."""
    method, (kind, n, _), dtype = case
    return (kind, n) == ("conflicting", 3) and (dtype == torch.float32 or method == "camegrad")


CASES = backend_cases(
    ck.available_backends(),
    [(m, geo, dtype) for m in methods.METHODS for geo in GEOMETRIES for dtype in DTYPES],
    _keep_interpreted,
)


def _id(value: object) -> str:
    return f"{value[0]}{value[1]}" if isinstance(value, tuple) else str(value).replace("torch.", "")


@pytest.mark.parametrize("backend,method,geometry,dtype", CASES, ids=_id)
def test_update_matches_the_float64_answer(backend, method, geometry, dtype):
    kind, n, d = geometry
    if backend == "triton" and DEVICE == "cpu":
        d = min(d, 129)  # interpreted: every column is a Python step
    g = make_grads(kind, n, d, dtype, seed=n)
    w = [0.5 + 0.25 * (i % 7) for i in range(n)]  # exact in every dtype
    out, info = ck.step(
        g.to(_on(backend)), method, w, method_options=_options(method), rho=RHO,
        backend=backend, return_info=True,
    )
    assert out.dtype == dtype and out.shape == (d,)
    assert rel_err(out.cpu(), _expected(method, g, w)) < UPDATE_TOL[dtype]
    g64 = g.double()
    assert info.gram.dtype == torch.float64 and info.coeffs.dtype == torch.float64
    assert rel_err(info.gram.cpu(), g64 @ g64.T) < GRAM_TOL
    native = methods.get(method).native_op is not None
    assert info.backends == {
        "gram": backend, "solve": backend if native else "torch", "combine": backend
    }
    if method in SOLVED and n > 1:
        assert float(info.duality_gap) <= GAP_TOL.get(dtype, 1e-5)
    if backend == "triton" and DEVICE == "cpu":
        return  # interpreted: the same kernel again costs seconds; compiled on a GPU it runs
    # The coefficients from the Gram alone are the step's.
    again = ck.coefficients(
        info.gram, method, w, method_options=_options(method), rho=RHO, backend=backend
    )
    torch.testing.assert_close(again.coeffs, info.coeffs, rtol=0, atol=0)
