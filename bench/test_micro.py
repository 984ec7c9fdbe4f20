"""pytest-benchmark micro-benchmarks of the three passes on the CPU: gram, coefficients, combine.

Not part of the test suite (``pytest tests`` / ``testpaths`` never collect bench/).

    pytest bench/test_micro.py --benchmark-autosave                 # save a baseline
    pytest bench/test_micro.py --benchmark-compare                  # compare with the last save
    pytest bench/test_micro.py --benchmark-compare=0001 --benchmark-compare-fail=median:10%
    pytest bench/test_micro.py -k "cpu and gram"                    # a subset

Backends "cpu" (skipped when the C++ extension is not built) and "torch".
Each benchmark is checked against the reference backend once before timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from camegrad_kernels import api, ops

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BACKENDS = [
    "torch",
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not ops.HAS_CPU_OPS, reason=f"C++ extension not built: {ops.LOAD_ERRORS.get('_C')}"
        ),
    ),
]
# (n, d, dtype): a CelebA-like n, the CPU mid-size of docs/camegrad.md §7, and a bf16 case.
SIZES = [
    (4, 10**6, torch.float32),
    (40, 10**5, torch.float32),
    (4, 10**6, torch.bfloat16),
]
SIZE_IDS = [f"n{n}-d{d:.0e}-{str(t).replace('torch.', '')}" for n, d, t in SIZES]


def _grads(n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234 + n)
    G = torch.randn(n, d, generator=gen)
    G.addr_(torch.linspace(-0.6, 1.2, n), torch.randn(d, generator=gen))
    return G.to(dtype)


@pytest.fixture(scope="module", params=SIZES, ids=SIZE_IDS)
def problem(request):
    n, d, dtype = request.param
    G = _grads(n, d, dtype)
    M = api.gram(G, backend="torch")
    co = api.camegrad_coefficients(M, backend="torch")
    return G, M, co.coeffs


@pytest.mark.parametrize("backend", BACKENDS)
def test_gram(benchmark, backend, problem):
    G, M_ref, _ = problem
    benchmark.group = f"gram {G.shape[0]}x{G.shape[1]:.0e} {G.dtype}"
    M = api.gram(G, backend=backend)
    torch.testing.assert_close(M, M_ref, rtol=1e-4, atol=1e-5 * float(M_ref.diagonal().max()))
    benchmark(api.gram, G, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coefficients(benchmark, backend, problem):
    G, M, c_ref = problem
    benchmark.group = f"coefficients n={G.shape[0]}"
    co = api.camegrad_coefficients(M, backend=backend)
    torch.testing.assert_close(co.coeffs, c_ref, rtol=1e-4, atol=1e-6)
    benchmark(api.camegrad_coefficients, M, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine(benchmark, backend, problem):
    G, _, c = problem
    benchmark.group = f"combine {G.shape[0]}x{G.shape[1]:.0e} {G.dtype}"
    out = torch.empty(G.shape[1], dtype=G.dtype)
    ref = api.combine(G, c, backend="torch")
    api.combine(G, c, out=out, backend=backend)
    tol = 1e-5 if G.dtype == torch.float32 else 1e-2
    rel = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert rel <= tol, f"combine rel. error {rel:.2e} > {tol}"
    benchmark(api.combine, G, c, out=out, backend=backend)
