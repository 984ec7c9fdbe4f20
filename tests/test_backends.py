"""Every backend present against the float64 paper-literal reference.

The Triton backend runs under its interpreter on CPU (slow), so it gets small d.
"""

import pytest
import torch
from helpers import make_grads, rel_err

import camegrad_kernels as ck
from camegrad_kernels import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ck.available_backends()
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# Relative error of the update vs float64: the output rounding of each dtype.
UPDATE_TOL = {torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float32: 1e-4, torch.float64: 1e-9}
# The Gram is float64 for every dtype, with products of the inputs exact in fp64.
GRAM_TOL = 1e-12


def _d(backend: str, d: int) -> int:
    interpreted = backend == "triton" and DEVICE == "cpu"
    return min(d, 301) if interpreted else d


def _on(backend: str) -> str:
    """The device a backend's tensors live on here: the C++ cpu backend runs CPU tensors."""
    return "cpu" if backend == "cpu" else DEVICE


def _step(g, backend, **kw):
    return ck.camegrad_step(g.to(_on(backend)), backend=backend, return_info=True, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 16, 40, 64])
def test_step_matches_reference(backend, dtype, n):
    if backend == "triton" and DEVICE == "cpu" and n >= 40 and dtype != torch.float32:
        # The solve sees the same float64 Gram for every dtype; each dtype's Gram and
        # combine run at n < 40. Under the interpreter each of these costs ~8 s.
        pytest.skip("the Triton interpreter is slow: large n runs in float32 only")
    d = _d(backend, 1031 if n < 40 else 517)
    g = make_grads("conflicting" if n > 1 else "random", n, d, dtype, seed=n)
    w = torch.linspace(0.5, 2.0, n).tolist()
    out, info = _step(g, backend, weights=w)
    expected = reference.camegrad_step(g, w)
    assert out.dtype == dtype and out.shape == (d,)
    assert rel_err(out.cpu(), expected) < UPDATE_TOL[dtype]
    g64 = g.double()
    assert info.gram.dtype == torch.float64
    assert rel_err(info.gram.cpu(), g64 @ g64.T) < GRAM_TOL
    if n > 1:
        assert float(info.duality_gap) <= (1e-9 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind,scale",
    [
        ("collinear", 1.0),
        ("opposing", 1.0),
        ("zero", 1.0),
        ("random", 1e-12),
        ("random", 1e12),
        ("correlated", 1.0),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_hard_geometries(backend, kind, scale, dtype):
    d = _d(backend, 999)
    g = (make_grads(kind, 4, d, torch.float64) * scale).to(dtype)
    out, info = _step(g, backend)
    expected = reference.camegrad_step(g)
    assert torch.isfinite(out).all() and not bool(info.skipped)
    if kind == "zero":
        assert torch.equal(out.cpu(), torch.zeros(d, dtype=dtype))
        return
    # Opposing tasks have mu = 0 and a zero update: measure against the gradients.
    scale = max(float(expected.norm()), float(g.double().norm(dim=1).max()))
    assert float((out.cpu().double() - expected).norm()) / scale < UPDATE_TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_deficient_more_tasks_than_parameters(backend):
    g = make_grads("random", 12, 5, torch.float64)
    out, _ = _step(g, backend)
    assert rel_err(out.cpu(), reference.camegrad_step(g)) < 1e-7


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_forms(backend):
    d = _d(backend, 513)
    g1 = make_grads("random", 1, d, torch.float64)
    out, _ = _step(g1, backend, weights=[2.0])
    assert rel_err(out.cpu(), 3.0 * g1[0]) < 1e-8
    g = make_grads("conflicting", 5, d, torch.float64)
    base, _ = _step(g, backend, eps=0.0)
    perm = torch.tensor([4, 2, 0, 3, 1])
    permuted, _ = _step(g[perm], backend, eps=0.0)
    assert rel_err(permuted.cpu(), base.cpu()) < 1e-9
    scaled, _ = _step(3.0 * g, backend, eps=0.0)
    assert rel_err(scaled.cpu(), 3.0 * base.cpu()) < 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stages", [(), ("rectify",), ("rectify", "rescale"), ("rescale", "fuse")])
def test_ablations(backend, stages):
    g = make_grads("conflicting", 4, _d(backend, 300), torch.float64)
    out, _ = _step(g, backend, stages=stages)
    assert rel_err(out.cpu(), reference.camegrad_step(g, stages=stages)) < 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_bitwise_deterministic(backend, dtype):
    g = make_grads("conflicting", 8, _d(backend, 40_001), dtype).to(_on(backend))
    first, info1 = ck.camegrad_step(g, backend=backend, return_info=True)
    second, info2 = ck.camegrad_step(g, backend=backend, return_info=True)
    assert torch.equal(first, second) and torch.equal(info1.gram, info2.gram)
    assert torch.equal(info1.coeffs, info2.coeffs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skip_and_raise_on_nonfinite(backend):
    g = make_grads("random", 3, _d(backend, 257), torch.float32)
    g[1, 7] = float("inf")
    out, info = _step(g, backend, nonfinite="skip")
    assert bool(info.skipped) and torch.equal(out.cpu(), torch.zeros(g.shape[1]))
    with pytest.raises(ValueError, match=r"\[1\]"):
        _step(g, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_zero_with_zero_mean_is_zero_not_nan(backend):
    g = torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]], dtype=torch.float64)
    out, info = _step(g, backend, eps=0.0, nonfinite="skip")
    assert torch.equal(out.cpu(), torch.zeros(3, dtype=torch.float64))
    assert not bool(info.skipped)
    assert torch.equal(reference.camegrad_step(g, eps=0.0), torch.zeros(3, dtype=torch.float64))
