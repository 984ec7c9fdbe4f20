"""CAME-Grad's own cases on every backend present: hard geometries, ablations, closed
forms, determinism, the nonfinite policy (the backend x method x geometry x dtype
matrix is tests/test_conformance.py). The Triton interpreter gets small d."""

import pytest
import torch
from helpers import UPDATE_TOL, backend_cases, make_grads, rel_err

import camegrad_kernels as ck
from camegrad_kernels import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ck.available_backends()


def _d(backend: str, d: int) -> int:
    interpreted = backend == "triton" and DEVICE == "cpu"
    return min(d, 301) if interpreted else d


def _on(backend: str) -> str:
    """The device a backend's tensors live on here: the C++ cpu backend runs CPU tensors."""
    return "cpu" if backend == "cpu" else DEVICE


def _step(g, backend, **kw):
    return ck.camegrad_step(g.to(_on(backend)), backend=backend, return_info=True, **kw)


HARD = [("collinear", 1.0), ("opposing", 1.0), ("zero", 1.0), ("random", 1e-12),
        ("random", 1e12), ("correlated", 1.0)]
HARD_CASES = backend_cases(
    BACKENDS,
    [(kind, scale, dtype) for kind, scale in HARD for dtype in (torch.float32, torch.float64)],
    lambda c: c[2] == torch.float32,  # interpreted Triton: fp32 (test_triton.py: fp64)
)


@pytest.mark.parametrize("backend,kind,scale,dtype", HARD_CASES, ids=str)
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


@pytest.mark.parametrize(
    "backend,dtype",
    # Interpreted Triton: none here (tests/test_triton.py::test_bitwise_deterministic).
    backend_cases(BACKENDS, [torch.bfloat16, torch.float32], lambda c: False),
    ids=str,
)
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
