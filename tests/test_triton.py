"""The Triton backend against the torch backend, on CUDA or under the interpreter.

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

from camegrad_kernels import backends, methods, solver
from camegrad_kernels.backends import torch_ops
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
    return backend.solvers()["camegrad"](*args), torch_ops.solvers()["camegrad"](*args)


def _assert_coeffs_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= rtol * max(scale, 1e-30), (got, want)


def test_unavailable_reason(monkeypatch):
    cuda_reason = backend.unavailable_reason(torch.device("cuda"), torch.bfloat16)
    if torch.cuda.is_available():
        assert cuda_reason is None
    else:
        assert "no usable CUDA device" in cuda_reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.unavailable_reason(torch.device("cpu"), torch.float32) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in backend.unavailable_reason(torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 40, 64])
def test_gram(n, dtype):
    # d = 2561: three programs of 1024 columns, the last one partly masked.
    g = _grads(n, 2561, dtype, seed=n)
    got, want = backend.gram(g), torch_ops.gram(g)
    # float64 for every dtype: exact products of the inputs, summed in fp64.
    assert got.dtype == want.dtype == torch.float64 and got.shape == (n, n)
    assert torch.equal(got, got.T)
    scale = want.diagonal().max().item()
    torch.testing.assert_close(got, want, rtol=0.0, atol=1e-13 * scale)


@pytest.mark.parametrize(
    "n, dtype",
    [(n, torch.float64) for n in (1, 2, 3, 8, 64)]
    + [(n, torch.float32) for n in (1, 3, 8, 40)],
)
def test_coefficients(n, dtype):
    gram = torch_ops.gram(_grads(n, 301, torch.float64, seed=n)).to(dtype)
    (alpha, coeffs, gap, skipped), (r_alpha, r_coeffs, _, _) = _both(gram, _weights(n, dtype))
    assert [t.dtype for t in (alpha, coeffs, gap, skipped)] == [dtype, dtype, dtype, torch.bool]
    assert not skipped.item()
    _assert_coeffs_close(coeffs, r_coeffs, COEFF_RTOL[dtype])
    _assert_coeffs_close(alpha, r_alpha, COEFF_RTOL[dtype])
    assert abs(gap.item()) <= GAP_TOL[dtype]


@pytest.mark.parametrize("stages", range(8))
def test_stage_masks(stages):
    gram = torch_ops.gram(_grads(5, 101, torch.float64, seed=7))
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
    return torch_ops.gram(g)


@pytest.mark.parametrize("case", ["collinear", "n>d", "zero", "one zero task", "mu=0"])
def test_degenerate(case):
    gram = _degenerate(case)
    (_, coeffs, _, skipped), (_, r_coeffs, _, _) = _both(gram, _weights(6, torch.float64))
    assert not skipped.item()
    _assert_coeffs_close(coeffs, r_coeffs, 1e-9)


def _smoothing_case(case: str) -> torch.Tensor:
    if case == "anisotropic":  # norms 1 and 3e-3: r is not compared with the largest norm
        return torch.tensor([[1.0, 0.0], [0.0, 3e-3]], dtype=torch.float64, device=DEVICE)
    g = _grads(2, 40, torch.float64, seed=9)  # "g, -g, h": 0 in the hull of the first two
    return torch.stack([g[0], -g[0], g[1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["anisotropic", "g, -g, h"])
def test_smoothed_dual_matches_torch(case, dtype):
    # The smoothed dual (gamma from the gram's dtype) agrees with solver.py to 1e-9.
    g = _smoothing_case(case)
    gram = (g @ g.T).to(dtype)
    w = torch.ones(g.shape[0], dtype=dtype, device=DEVICE)
    (alpha, coeffs, gap, _), (r_alpha, r_coeffs, r_gap, _) = _both(gram, w)
    _assert_coeffs_close(coeffs, r_coeffs, 1e-9)
    _assert_coeffs_close(alpha, r_alpha, 1e-9)
    # The gap reads M alpha ~ 0 times k ~ 1 / sqrt(gamma) when 0 is in the hull:
    # it agrees absolutely, to rounding / sqrt(gamma).
    assert abs(gap.item() - r_gap.item()) <= GAP_TOL[dtype]
    if case == "anisotropic":
        update = coeffs.double() @ g
        torch.testing.assert_close(
            update,
            torch.tensor([1.372, 0.540], dtype=torch.float64, device=DEVICE),
            atol=1e-3,
            rtol=0,
        )


def test_non_finite_gram_is_skipped():
    gram = torch_ops.gram(_grads(4, 50, torch.float32))
    gram[1, 2] = float("nan")
    alpha, coeffs, gap, skipped = backend.solvers()["camegrad"](
        gram, _weights(4, torch.float32), *HYPER.values(), 7
    )
    assert skipped.item() and skipped.shape == ()
    assert torch.equal(coeffs, torch.zeros_like(coeffs))
    assert torch.isnan(alpha).all().item() and torch.isnan(gap).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 40])
def test_combine(n, dtype):
    g = _grads(n, 5001, dtype, seed=n)
    coeffs = _weights(n, torch_ops.accumulate_dtype(dtype))
    want = torch_ops.combine(g, coeffs, torch.empty(5001, dtype=dtype, device=DEVICE), None)
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
    first, second = (backend.solvers()["camegrad"](grams[0], w, *HYPER.values(), 7) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    outs = [
        backend.combine(g, first[1], torch.empty(4099, device=DEVICE), first[3]) for _ in range(2)
    ]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("n,gram_by", [(64, "triton"), (65, "triton"), (128, "triton"), (130, "torch")])
def test_large_n_falls_back_to_torch(n, gram_by):
    """Beyond SOLVE_MAX_N the solves, beyond MAX_N the Gram, run with the torch backend
    (their register tiles would spill), as the plan says and info.backends reports."""
    plan = backends.resolve("triton", torch.device(DEVICE), torch.float64, n)
    assert plan.gram.backend == gram_by and plan.combine.backend == "triton"
    solved_by = "triton" if n <= 64 else "torch"
    assert {name: p.backend for name, p in plan.solvers.items() if name != "linear"} == {
        name: solved_by for name in methods.METHODS if name != "linear"
    }


# The baselines (triton_ops: cagrad in solve.py, mgda and pcgrad in methods.py)
# against the methods' torch solves, the ground truth (float64 inside).
METHOD_RTOL = {torch.float32: 1e-5, torch.float64: 1e-9}


def _method_gram(case: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    if case == "full":
        g = _grads(n, 301, torch.float64, seed=n)
    elif case == "n>d":  # rank 3, 0 outside the hull: the min-norm alpha is unique
        g = _grads(n, 3, torch.float64, seed=1)
    elif case == "zero task":
        g = _grads(n, 40, torch.float64, seed=3)
        g[2] = 0.0
    elif case == "conflicting":  # no common component: many pairs at obtuse angles
        gen = torch.Generator().manual_seed(5)
        g = torch.randn(n, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    else:
        raise ValueError(case)
    return torch_ops.gram(g).to(dtype)


def _check_method(got, want, dtype: torch.dtype, solved: bool) -> None:
    """solved: alpha and gap come from a solve (cagrad, mgda), else they are NaN."""
    alpha, coeffs, gap, skipped = got
    n = want[1].shape[0]
    assert [t.dtype for t in got] == [dtype, dtype, dtype, torch.bool]
    assert [t.shape for t in got] == [(n,), (n,), (), ()]
    assert not skipped.item() and not want[3].item()
    _assert_coeffs_close(coeffs, want[1], METHOD_RTOL[dtype])
    if solved:
        _assert_coeffs_close(alpha, want[0], METHOD_RTOL[dtype])
        assert abs(gap.item() - want[2].item()) <= GAP_TOL[dtype]
    else:
        assert torch.isnan(alpha).all().item() and torch.isnan(gap).item()


@pytest.mark.parametrize(
    "case, n, dtype, rescale",
    [
        ("full", 1, torch.float64, 1),
        ("full", 3, torch.float64, 0),
        ("full", 8, torch.float64, 2),
        ("n>d", 5, torch.float64, 1),
        ("zero task", 5, torch.float64, 1),
        ("conflicting", 5, torch.float64, 2),
        ("full", 5, torch.float32, 1),
    ],
)
def test_cagrad(case, n, dtype, rescale):
    gram, w = _method_gram(case, n, dtype), _weights(n, dtype)
    got = backend.solvers()["cagrad"](gram, w, 0.5, rescale)
    _check_method(got, methods.cagrad_coefficients(gram, w, 0.5, rescale), dtype, True)


@pytest.mark.parametrize(
    "case, n, dtype, normalization",
    [
        ("full", 1, torch.float64, "l2"),
        ("full", 3, torch.float64, "none"),
        ("full", 8, torch.float64, "l2"),
        ("n>d", 5, torch.float64, "none"),
        ("zero task", 5, torch.float64, "l2"),
        ("conflicting", 5, torch.float64, "l2"),
        ("full", 5, torch.float32, "none"),
    ],
)
def test_mgda(case, n, dtype, normalization):
    gram, w = _method_gram(case, n, dtype), _weights(n, dtype)
    got = backend.solvers()["mgda"](gram, w, normalization)
    _check_method(got, methods.mgda_coefficients(gram, w, normalization), dtype, True)


# PCGrad's kernel has no inner solve (n cheap steps): every case, both reductions.
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize(
    "case, n, dtype",
    [
        ("full", 1, torch.float64),
        ("full", 3, torch.float64),
        ("n>d", 5, torch.float64),
        ("zero task", 5, torch.float64),
        ("conflicting", 8, torch.float64),
        ("conflicting", 5, torch.float32),
    ],
)
def test_pcgrad(case, n, dtype, reduction):
    gram, w = _method_gram(case, n, dtype), _weights(n, dtype)
    order = methods.pcgrad_order(n, seed=n).to(DEVICE)
    got = backend.solvers()["pcgrad"](gram, w, order, reduction)
    _check_method(got, methods.pcgrad_coefficients(gram, w, order, reduction), dtype, False)


def test_pcgrad_bad_order_entries_are_skipped():
    n = 5
    gram, w = _method_gram("conflicting", n, torch.float64), _weights(n, torch.float64)
    order = methods.pcgrad_order(n, seed=2).to(DEVICE)
    bad = order.clone()
    bad[0, 1], bad[3, 0], bad[4, 4] = n, -1, 2**40  # out of range: skipped
    got = backend.solvers()["pcgrad"](gram, w, bad, "sum")
    # The torch code skips j == i: the same steps with the bad entries set so.
    ref_order = torch.where((bad >= 0) & (bad < n), bad, torch.arange(n, device=DEVICE)[:, None])
    want = methods.pcgrad_coefficients(gram, w, ref_order, "sum")
    _check_method(got, want, torch.float64, False)


@pytest.mark.parametrize("method", ["cagrad", "mgda", "pcgrad"])
def test_methods_non_finite_gram_is_skipped(method):
    n = 4
    gram, w = _method_gram("full", n, torch.float32), _weights(n, torch.float32)
    gram[1, 2] = float("inf") if method == "mgda" else float("nan")
    args = {
        "cagrad": (1.0, 1),
        "mgda": ("l2",),
        "pcgrad": (methods.pcgrad_order(n, seed=0).to(DEVICE), "mean"),
    }[method]
    alpha, coeffs, gap, skipped = backend.solvers()[method](gram, w, *args)
    assert skipped.dtype == torch.bool and skipped.shape == () and skipped.item()
    assert torch.equal(coeffs, torch.zeros_like(coeffs))
    assert torch.isnan(alpha).all().item() and torch.isnan(gap).item()
