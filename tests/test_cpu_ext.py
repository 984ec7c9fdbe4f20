"""The C++ CPU ops (camegrad_kernels._C) against the pure-PyTorch reference backend."""

from __future__ import annotations

import pytest
import torch
from helpers import make_grads, rel_err

from camegrad_kernels import ops, solver
from camegrad_kernels.backends import torch_ops as R

pytestmark = pytest.mark.skipif(
    not ops.HAS_CPU_OPS, reason=f"camegrad_kernels._C not built: {ops.LOAD_ERRORS.get('_C')}"
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
NS = [1, 2, 3, 4, 8, 16, 40, 64]
DS = [1, 7, 1031, 70001]
HYPER = (0.5, 1.5, 0.2, 1e-8)  # rho, kappa, nu, eps
C = torch.ops.camegrad


def weights(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return (
        torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    ).to(dtype)


def acc(dtype: torch.dtype) -> torch.dtype:
    return R.accumulate_dtype(dtype)


def assert_close_nan(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.isnan(), b.isnan())
    a, b = a.nan_to_num(), b.nan_to_num()
    assert rel_err(a, b) <= rtol or (a - b).abs().max() <= 1e-300


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram(dtype, n, d):
    g = make_grads("random", n, d, dtype, seed=n + d)
    M = C.gram(g)
    # float64 for every dtype, and as accurate: products of fp16/bf16/fp32 values
    # are exact in fp64 (tests/test_gram_precision.py scales the rows apart).
    assert M.dtype == R.gram_dtype(dtype) == torch.float64 and M.shape == (n, n)
    assert torch.equal(M, M.T)
    truth = g.double() @ g.double().T  # the conversions are exact, so one truth for all
    assert rel_err(M, truth) <= 1e-12
    assert rel_err(M, R.gram(g)) <= 1e-12


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_combine(dtype, n, d):
    g = make_grads("random", n, d, dtype, seed=n * d)
    # Seeded: at d = 1 some draws cancel enough to defeat the fp32 tolerance below.
    c = torch.randn(n, generator=torch.Generator().manual_seed(n * d), dtype=acc(dtype))
    out = C.combine(g, c)
    assert out.dtype == dtype and out.shape == (d,)
    expected = R.combine(g, c, torch.empty_like(out), None)
    truth = c.double() @ g.double()
    # fp16/bf16 results differ from the reference by at most the final rounding.
    tol = 1e-12 if dtype == torch.float64 else max(1e-5, torch.finfo(dtype).eps)
    assert rel_err(out, truth) <= tol
    assert rel_err(out, expected) <= tol
    into = torch.full((d,), float("nan"), dtype=dtype)
    C.combine_out(g, c, None, into)
    assert torch.equal(into, out)


WELL_POSED = ["random", "conflicting", "correlated"]  # d >= n: a unique dual optimum


@pytest.mark.parametrize("kind", WELL_POSED + ["collinear", "opposing", "zero", "tiny", "huge"])
@pytest.mark.parametrize("n", NS)
def test_coefficients_match_solver(kind, n):
    """The C++ port of solver.py on the same fp64 Gram: same optimum to ~1e-9."""
    M = R.gram(make_grads(kind, n, 1031, torch.float64, seed=n))
    w = weights(n, torch.float64, seed=n)
    got = C.coefficients(M, w, *HYPER, solver.ALL_STAGES)
    want = R.solvers()["camegrad"](M, w, *HYPER, solver.ALL_STAGES)
    for a, b in zip(got[:2], want[:2]):
        assert_close_nan(a, b, 1e-9)
    assert not bool(got[3]) and not bool(want[3])
    if kind in WELL_POSED:
        assert abs(float(got[2])) <= 1e-9


@pytest.mark.parametrize("stages", range(8))
@pytest.mark.parametrize("n", [1, 3, 16])
def test_coefficients_stages(stages, n):
    M = R.gram(make_grads("conflicting", n, 1031, torch.float64, seed=stages))
    w = weights(n, torch.float64, seed=stages)
    got = C.coefficients(M, w, *HYPER, stages)
    want = R.solvers()["camegrad"](M, w, *HYPER, stages)
    for a, b in zip(got[:2], want[:2]):
        assert_close_nan(a, b, 1e-9)
    # Gaps at rounding level agree absolutely, not relatively.
    assert torch.equal(got[2].isnan(), want[2].isnan())
    assert abs(float(got[2].nan_to_num() - want[2].nan_to_num())) <= 1e-12
    assert got[2].isnan().item() == (not stages & solver.RECTIFY)


@pytest.mark.parametrize("n", [2, 8, 40])
def test_coefficients_fp32(n):
    """An fp32 Gram: float64 work, results rounded to fp32 (out_dtype's tolerance)."""
    M = R.gram(make_grads("random", n, 1031, torch.float32, seed=n)).float()
    w = weights(n, torch.float32)
    got = C.coefficients(M, w, *HYPER, solver.ALL_STAGES)
    want = R.solvers()["camegrad"](M, w, *HYPER, solver.ALL_STAGES)
    assert [t.dtype for t in got] == [torch.float32] * 3 + [torch.bool]
    for a, b in zip(got[:2], want[:2]):
        assert_close_nan(a, b, 1e-6)
    assert abs(float(got[2])) <= 1e-5


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_coefficients_nonfinite(bad):
    M = R.gram(make_grads("random", 4, 64, torch.float64))
    M[1, 2] = bad
    alpha, coeffs, gap, skipped = C.coefficients(M, weights(4, torch.float64), *HYPER, 7)
    assert bool(skipped) and torch.equal(coeffs, torch.zeros(4, dtype=torch.float64))
    assert alpha.isnan().all() and gap.isnan()


@pytest.mark.parametrize("d", [7, 70001])
@pytest.mark.parametrize("n", [1, 4, 40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_step(dtype, n, d):
    g = make_grads("conflicting", n, d, dtype, seed=n)
    w = weights(n, acc(dtype))
    update, M, alpha, coeffs, gap, skipped = C.step(g, w, *HYPER, solver.ALL_STAGES)
    # Exactly the three ops in sequence ...
    M2 = C.gram(g)
    parts = C.coefficients(M2, w, *HYPER, solver.ALL_STAGES)
    for a, b in zip((M, alpha, coeffs, gap, skipped), (M2,) + tuple(parts)):
        assert torch.equal(a.nan_to_num(), b.nan_to_num()) and a.dtype == b.dtype
    assert torch.equal(update, C.combine(g, coeffs, skipped))
    # ... and the reference pipeline up to the Gram's and the output's rounding.
    ref_coeffs = R.solvers()["camegrad"](R.gram(g), w, *HYPER, solver.ALL_STAGES)[1]
    ref = R.combine(g, ref_coeffs, torch.empty(d, dtype=dtype), None)
    tol = 1e-9 if dtype == torch.float64 else max(1e-4, 2 * torch.finfo(dtype).eps)
    assert update.dtype == dtype and rel_err(update, ref) <= tol
    if n == 1:  # closed form (docs/camegrad.md §1): kappa * w_0 * g_0, up to eps
        assert rel_err(update, HYPER[1] * w[0] * g[0].to(acc(dtype))) <= max(tol, 1e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_skips_nonfinite(dtype, bad):
    g = make_grads("random", 4, 1031, dtype)
    g[2, 17] = bad
    update, _, alpha, coeffs, gap, skipped = C.step(g, weights(4, acc(dtype)), *HYPER, 7)
    assert bool(skipped) and torch.equal(update, torch.zeros_like(update))
    assert torch.equal(coeffs, torch.zeros_like(coeffs)) and alpha.isnan().all() and gap.isnan()


def test_combine_skip():
    g = make_grads("random", 3, 1031, torch.float32)
    g[0, 5] = float("nan")
    c = torch.zeros(3)
    out = torch.full((1031,), 7.0)
    C.combine_out(g, c, torch.tensor(True), out)
    assert torch.equal(out, torch.zeros(1031))  # not 0 * NaN
    assert C.combine(g, c, torch.tensor(False))[5].isnan()


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_across_threads(dtype):
    """Same bits twice and with 1 or 2 threads (d spans several Gram chunks)."""
    g = make_grads("random", 16, 200_003, dtype, seed=3)
    c = torch.randn(16, dtype=acc(dtype))
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 2, 1):
            torch.set_num_threads(t)
            results.append((C.gram(g), C.combine(g, c)))
    finally:
        torch.set_num_threads(threads)
    for M, out in results[1:]:
        assert torch.equal(M, results[0][0]) and torch.equal(out, results[0][1])


def test_opcheck():
    n, d = 3, 37
    g = make_grads("random", n, d, torch.float32)
    w = weights(n, torch.float32)
    M = C.gram(g)
    c = torch.randn(n)
    hyper = (*HYPER, solver.ALL_STAGES)
    cases = [
        (C.gram.default, (g,)),
        (C.coefficients.default, (M, w, *hyper)),
        (C.combine.default, (g, c)),
        (C.combine.default, (g, c, torch.tensor(False))),
        (C.combine_out.default, (g, c, None, torch.empty(d))),
        (C.step.default, (g, w, *hyper)),
        (C.cagrad_coefficients.default, (M, w, 0.4, 1)),
        (C.mgda_coefficients.default, (M, w, "l2")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
    # PCGrad's alpha and gap are NaN by contract, and the AOT test compares
    # outputs without equal_nan: it runs every other check.
    order = torch.tensor([[1, 2, 0], [0, 2, 1], [1, 0, 2]])
    torch.library.opcheck(
        C.pcgrad_coefficients.default,
        (M, w, order, "mean"),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda M, w, o: C.cagrad_coefficients(M, w, 0.5, 3), "rescale 0, 1 or 2"),
        (lambda M, w, o: C.mgda_coefficients(M, w, "l1"), "normalization 'none' or 'l2'"),
        (lambda M, w, o: C.pcgrad_coefficients(M, w, o, "max"), "reduction 'sum' or 'mean'"),
        (lambda M, w, o: C.pcgrad_coefficients(M, w, o.int(), "sum"), "int64 CPU order"),
        (lambda M, w, o: C.pcgrad_coefficients(M, w, o[:2], "sum"), "int64 CPU order"),
        (lambda M, w, o: C.mgda_coefficients(M[:2], w, "none"), "square gram"),
        (lambda M, w, o: C.cagrad_coefficients(M, w[:2], 0.5, 1), "weights"),
        (lambda M, w, o: C.mgda_coefficients(M.half(), w.half(), "none"), "float32 or float64"),
    ],
)
def test_method_ops_reject_bad_input(call, match):
    M = R.gram(make_grads("random", 3, 10, torch.float64))
    with pytest.raises(RuntimeError, match=match):
        call(M, weights(3, torch.float64), torch.zeros(3, 3, dtype=torch.int64))
