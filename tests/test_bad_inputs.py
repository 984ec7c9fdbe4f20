"""Bad inputs get a clear error or a documented finite result (issue 11, item 5).

Each case was found by a user sweep giving NaN/Inf or a wrong result without an
error. They run on the cpu and reference backends, and on the Triton backend
under TRITON_INTERPRET=1 (tests/conftest.py sets it without CUDA) with tiny d.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import ranks
import torch
import torch.distributed as dist
from helpers import make_grads, rel_err

import camegrad_kernels as ck
from camegrad_kernels import backends, core, validation
from camegrad_kernels import nonfinite as nonfinite_policy
from camegrad_kernels.compat import CAME_Grad
from camegrad_kernels.distributed import step_sharded
from camegrad_kernels.trainer import CAMEGrad

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ("cpu", "torch", "triton") if b in ck.available_backends()]
D = 8  # tiny: the Triton interpreter runs every kernel op as a numpy call


def _grads(dtype=torch.float32, n=4, d=D, seed=0):
    return make_grads("conflicting", n, d, dtype, seed=seed).to(DEVICE)


# --------------------------------------------------------------------------- 1. ranges


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_weights_overflowing_the_compute_dtype(backend, dtype):
    with pytest.raises(ValueError, match=r"weights: .*finite in torch\.float32"):
        ck.camegrad_step(_grads(dtype), [1e39, 1, 1, 1], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_fine_in_float64(backend):
    out = ck.camegrad_step(_grads(torch.float64), [1e39, 1, 1, 1], backend=backend)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kappa": 1e40}, r"kappa: .*torch\.float32"),
        ({"kappa": 1e38, "weights": [10.0, 1, 1, 1]}, r"kappa: kappa \* sum\(weights\).*float32"),
        ({"rho": 1e39}, r"rho: .*torch\.float32"),
        ({"eps": 1e39}, r"eps: .*torch\.float32"),
        ({"weights": [1e-50] * 4}, r"weights: expected a positive sum in torch\.float32"),
    ],
)
def test_hyperparameters_overflowing_the_compute_dtype(backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ck.camegrad_step(_grads(torch.float16), backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coefficients_check_ranges_in_the_gram_dtype(backend):
    M = ck.gram(_grads(), backend="torch")
    with pytest.raises(ValueError, match=r"kappa: .*torch\.float32 \(the Gram's dtype\)"):
        ck.camegrad_coefficients(M.to(torch.float32), kappa=1e40, backend=backend)
    with pytest.raises(ValueError, match=r"weights: .*torch\.float32"):
        ck.camegrad_coefficients(M.to(torch.float32), [1e39, 1, 1, 1], backend=backend)
    c = ck.camegrad_coefficients(M.to(torch.float64), [1e39, 1, 1, 1], kappa=1e40, backend=backend)
    assert bool(torch.isfinite(c.coeffs).all())  # float64 coefficients, finite


def test_trainer_and_compat_check_ranges_at_construction():
    lin = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"kappa: .*torch\.float32"):
        CAMEGrad(lin.parameters(), kappa=1e40)
    with pytest.raises(ValueError, match=r"weights: .*torch\.float32"):
        CAMEGrad(lin.parameters(), weights=[1e39, 1.0])
    cg = CAMEGrad(lin.parameters())
    with pytest.raises(ValueError, match=r"weights: .*torch\.float32"):
        cg.set_weights([1e39, 1.0])
    with pytest.raises(ValueError, match=r"kappa: .*torch\.float32"):
        CAME_Grad(torch.optim.SGD(lin.parameters(), lr=0.1), kappa=1e40)
    lin64 = torch.nn.Linear(3, 2).double()  # fp64 parameters: fp64 combine, 1e40 is finite
    CAME_Grad(torch.optim.SGD(lin64.parameters(), lr=0.1), kappa=1e40)


# --------------------------------------------------------------------------- 2. overflowing update


def _overflowing_fp16():
    # Finite fp16 gradients, a finite fp32 Gram and finite coefficients, but
    # kappa * sum_i g_i = 3 * 4e4 overflows fp16 (max 65504).
    return torch.full((2, D), 4e4, dtype=torch.float16, device=DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_update_raise(backend):
    with pytest.raises(ValueError, match=r"grads: the update overflowed torch\.float16"):
        ck.camegrad_step(_overflowing_fp16(), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_update_skip(backend):
    out = torch.full((D,), 7.0, dtype=torch.float16, device=DEVICE)
    result, info = ck.camegrad_step(
        _overflowing_fp16(), backend=backend, nonfinite="skip", out=out, return_info=True
    )
    assert result is out and bool(info.skipped)
    assert torch.equal(out, torch.zeros_like(out))
    assert bool(torch.isfinite(info.coeffs).all())  # the coefficients are kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_bound_but_finite_update_passes(backend):
    # ||g_i|| ~ 1000 sqrt(4096) = 64000: the bound B reaches max/2, so the update
    # is checked, but its entries (~1e3) are finite: no error, no skip.
    g = torch.full((2, 4096), 1e3, dtype=torch.float16)
    g[1] *= -0.5
    g = g.to(DEVICE)
    gram = ck.gram(g, backend="torch")
    c = ck.camegrad_coefficients(gram, backend="torch").coeffs
    assert float(nonfinite_policy.update_bound(gram, c)) >= torch.finfo(torch.float16).max / 2
    out = ck.camegrad_step(g, backend=backend)
    _, info = ck.camegrad_step(g, backend=backend, nonfinite="skip", return_info=True)
    assert bool(torch.isfinite(out).all()) and not bool(info.skipped)


def test_update_bound_is_a_bound():
    for seed in range(5):
        g = make_grads("random", 5, 300, torch.float64, seed=seed)
        c = torch.randn(5, dtype=torch.float64)
        assert float((c @ g).abs().max()) <= float(nonfinite_policy.update_bound(g @ g.T, c))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_coefficients_raise(backend, monkeypatch):
    module = backends.load(backend)
    solvers = module.solvers

    def broken_solvers():
        table = dict(solvers())
        solve = table["camegrad"]

        def broken(*args):
            alpha, coeffs, gap, skipped = solve(*args)
            return alpha, torch.full_like(coeffs, math.inf), gap, skipped

        return {**table, "camegrad": broken}

    monkeypatch.setattr(module, "solvers", broken_solvers)
    monkeypatch.setattr(backends, "_PLANS", {})  # plans are cached: re-plan with the patch
    with pytest.raises(ValueError, match=r"coeffs: the coefficients of task\(s\) \[0, 1, 2, 3\]"):
        ck.camegrad_step(_grads(), backend=backend)
    out, info = ck.camegrad_step(_grads(), backend=backend, nonfinite="skip", return_info=True)
    assert bool(info.skipped) and torch.equal(out, torch.zeros_like(out))


def test_trainer_skip_and_propagate_on_an_overflowing_update():
    p = torch.nn.Parameter(torch.zeros(D, dtype=torch.float16))
    for nonfinite, fill in (("skip", 0.0), ("propagate", math.nan)):
        for timing in (False, True):
            cg = CAMEGrad([p], nonfinite=nonfinite, timing=timing, backend="torch")
            info = cg.backward([(p * 4e4).sum(), (p * 4e4).sum()])
            assert bool(info.skipped), (nonfinite, timing)
            torch.testing.assert_close(p.grad, torch.full_like(p.grad, fill), equal_nan=True)
    for timing in (False, True):
        cg = CAMEGrad([p], timing=timing, backend="torch")
        with pytest.raises(ValueError, match=r"grads: the update overflowed torch\.float16"):
            cg.backward([(p * 4e4).sum(), (p * 4e4).sum()])
        assert torch.equal(p.grad, torch.zeros_like(p.grad))  # not the overflowed update


# --------------------------------------------------------------------------- 3. not a Gram

NOT_GRAMS = {
    "minus_identity": (-torch.eye(3), r"gram: not a Gram matrix: diagonal entry M\[0, 0\] = -1"),
    "negative_diagonal": (
        torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0])),
        r"gram: not a Gram matrix: diagonal entry M\[3, 3\] = -1",
    ),
    "asymmetric": (torch.tensor([[1.0, 0.5], [0.2, 1.0]]), r"gram: not symmetric: M\[0, 1\]"),
    "indefinite": (  # positive diagonal, every 2x2 minor fine, not PSD
        torch.tensor([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]),
        (
            r"gram: not positive semidefinite: the smallest eigenvalue of D\^-1/2 M D\^-1/2 "
            r"\(D = diag M\) is -0.8"
        ),
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(NOT_GRAMS))
def test_not_a_gram_raises_on_the_host(backend, dtype, name):
    M, match = NOT_GRAMS[name]
    with pytest.raises(ValueError, match=match):
        ck.camegrad_coefficients(M.to(dtype), backend=backend)
    with pytest.raises(ValueError, match=match):
        ck.camegrad_coefficients(M.to(dtype), backend=backend, method="mgda")


@pytest.mark.parametrize("name", list(NOT_GRAMS))
def test_not_a_gram_flagged_on_the_device(name):
    # The non-CPU path, run here on CPU tensors: device ops only, no host read.
    M, _ = NOT_GRAMS[name]
    if name == "indefinite":  # passes the cheap necessary conditions: documented
        assert not bool(nonfinite_policy.gram_defect(M))
        return
    assert bool(nonfinite_policy.gram_defect(M))
    raw = backends.load("torch").solvers()["camegrad"](M, torch.ones(M.shape[0]), 0.5, 1.5, 0.2, 1e-8, 7)
    alpha, coeffs, gap, skipped = nonfinite_policy.flag_bad_gram(M, raw)
    assert bool(skipped) and torch.equal(coeffs, torch.zeros_like(coeffs))
    assert bool(torch.isnan(alpha).all()) and bool(torch.isnan(gap))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("name", list(NOT_GRAMS))
def test_not_a_gram_skipped_through_the_device_branch(backend, name, monkeypatch):
    # camegrad_coefficients as on a non-CPU device (its branch forced on CPU tensors).
    def forbidden(*args, **kwargs):
        raise AssertionError("a host check on the device path")

    monkeypatch.setattr(core, "checked_on_host", lambda gram: False)
    monkeypatch.setattr(validation, "check_host_gram", forbidden)
    M, _ = NOT_GRAMS[name]
    c = ck.camegrad_coefficients(M, backend=backend)
    expected = name != "indefinite"  # the cheap conditions are necessary, not sufficient
    assert bool(c.skipped) == expected
    if expected:
        assert torch.equal(c.coeffs, torch.zeros_like(c.coeffs))
        assert bool(torch.isnan(c.alpha).all()) and bool(torch.isnan(c.duality_gap))
    good = ck.gram(_grads(), backend=backend)
    assert not bool(ck.camegrad_coefficients(good, backend=backend).skipped)


GRAM_KINDS = [("conflicting", 4, D), ("collinear", 6, D), ("random", 16, 3), ("zero", 3, D)]


@pytest.mark.parametrize(
    "backend,kind,n,d",
    [(b, *k) for b in BACKENDS if b != "triton" for k in GRAM_KINDS]
    + [(b, *GRAM_KINDS[0]) for b in BACKENDS if b == "triton"],  # interpreted: seconds a solve
)
def test_real_grams_pass(backend, kind, n, d):
    dtypes = (torch.float16, torch.float32, torch.float64)
    for dtype in dtypes[1:2] if backend == "triton" else dtypes:
        g = make_grads(kind, n, d, dtype).to(DEVICE)
        M = ck.gram(g, backend=backend)
        assert not bool(nonfinite_policy.gram_defect(M))
        c = ck.camegrad_coefficients(M, backend=backend)
        assert not bool(c.skipped)
        assert rel_err(ck.combine(g, c.coeffs, backend=backend), ck.camegrad_step(g)) < 1e-2


def test_nonfinite_gram_still_skipped_not_raised():
    M = torch.eye(3)
    M[1, 1] = math.nan
    c = ck.camegrad_coefficients(M)
    assert bool(c.skipped) and torch.equal(c.coeffs, torch.zeros(3))


def test_the_step_does_not_validate_its_own_gram(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("eigvalsh on the step's path")

    monkeypatch.setattr(torch.linalg, "eigvalsh", forbidden)
    monkeypatch.setattr(validation, "check_host_gram", forbidden)
    monkeypatch.setattr(nonfinite_policy, "gram_defect", forbidden)
    for backend in [b for b in BACKENDS if b != "triton"]:  # (the same api path)
        ck.camegrad_step(_grads(), backend=backend)
        ck.camegrad_step(_grads(), backend=backend, nonfinite="skip")
    p = torch.nn.Parameter(torch.randn(D))
    CAMEGrad([p], timing=True).backward([(p * p).sum(), p.sum()])  # timed path too


# --------------------------------------------------------------------------- 4. out=


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["step", "combine"])
def test_out_saved_by_autograd_makes_backward_raise(backend, op):
    g = _grads()
    x = torch.randn(D, requires_grad=True, device=DEVICE)
    out = torch.zeros(D, device=DEVICE)
    loss = (x * out).sum()  # mul saves out for x's gradient
    version = out._version
    if op == "step":
        ck.camegrad_step(g, out=out, backend=backend)
    else:
        ck.combine(g, torch.ones(4), out=out, backend=backend)
    assert out._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["step", "combine"])
def test_out_requiring_grad_is_refused(backend, op):
    g = _grads()

    def run(out):
        if op == "step":
            return ck.camegrad_step(g, out=out, backend=backend)
        return ck.combine(g, torch.ones(4), out=out, backend=backend)

    leaf = torch.zeros(D, requires_grad=True, device=DEVICE)
    with pytest.raises(ValueError, match="out: a leaf Variable that requires grad"):
        run(leaf)
    with pytest.raises(ValueError, match="out: expected a tensor that does not require grad"):
        run(leaf * 2)
    assert torch.equal(leaf.detach(), torch.zeros(D))
    with torch.no_grad():  # as torch's in-place ops: allowed without grad mode
        assert run(leaf) is leaf
    assert not torch.equal(leaf.detach(), torch.zeros(D))


def test_out_under_inference_mode():
    with torch.inference_mode():
        out = torch.empty(D)
        assert ck.camegrad_step(_grads(), out=out) is out


# --------------------------------------------------------------------------- 5. types


REALS = [
    ("rho", np.float32(0.5)),
    ("rho", np.float64(0.5)),
    ("rho", Fraction(1, 2)),
    ("kappa", np.float16(1.5)),
    ("kappa", np.int64(2)),
    ("nu", np.float32(0.25)),
    ("eps", np.float32(1e-8)),
]
# The interpreted Triton solve takes seconds: one case there (the values reach every
# backend as Python floats, converted once in api).
REAL_CASES = [(b, *case) for b in BACKENDS if b != "triton" for case in REALS] + [
    (b, *REALS[0]) for b in BACKENDS if b == "triton"
]


@pytest.mark.parametrize("backend,name,value", REAL_CASES)
def test_real_numbers_are_hyperparameters(backend, name, value):
    g = _grads()
    got = ck.camegrad_step(g, backend=backend, **{name: value})
    want = ck.camegrad_step(g, backend=backend, **{name: float(value)})
    assert torch.equal(got, want)
    M = ck.gram(g, backend=backend)
    got = ck.camegrad_coefficients(M, backend=backend, **{name: value}).coeffs
    want = ck.camegrad_coefficients(M, backend=backend, **{name: float(value)}).coeffs
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "value", [True, np.bool_(True), "0.5", torch.tensor(0.5), 0.5j, None]
)
def test_non_reals_are_refused(value):
    with pytest.raises(TypeError, match="rho: expected a real number"):
        ck.camegrad_step(_grads(), rho=value)
    with pytest.raises(TypeError, match="rho: expected a real number"):
        CAMEGrad(torch.nn.Linear(2, 2).parameters(), rho=value)


@pytest.mark.parametrize("value", ["yes", 1, 0, None, np.bool_(True)])
def test_return_info_must_be_a_bool(value):
    with pytest.raises(TypeError, match="return_info: expected a bool"):
        ck.camegrad_step(_grads(), return_info=value)


def test_trainer_and_compat_take_numpy_scalars():
    lin = torch.nn.Linear(3, 2)
    cg = CAMEGrad(lin.parameters(), rho=np.float32(0.5), kappa=np.float32(1.5), nu=np.float64(0.2))
    assert type(cg.rho) is float and type(cg.kappa) is float and cg.kappa == 1.5
    x = torch.randn(4, 3)
    cg.backward([lin(x).sum(), lin(x).pow(2).sum()])
    opt = CAME_Grad(torch.optim.SGD(lin.parameters(), lr=0.1), rho=np.float32(0.5))
    opt.step([lin(x).sum(), lin(x).pow(2).sum()])
    assert type(opt.camegrad.rho) is float


# --------------------------------------------------------------------------- the sharded step


def _shard_overflows(device):
    # Only rank 1's shard overflows fp16; the global Gram and coefficients are finite.
    return torch.full((2, 4), 4e4 if dist.get_rank() == 1 else 1.0, dtype=torch.float16)


def _sharded_skip(device):
    out, info = step_sharded(
        _shard_overflows(device), backend="torch", nonfinite="skip", return_info=True
    )
    assert bool(info.skipped), "every rank skips"
    assert torch.equal(out, torch.zeros_like(out))


def _sharded_raise(device):
    with pytest.raises(ValueError, match=r"the update overflowed torch\.float16"):
        step_sharded(_shard_overflows(device), backend="torch")


def _sharded_out_checks(device):
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(dist.get_rank()))
    with pytest.raises(ValueError, match="out: a leaf Variable"):
        step_sharded(g, out=torch.zeros(4, requires_grad=True), backend="torch")
    x = torch.randn(4, requires_grad=True)
    out = torch.zeros(4)
    loss = (x * out).sum()
    step_sharded(g, out=out, backend="torch", rho=np.float32(0.5))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with pytest.raises(TypeError, match="return_info"):
        step_sharded(g, backend="torch", return_info="yes")
    with pytest.raises(ValueError, match=r"kappa: .*float32"):
        step_sharded(g, backend="torch", kappa=1e40)


SHARDED_CASES = {"skip": _sharded_skip, "raise": _sharded_raise, "out": _sharded_out_checks}


def test_sharded_step_agrees_on_overflow_and_checks_out(tmp_path):
    results = ranks.spawn(2, "gloo", tmp_path, __name__, "SHARDED_CASES")
    failures = "\n".join(filter(None, (ranks.failures(results, name) for name in SHARDED_CASES)))
    assert not failures, failures


def test_indefinite_small_block_raises_on_the_host():
    """PSD judged on the Jacobi-scaled matrix: a small task's block is not hidden by the trace."""
    M = torch.tensor([[1.0, 0, 0], [0, 1e-10, 3e-10], [0, 3e-10, 1e-10]], dtype=torch.float64)
    with pytest.raises(ValueError, match="gram: not positive semidefinite"):
        ck.camegrad_coefficients(M)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_coefficients_beyond_the_combine_dtype_raise(backend):
    """Norms 1e40 apart in fp32: finite float64 coefficients that overflow the fp32 combine."""
    G = torch.tensor([[1e-40, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float32)
    with pytest.raises(ValueError, match="coeffs: a coefficient of .* does not fit the torch.float32"):
        ck.camegrad_step(G, backend=backend)
    # float64 has the range: the update is finite and right.
    out = ck.camegrad_step(G.double(), backend=backend)
    assert torch.allclose(out, torch.tensor([0.5367, 1.3733, 0.0], dtype=torch.float64), atol=1e-4)
