"""The torch-ops Gram-space solver (the fallback of every backend)."""

import pytest
import torch
from helpers import make_grads, rel_err
from torch._subclasses.fake_tensor import FakeTensorMode

from camegrad_kernels import reference, solver


@pytest.mark.parametrize("dtype,gap_tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
@pytest.mark.parametrize("n", [2, 4, 8, 16, 40, 64, 96])
@pytest.mark.parametrize("kind", ["random", "conflicting", "correlated"])
def test_gap_certificate(dtype, gap_tol, n, kind):
    g = make_grads(kind, n, 257, dtype, seed=n + 1)
    M = g @ g.T
    w = torch.ones(n, dtype=dtype)
    alpha, coeffs, gap, skipped = solver.camegrad_coefficients(M, w, 0.5, 1.5, 0.2, 1e-8)
    assert not skipped
    assert -1e-12 <= gap <= gap_tol  # rounding may leave it a hair below 0
    assert alpha.min() >= 0 and torch.isclose(alpha.sum(), torch.tensor(1.0, dtype=dtype))
    expected = reference.camegrad_step(g)
    assert rel_err(coeffs.double() @ g.double(), expected) < (1e-4 if dtype == torch.float32 else 1e-9)


def test_projection_onto_simplex():
    v = torch.tensor([0.5, 2.0, -1.0, 0.7], dtype=torch.float64)
    p = solver.project_simplex(v)
    assert torch.allclose(p, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    v = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    assert torch.allclose(solver.project_simplex(v), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_no_host_sync_and_fixed_work():
    """Under FakeTensorMode any data-dependent read (.item(), bool(), nonzero) raises."""
    with FakeTensorMode():
        M = torch.empty(8, 8)
        w = torch.empty(8)
        _, coeffs, gap, skipped = solver.camegrad_coefficients(M, w, 0.5, 1.5, 0.2, 1e-8)
    assert coeffs.shape == (8,) and gap.shape == () and skipped.dtype == torch.bool


def test_nonfinite_gram_is_skipped():
    M = torch.eye(3)
    M[1, 1] = float("nan")
    _, coeffs, gap, skipped = solver.camegrad_coefficients(M, torch.ones(3), 0.5, 1.5, 0.2, 1e-8)
    assert skipped and torch.equal(coeffs, torch.zeros(3)) and torch.isnan(gap)
