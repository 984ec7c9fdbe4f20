"""The CUDA backend (csrc/cuda): the nvcc build check, which runs without a GPU,
and GPU checks against the reference backend and the float64 solver."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import torch
from helpers import make_grads

import camegrad_kernels
from camegrad_kernels import ops, solver
from camegrad_kernels.backends import cuda as cuda_backend
from camegrad_kernels.backends import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
NVCC = os.environ.get("NVCC") or shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TASKS = (1, 2, 4, 8, 16, 40, 64)

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch.cuda.is_available() is False"
)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
def test_cuda_sources_compile_for_sm86_and_sm90():
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / "check_cuda.sh")],
        env={**os.environ, "NVCC": NVCC},
        capture_output=True,
        check=False,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_unavailable_off_cuda():
    assert cuda_backend.unavailable_reason(torch.device("cpu"), torch.float32) is not None


@pytest.fixture
def cuda_ops():
    # With a GPU, a missing extension is a build failure, not a skip.
    assert ops.HAS_CUDA_OPS, f"camegrad_kernels._cuda did not load: {ops.LOAD_ERRORS}"
    assert cuda_backend.unavailable_reason(torch.device("cuda"), torch.float32) is None


def grads(n: int, d: int, dtype: torch.dtype, kind: str = "random", seed: int = 0) -> torch.Tensor:
    return make_grads(kind, n, d, dtype, seed).cuda()


def gram_error(M: torch.Tensor, G: torch.Tensor) -> float:
    """max |M - G G^T| / (||g_i|| ||g_j||), with G G^T in float64."""
    G64 = G.double()
    ref = G64 @ G64.T
    norms = ref.diagonal().clamp_min(0).sqrt()
    return float(((M.double() - ref).abs() / torch.outer(norms, norms).clamp_min(1e-300)).max())


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", TASKS)
@pytest.mark.parametrize("d", (1, 1001, 4096, 100_003))
def test_gram_matches_float64(cuda_ops, dtype, n, d):
    G = grads(n, d, dtype, seed=n + d)
    M = cuda_backend.gram(G)
    assert M.dtype == reference.accumulate_dtype(dtype) and M.shape == (n, n)
    assert torch.equal(M, M.T)
    assert gram_error(M, G) <= (1e-12 if dtype == torch.float64 else 1e-5)


@needs_gpu
def test_gram_is_bitwise_deterministic(cuda_ops):
    G = grads(8, 1_000_003, torch.float32)
    first = cuda_backend.gram(G)
    assert all(torch.equal(first, cuda_backend.gram(G)) for _ in range(3))
    # A misaligned view takes the scalar-load path and must sum in the same order.
    flat = torch.empty(8 * 4096 + 1, device="cuda")
    view = flat[1:].view(8, 4096)
    view.copy_(grads(8, 4096, torch.float32))
    assert torch.equal(cuda_backend.gram(view), cuda_backend.gram(view.clone()))


@needs_gpu
@pytest.mark.parametrize("gram_dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", TASKS)
@pytest.mark.parametrize("kind", ("random", "correlated", "conflicting"))
def test_coefficients_match_float64_solver(cuda_ops, gram_dtype, n, kind):
    G = grads(n, 2 * n + 7, torch.float64, kind, seed=n).double()
    M = (G @ G.T).to(gram_dtype)
    w = torch.rand(n, device="cuda", dtype=gram_dtype) + 0.1
    args = (0.5, 1.5, 0.2, 1e-8, solver.ALL_STAGES)
    alpha, coeffs, gap, skipped = cuda_backend.coefficients(M, w, *args)
    r_alpha, r_coeffs, r_gap, r_skipped = solver.camegrad_coefficients(M.cpu(), w.cpu(), *args)
    assert coeffs.dtype == gram_dtype and not bool(skipped) and not bool(r_skipped)
    tol = 1e-9 if gram_dtype == torch.float64 else 1e-5
    assert torch.allclose(
        coeffs.cpu().double(), r_coeffs.double(), rtol=tol, atol=tol * r_coeffs.abs().max()
    )
    assert torch.allclose(alpha.cpu().double(), r_alpha.double(), rtol=0, atol=1e-6)
    assert float(gap) <= max(float(r_gap), 0.0) + 1e-6


@needs_gpu
@pytest.mark.parametrize("stages", range(8))
@pytest.mark.parametrize("n", (1, 3, 40))
def test_coefficients_stage_masks(cuda_ops, stages, n):
    G = grads(n, 2 * n + 3, torch.float64, seed=stages)
    M, w = G @ G.T, torch.rand(n, device="cuda", dtype=torch.float64) + 0.1
    got = cuda_backend.coefficients(M, w, 0.4, 2.0, 0.3, 1e-8, stages)
    ref = solver.camegrad_coefficients(M.cpu(), w.cpu(), 0.4, 2.0, 0.3, 1e-8, stages)
    for a, b in zip(got[:3], ref[:3]):
        assert torch.allclose(a.cpu(), b, rtol=1e-8, atol=1e-8, equal_nan=True)
    assert bool(got[3]) == bool(ref[3])


@needs_gpu
@pytest.mark.parametrize("bad", (float("nan"), float("inf")))
def test_coefficients_nonfinite_gram_is_skipped(cuda_ops, bad):
    M = torch.eye(5, device="cuda")
    M[4, 0] = bad
    alpha, coeffs, gap, skipped = cuda_backend.coefficients(
        M, torch.ones(5, device="cuda"), 0.5, 1.5, 0.2, 1e-8, 7
    )
    assert bool(skipped) and torch.equal(coeffs, torch.zeros_like(coeffs))
    assert torch.isnan(alpha).all() and torch.isnan(gap)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", TASKS)
@pytest.mark.parametrize("d", (1, 1001, 4096))
def test_combine_matches_reference(cuda_ops, dtype, n, d):
    G = grads(n, d, dtype, seed=d)
    c = torch.randn(n, device="cuda", dtype=reference.accumulate_dtype(dtype))
    got = cuda_backend.combine(G, c, torch.empty(d, device="cuda", dtype=dtype), None)
    ref = reference.combine(G, c, torch.empty(d, device="cuda", dtype=dtype), None)
    # fp32 sums in another order, then (fp16/bf16) one rounding: an ulp of the output.
    eps = torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 1e-5
    scale = (c.abs() @ G.abs().to(c.dtype)).to(torch.float64)
    assert ((got.double() - ref.double()).abs() <= eps * scale + 1e-30).all()
    skip = torch.ones((), dtype=torch.bool, device="cuda")
    G[0, 0] = float("nan")
    zeros = cuda_backend.combine(G, c, torch.empty(d, device="cuda", dtype=dtype), skip)
    assert torch.equal(zeros, torch.zeros_like(zeros))


@needs_gpu
def test_combine_into_other_dtype_and_strided_out(cuda_ops):
    G, c = grads(4, 1001, torch.bfloat16), torch.randn(4, device="cuda")
    wide = cuda_backend.combine(G, c, torch.empty(1001, device="cuda"), None)
    assert torch.allclose(wide, c @ G.float(), rtol=1e-5, atol=1e-5)
    # Accumulated in fp32 and rounded once, whichever way out is written.
    narrow = cuda_backend.combine(
        G, c, torch.empty(1001, device="cuda", dtype=torch.bfloat16), None
    )
    strided = torch.zeros(2 * 1001, device="cuda", dtype=torch.bfloat16)[::2]
    cuda_backend.combine(G, c, strided, None)
    assert torch.equal(narrow, wide.to(torch.bfloat16)) and torch.equal(strided, narrow)


@needs_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("n", (2, 40))
def test_step_matches_reference_backend(cuda_ops, dtype, n):
    G = grads(n, 1_000_003, dtype, "conflicting")
    got = camegrad_kernels.camegrad_step(G, backend="cuda")
    ref = camegrad_kernels.camegrad_step(G, backend="reference")
    truth = camegrad_kernels.camegrad_step(G.double(), backend="reference")
    assert got.dtype == dtype

    def err(x):
        return float((x.double() - truth).norm() / truth.norm())

    # fp32 Gram rounding moves the update by ~10x its relative size (either
    # summation order), so: at least as accurate as the reference backend.
    assert err(got) <= 2 * err(ref) + 1e-6
    assert torch.equal(got, camegrad_kernels.camegrad_step(G, backend="cuda"))


def _capture(fn):
    """fn() captured in a CUDA graph (after a warm-up on a side stream, as torch advises)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@needs_gpu
