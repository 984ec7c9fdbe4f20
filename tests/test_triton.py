"""The Triton backend against backends/reference, on CUDA or under the interpreter.

Without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1, which must
be set before the kernels are defined (tests/conftest.py should set it too).
Sizes stay small: the interpreter runs each kernel op as a numpy call.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not importable")

from camegrad_kernels import solver
from camegrad_kernels.backends import reference
from camegrad_kernels.backends import triton as backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if backend.unavailable_reason(DEVICE, torch.float32) is not None:
    pytest.skip(backend.unavailable_reason(DEVICE, torch.float32), allow_module_level=True)

HYPER = {"rho": 0.5, "kappa": 1.5, "nu": 0.2, "eps": 1e-8}
# Relative agreement of the coefficients and the duality gap bound, per gram dtype.
COEFF_RTOL = {torch.float32: 1e-6, torch.float64: 1e-9}
GAP_TOL = {torch.float32: 1e-5, torch.float64: 1e-9}


def _grads(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Task gradients sharing a common component, so the dual is well posed."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    g = g * (0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64))
    g = g + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    return g.to(dtype).to(DEVICE)


def _weights(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.linspace(0.5, 1.5, n, dtype=dtype, device=DEVICE)


def _both(gram: torch.Tensor, weights: torch.Tensor, stages: int = solver.ALL_STAGES):
    args = (gram, weights, *HYPER.values(), stages)
    return backend.coefficients(*args), reference.coefficients(*args)


def _assert_coeffs_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= rtol * max(scale, 1e-30), (got, want)


def test_unavailable_reason(monkeypatch):
    assert backend.unavailable_reason(torch.device("cuda"), torch.bfloat16) is None
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.unavailable_reason(torch.device("cpu"), torch.float32) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in backend.unavailable_reason(torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 40, 64])
def test_gram(n, dtype):
    # d = 2561: three programs of 1024 columns, the last one partly masked.
    g = _grads(n, 2561, dtype, seed=n)
    got, want = backend.gram(g), reference.gram(g)
    assert got.dtype == want.dtype and got.shape == (n, n)
    assert torch.equal(got, got.T)
    scale = want.diagonal().max().item()
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(got, want, rtol=0.0, atol=tol * scale)


@pytest.mark.parametrize(
    "n, dtype",
    [(n, torch.float64) for n in (1, 2, 3, 8, 40, 64)]
    + [(n, torch.float32) for n in (1, 3, 8, 40)],
)
def test_coefficients(n, dtype):
    gram = reference.gram(_grads(n, 301, torch.float64, seed=n)).to(dtype)
    (alpha, coeffs, gap, skipped), (r_alpha, r_coeffs, _, _) = _both(gram, _weights(n, dtype))
    assert [t.dtype for t in (alpha, coeffs, gap, skipped)] == [dtype, dtype, dtype, torch.bool]
    assert not skipped.item()
    _assert_coeffs_close(coeffs, r_coeffs, COEFF_RTOL[dtype])
    _assert_coeffs_close(alpha, r_alpha, COEFF_RTOL[dtype])
    assert abs(gap.item()) <= GAP_TOL[dtype]


@pytest.mark.parametrize("stages", range(8))
def test_stage_masks(stages):
    gram = reference.gram(_grads(5, 101, torch.float64, seed=7))
    (alpha, coeffs, gap, _), (r_alpha, r_coeffs, _, _) = _both(
        gram, _weights(5, torch.float64), stages
    )
    _assert_coeffs_close(coeffs, r_coeffs, 1e-9)
    rectify = bool(stages & solver.RECTIFY)
    assert torch.isnan(alpha).all().item() != rectify and torch.isnan(gap).item() != rectify
    if rectify:
        _assert_coeffs_close(alpha, r_alpha, 1e-9)


def _degenerate(case: str) -> torch.Tensor:
    g = _grads(6, 40, torch.float64, seed=3)
    if case == "collinear":  # rank one: every face but the vertices is singular
        g = g[:1] * torch.tensor(
            [[1.0], [2.0], [0.5], [3.0], [1.5], [0.25]], dtype=g.dtype, device=DEVICE
        )
    elif case == "n>d":
        g = g[:, :3]
    elif case == "zero":
        g = torch.zeros_like(g)
    elif case == "one zero task":
        g[2] = 0.0
    elif case == "mu=0":  # opposite pairs: the mean and s vanish
        g = torch.cat([g[:3], -g[:3]])
    return reference.gram(g)


@pytest.mark.parametrize("case", ["collinear", "n>d", "zero", "one zero task", "mu=0"])
def test_degenerate(case):
    gram = _degenerate(case)
    (_, coeffs, _, skipped), (_, r_coeffs, _, _) = _both(gram, _weights(6, torch.float64))
    assert not skipped.item()
    _assert_coeffs_close(coeffs, r_coeffs, 1e-9)


def test_non_finite_gram_is_skipped():
    gram = reference.gram(_grads(4, 50, torch.float32))
    gram[1, 2] = float("nan")
    alpha, coeffs, gap, skipped = backend.coefficients(
        gram, _weights(4, torch.float32), *HYPER.values(), 7
    )
    assert skipped.item() and skipped.shape == ()
    assert torch.equal(coeffs, torch.zeros_like(coeffs))
    assert torch.isnan(alpha).all().item() and torch.isnan(gap).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 40])
def test_combine(n, dtype):
    g = _grads(n, 5001, dtype, seed=n)
    coeffs = _weights(n, reference.accumulate_dtype(dtype))
    want = reference.combine(g, coeffs, torch.empty(5001, dtype=dtype, device=DEVICE), None)
    out = torch.full((5001,), float("nan"), dtype=dtype, device=DEVICE)
    assert backend.combine(g, coeffs, out, None) is out
    rtol = {torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-13}[dtype]
    torch.testing.assert_close(out, want, rtol=rtol, atol=rtol * want.abs().max().item())
    backend.combine(g, coeffs, out, torch.tensor(False, device=DEVICE))
    torch.testing.assert_close(out, want, rtol=rtol, atol=rtol * want.abs().max().item())


def test_combine_skip_writes_zeros_over_nan():
    g = _grads(3, 777, torch.float32)
    g[1, 5] = float("nan")
    out = torch.full((777,), 7.0, device=DEVICE)
    backend.combine(g, _weights(3, torch.float32), out, torch.tensor(True, device=DEVICE))
    assert torch.equal(out, torch.zeros_like(out))


def test_bitwise_deterministic():
    g = _grads(8, 4099, torch.float32, seed=11)
    grams = [backend.gram(g) for _ in range(2)]
    assert torch.equal(grams[0], grams[1])
    w = _weights(8, torch.float32)
    first, second = (backend.coefficients(grams[0], w, *HYPER.values(), 7) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    outs = [
        backend.combine(g, first[1], torch.empty(4099, device=DEVICE), first[3]) for _ in range(2)
    ]
    assert torch.equal(outs[0], outs[1])


def test_large_n_falls_back_to_torch():
    # n > 128 would spill the register tiles; gram and solve take the torch path.
    g = _grads(130, 64, torch.float64)
    gram = backend.gram(g)
    torch.testing.assert_close(gram, reference.gram(g), rtol=1e-13, atol=1e-12)
    (_, coeffs, _, _), (_, r_coeffs, _, _) = _both(gram, _weights(130, torch.float64))
    assert torch.equal(coeffs, r_coeffs)
