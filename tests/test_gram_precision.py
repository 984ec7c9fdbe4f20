"""The Gram's precision where it decides the answer: task norms 1e6-1e7 apart.

An fp32 Gram is off by ~eps32 |g_i| |g_j| in each cross term, which relative to
|g_i|^2 grows with the norm ratio |g_j| / |g_i|: at the ratios of multi-task
training the dual then answers wrongly. Every backend's Gram is float64 for
every input dtype, accumulated from the exact fp64 products of the inputs, so
it is within ~1e-12 |g_i| |g_j| of float64 G G^T on the same (rounded) input,
and CAME-Grad on fp32 gradients agrees with CAME-Grad on their float64 copy.

The Triton backend runs under its interpreter on CPU (slow): small d there.
"""

from __future__ import annotations

import pytest
import torch
from helpers import backend_cases

import camegrad_kernels as ck
from camegrad_kernels import backends
from camegrad_kernels.backends import torch_ops

BACKENDS = ck.available_backends()
LOW = [torch.float16, torch.bfloat16, torch.float32]
SCALES = (1.0, 1e-3, 1e-6, 1e-7)  # row norms: ratios up to 1e7
GEOMETRIES = ("random", "nearly orthogonal", "nearly opposite")
GRAM_TOL = 1e-12  # relative to |g_i| |g_j|


def _device(backend: str) -> torch.device:
    on_gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu else "cpu")


def _d(backend: str) -> int:
    # CPU: three Gram chunks of the C++ kernel, two of the reference's; Triton's
    # interpreter: two programs, the last one partly masked.
    return 1031 if backend == "triton" and _device(backend).type == "cpu" else 70_001


def _grads(geometry: str, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Four unit directions in float64, scaled by SCALES, then rounded to dtype.

    "nearly orthogonal": each row is orthogonal to the first up to 1e-6 of it,
    so the cross terms are tiny next to |g_i| |g_j| (an fp32 sum's error is
    not). "nearly opposite": rows 1 and 2 are -g_0 and +g_0 up to 1e-3.
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(4, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    a = u[0]
    if geometry == "nearly orthogonal":
        rest = u[1:] - (u[1:] @ a)[:, None] * a[None, :]
        rest = rest / rest.norm(dim=1, keepdim=True) + 1e-6 * a
        u = torch.cat([a[None], rest])
    elif geometry == "nearly opposite":
        u = torch.stack([a, -a + 1e-3 * u[1], a + 1e-3 * u[2], -a + 1e-3 * u[3]])
    elif geometry != "random":
        raise ValueError(geometry)
    # fp16 tops out at 65504 and its normal range ends at 6e-5: entries ~1e3 at
    # the largest row keep the smallest (1e-7 of it) representable.
    base = 1e3 * d**0.5 if dtype == torch.float16 else 1.0
    g = u / u.norm(dim=1, keepdim=True) * torch.tensor(SCALES, dtype=torch.float64)[:, None]
    return (base * g).to(dtype).contiguous()


def _relative_gram_error(M: torch.Tensor, G: torch.Tensor) -> float:
    """max |M - G G^T| / (|g_i| |g_j|), G G^T in float64 on the same input."""
    g = G.double().cpu()
    truth = g @ g.T
    norms = g.norm(dim=1)
    err = (M.cpu() - truth).abs()
    scale = torch.outer(norms, norms)
    assert bool((err[scale == 0] == 0).all())  # zero rows: exactly zero entries
    return float((err / scale.clamp_min(1e-300)).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_gram_is_float64_accurate(backend, geometry, dtype):
    G = _grads(geometry, _d(backend), dtype).to(_device(backend))
    module = backends.load(backend)
    M = module.gram(G)
    assert M.dtype == torch_ops.gram_dtype(dtype) == torch.float64 and M.shape == (4, 4)
    assert torch.equal(M, M.T)
    assert _relative_gram_error(M, G) <= GRAM_TOL
    assert torch.equal(module.gram(G), M)  # deterministic: same bits twice
    # And through the public API.
    assert torch.equal(ck.gram(G, backend=backend), M)


def test_an_fp32_sum_would_not_do():
    """The check above discriminates: an fp32-accumulated Gram fails it by far."""
    G = _grads("nearly orthogonal", 70_001, torch.float32)
    assert _relative_gram_error((G @ G.T).double(), G) > 1e3 * GRAM_TOL


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ CPU backend is not built")
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_cpu_gram_same_bits_at_1_or_2_threads(dtype):
    G = _grads("nearly opposite", 200_003, dtype, seed=1)
    threads = torch.get_num_threads()
    try:
        grams = []
        for t in (1, 2):
            torch.set_num_threads(t)
            grams.append(backends.load("cpu").gram(G))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grams[0], grams[1])
    assert _relative_gram_error(grams[0], G) <= GRAM_TOL


@pytest.mark.parametrize(
    "backend,geometry",
    # Interpreted Triton: the nearly opposite pair, where an fp32 Gram fails worst.
    backend_cases(BACKENDS, list(GEOMETRIES), lambda c: c[0] == "nearly opposite"),
)
def test_fp32_step_matches_float64_at_norm_ratio_1e7(backend, geometry):
    """CAME-Grad on fp32 gradients = CAME-Grad on their float64 copy, to 1e-4."""
    G = _grads(geometry, _d(backend), torch.float32, seed=2).to(_device(backend))
    out, info = ck.camegrad_step(G, backend=backend, return_info=True)
    want, want_info = ck.camegrad_step(G.double(), backend=backend, return_info=True)
    assert info.coeffs.dtype == info.alpha.dtype == torch.float64
    assert not bool(info.skipped)
    err = float((out.double() - want).norm() / want.norm())
    assert err <= 1e-4
    c, c64 = info.coeffs.cpu(), want_info.coeffs.cpu()
    assert bool(((c - c64).abs() <= 1e-4 * c64.abs() + 1e-300).all()), (c, c64)
    a, a64 = info.alpha.cpu(), want_info.alpha.cpu()
    assert bool(((a - a64).abs() <= 1e-4 * a64.abs().max()).all()), (a, a64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_combine_takes_float64_coefficients(backend, dtype):
    """The solvers return float64 (the Gram's dtype): combine rounds them to its own."""
    device = _device(backend)
    G = _grads("random", 1031, dtype, seed=3).to(device)
    c = torch.tensor([0.7, -1.3e2, 2.5e5, 3.1e6], dtype=torch.float64, device=device)
    module = backends.load(backend)
    got = module.combine(G, c, torch.empty(G.shape[1], dtype=dtype, device=device), None)
    acc = torch_ops.accumulate_dtype(dtype)
    want = module.combine(G, c.to(acc), torch.empty(G.shape[1], dtype=dtype, device=device), None)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(ck.combine(G, c, backend=backend), want)