@pytest.mark.parametrize("n", (8, 64))  # 64 tasks: the solver's shared memory opt-in during capture
def test_step_cuda_graph_replay_equals_eager(cuda_ops, n):
    static = grads(n, 100_003, torch.float32)
    graph, out = _capture(
        lambda: camegrad_kernels.camegrad_step(static, nonfinite="skip", backend="cuda")
    )
    for seed in (1, 2):
        static.copy_(grads(n, 100_003, torch.float32, "conflicting", seed))
        graph.replay()
        eager = camegrad_kernels.camegrad_step(static, nonfinite="skip", backend="cuda")
        assert torch.equal(out, eager)
    static[1, 7] = float("inf")
    graph.replay()
    assert torch.equal(out, torch.zeros_like(out))


@needs_gpu
def test_fused_step_op_cuda_graph(cuda_ops):
    static, w = grads(40, 50_001, torch.bfloat16), torch.ones(40, device="cuda")

    def step():
        return torch.ops.camegrad.step(static, w, 0.5, 1.5, 0.2, 1e-8, solver.ALL_STAGES)

    graph, outs = _capture(step)
    graph.replay()
    eager = step()
    assert all(torch.equal(a, b) for a, b in zip(outs, eager))


@needs_gpu
def test_step_d_1e8_float32(cuda_ops):
    n, d = 2, 100_000_000
    need = 8 * 2**30  # G, the update and float64 temporaries of the checks
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    G = torch.randn(n, d, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    M = cuda_backend.gram(G)
    ref = torch.stack(
        [torch.stack([G[i].double().dot(G[j].double()) for j in range(n)]) for i in range(n)]
    )
    assert float(((M.double() - ref).abs() / ref.diagonal().max()).max()) <= 1e-5
    update = camegrad_kernels.camegrad_step(G, backend="cuda")
    _, coeffs, _, _ = cuda_backend.coefficients(
        M, torch.ones(n, device="cuda"), 0.5, 1.5, 0.2, 1e-8, solver.ALL_STAGES
    )
    expected = coeffs[0].double() * G[0].double() + coeffs[1].double() * G[1].double()
    assert float((update.double() - expected).abs().max() / expected.abs().max()) <= 1e-6


@needs_gpu
def test_more_tasks_than_the_kernels_take(cuda_ops):
    # Beyond the solver's (and the Gram kernel's) limits the backend runs the reference's torch ops.
    for n in (cuda_backend.SOLVE_MAX_TASKS + 1, cuda_backend.GRAM_MAX_TASKS + 1):
        G = grads(n, 4001, torch.float64)
        got = camegrad_kernels.camegrad_step(G, backend="cuda")
        ref = camegrad_kernels.camegrad_step(G, backend="reference")
        assert float((got - ref).norm() / ref.norm()) <= 1e-9
