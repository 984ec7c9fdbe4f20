"""The CUDA backend (csrc/cuda): GPU checks against the torch backend and the float64 solver.

The nvcc build check that runs without a GPU is .ci/check_cuda.sh (a step of .ci/run).
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_grads

import camegrad_kernels
from camegrad_kernels import methods, ops, solver
from camegrad_kernels.backends import cuda as cuda_backend
from camegrad_kernels.backends import torch_ops

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TASKS = (1, 2, 4, 8, 16, 40, 64)

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch.cuda.is_available() is False"
)


def test_unavailable_off_cuda():
    assert cuda_backend.unavailable_reason(torch.device("cpu"), torch.float32) is not None


@pytest.fixture
def cuda_ops():
    # With a GPU, a missing extension is a build failure, not a skip.
    assert ops.HAS_CUDA_OPS, f"camegrad_kernels._cuda did not load: {ops.LOAD_ERRORS}"
    assert cuda_backend.unavailable_reason(torch.device("cuda"), torch.float32) is None


def require_backend(name: str) -> None:
    """With a GPU, a GPU backend that cannot run is a failure: cuda not built, or
    triton installed but unable to run (a skip only when triton is not installed)."""
    if name == "cuda":
        assert ops.HAS_CUDA_OPS, f"camegrad_kernels._cuda did not load: {ops.LOAD_ERRORS}"
        assert cuda_backend.unavailable_reason(torch.device("cuda"), torch.float32) is None
        return
    pytest.importorskip("triton", reason="triton is not importable")
    from camegrad_kernels.backends import triton as triton_backend

    reason = triton_backend.unavailable_reason(torch.device("cuda"), torch.float32)
    assert reason is None, reason


GPU_BACKENDS = ("cuda", "triton")


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
    # float64 for every dtype: products of the inputs are exact in fp64, summed there.
    assert M.dtype == torch_ops.gram_dtype(dtype) == torch.float64 and M.shape == (n, n)
    assert torch.equal(M, M.T)
    assert gram_error(M, G) <= 1e-12


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
    alpha, coeffs, gap, skipped = cuda_backend.solvers()["camegrad"](M, w, *args)
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
    got = cuda_backend.solvers()["camegrad"](M, w, 0.4, 2.0, 0.3, 1e-8, stages)
    ref = solver.camegrad_coefficients(M.cpu(), w.cpu(), 0.4, 2.0, 0.3, 1e-8, stages)
    for a, b in zip(got[:3], ref[:3]):
        assert torch.allclose(a.cpu(), b, rtol=1e-8, atol=1e-8, equal_nan=True)
    assert bool(got[3]) == bool(ref[3])


@needs_gpu
@pytest.mark.parametrize("bad", (float("nan"), float("inf")))
def test_coefficients_nonfinite_gram_is_skipped(cuda_ops, bad):
    M = torch.eye(5, device="cuda")
    M[4, 0] = bad
    alpha, coeffs, gap, skipped = cuda_backend.solvers()["camegrad"](
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
    c = torch.randn(n, device="cuda", dtype=torch_ops.accumulate_dtype(dtype))
    got = cuda_backend.combine(G, c, torch.empty(d, device="cuda", dtype=dtype), None)
    ref = torch_ops.combine(G, c, torch.empty(d, device="cuda", dtype=dtype), None)
    # float64 coefficients (the Gram's dtype, as the solvers return them) are
    # rounded to the combine's dtype first: the same bits.
    wide = cuda_backend.combine(G, c.double(), torch.empty(d, device="cuda", dtype=dtype), None)
    assert torch.equal(wide, got)
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
    ref = camegrad_kernels.camegrad_step(G, backend="torch")
    truth = camegrad_kernels.camegrad_step(G.double(), backend="torch")
    assert got.dtype == dtype

    def err(x):
        return float((x.double() - truth).norm() / truth.norm())

    # Both Grams are float64 (summed in other orders), so: at least as accurate
    # as the reference backend, up to the fp32 combine's rounding.
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
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("n", (8, 64))  # 64 tasks: the solver's shared memory opt-in during capture
def test_step_cuda_graph_replay_equals_eager(backend, n):
    # A whole camegrad_step captured (after a warm-up: Triton compiles and autotunes
    # there), replayed on new data in the same input buffer: the eager step's bits.
    require_backend(backend)
    static = grads(n, 100_003, torch.float32)
    graph, out = _capture(
        lambda: camegrad_kernels.camegrad_step(static, nonfinite="skip", backend=backend)
    )
    for seed in (1, 2):
        static.copy_(grads(n, 100_003, torch.float32, "conflicting", seed))
        graph.replay()
        eager = camegrad_kernels.camegrad_step(static, nonfinite="skip", backend=backend)
        assert torch.equal(out, eager)
    static[1, 7] = float("inf")
    graph.replay()
    assert torch.equal(out, torch.zeros_like(out))


@needs_gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_step_cuda_graph_with_out_and_info(backend):
    # The training-loop form: bf16 gradients, a preallocated out (a flat .grad)
    # and the info tensors, all written by the replay of the captured step.
    require_backend(backend)
    n, d = 5, 65_537
    static = grads(n, d, torch.bfloat16)
    out = torch.empty(d, device="cuda", dtype=torch.bfloat16)

    def step():
        return camegrad_kernels.camegrad_step(
            static, out=out, nonfinite="skip", backend=backend, return_info=True
        )

    graph, (captured, info) = _capture(step)
    assert captured.data_ptr() == out.data_ptr()
    static.copy_(grads(n, d, torch.bfloat16, "conflicting", 3))
    graph.replay()
    replayed = out.clone()
    alpha, coeffs = info.alpha.clone(), info.coeffs.clone()
    eager, eager_info = step()
    assert torch.equal(replayed, eager)
    assert torch.equal(coeffs, eager_info.coeffs) and torch.equal(alpha, eager_info.alpha)
    assert not bool(info.skipped)


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
    # d = 1e8, n = 4 (1.6 GB of fp32 gradients): the Gram against float64, the
    # step against the float64 reference, and the memory the step takes beyond
    # its input and output (the Gram's partials, small n-sized tensors).
    n, d = 4, 100_000_000
    need = 24 * 2**30  # G, its float64 copy and the reference's float64 d-vectors
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of free GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(0)
    G = torch.randn(n, d, device="cuda", generator=gen)
    G.mul_(torch.tensor([0.5, 1.0, 2.0, 4.0], device="cuda")[:, None] / d**0.5)
    G.add_(torch.randn(d, device="cuda", generator=gen), alpha=0.5 / d**0.5)
    G[0].mul_(-1.0)  # a task against the shared direction: Stage 1 has work to do
    M = cuda_backend.gram(G)
    assert M.dtype == torch.float64
    assert gram_error(M, G) <= 1e-12
    w = torch.ones(n, device="cuda")
    _, coeffs, _, skipped = cuda_backend.solvers()["camegrad"](M, w, 0.5, 1.5, 0.2, 1e-8, solver.ALL_STAGES)
    assert not bool(skipped)

    out = torch.empty(d, device="cuda")
    for nonfinite, budget in (("raise", 0), ("skip", d)):  # skip: one bool d-vector
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        update = camegrad_kernels.camegrad_step(G, backend="cuda", out=out, nonfinite=nonfinite)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
        assert update.data_ptr() == out.data_ptr()
        assert extra <= budget + 32 * 2**20, (
            f"{nonfinite}: {extra / 2**20:.1f} MiB beyond G and out"
        )

    expected = torch.zeros(d, device="cuda", dtype=torch.float64)
    for i in range(n):
        expected.add_(G[i].double(), alpha=float(coeffs[i]))
    assert float((out.double() - expected).norm() / expected.norm()) <= 1e-6
    truth = camegrad_kernels.reference.camegrad_step(G)  # camegrad_kernels.reference, float64 throughout
    assert float((out.double() - truth).norm() / truth.norm()) <= 1e-4  # fp32 UPDATE_TOL
    ref = camegrad_kernels.camegrad_step(G, backend="torch")
    assert float((out.double() - ref.double()).norm() / truth.norm()) <= 2e-4


@needs_gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("n, dtype", [(4, torch.float32), (40, torch.bfloat16)])
@pytest.mark.parametrize("weights", ("ones", "list"))
def test_step_skip_never_syncs_the_host(backend, n, dtype, weights):
    # nonfinite="skip" promises no host sync: torch raises on any synchronising
    # call (a device-to-host read, a stream sync, a blocking copy) under "error".
    require_backend(backend)
    d = 100_003
    G = grads(n, d, dtype, "conflicting", seed=n)
    out = torch.empty(d, device="cuda", dtype=dtype)
    w = None if weights == "ones" else torch.linspace(0.5, 2.0, n).tolist()

    def step():
        return camegrad_kernels.camegrad_step(
            G, w, out=out, backend=backend, nonfinite="skip", return_info=True
        )

    step()  # warm-up: module loads, Triton compiles and autotunes (those may sync)
    expected = step()[0].clone()
    torch.cuda.synchronize()
    results = []
    for poison in (False, True):
        if poison:
            G[n - 1, d // 2] = float("nan")
        torch.cuda.set_sync_debug_mode("error")
        try:
            result, info = step()
            results.append((result.clone(), info.skipped.clone(), info.gram.clone()))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    (clean, clean_skipped, gram), (poisoned, poisoned_skipped, _) = results
    assert torch.equal(clean, expected) and not bool(clean_skipped)
    assert gram.dtype == torch.float64 and bool(torch.isfinite(gram).all())
    assert bool(poisoned_skipped) and torch.equal(poisoned, torch.zeros_like(poisoned))


@needs_gpu
def test_more_tasks_than_the_kernels_take(cuda_ops):
    # Beyond the solver's (and the Gram kernel's) limits the backend runs the reference's torch ops.
    for n in (cuda_backend.SOLVE_MAX_TASKS + 1, cuda_backend.GRAM_MAX_TASKS + 1):
        G = grads(n, 4001, torch.float64)
        got = camegrad_kernels.camegrad_step(G, backend="cuda")
        ref = camegrad_kernels.camegrad_step(G, backend="torch")
        assert float((got - ref).norm() / ref.norm()) <= 1e-9


# --------------------------------------------------------------------------- baselines
# The native CAGrad, MGDA and PCGrad ops against camegrad_kernels.methods. On a
# full-rank Gram the optimum is unique and the results agree to rounding; on a
# singular one (n > d, or a zero gradient) alpha is not unique and the fixed
# iteration count may stop short of the optimum, so the checks there are bounds
# that hold whatever the rounding: the duality / Frank-Wolfe gaps bound how far
# each result is from the optimum, and so from the other.

BASELINE_TASKS = (1, 5, 33, 64)
BASELINE_KINDS = ("full", "deficient", "zero")


def baseline_inputs(n: int, kind: str, dtype: torch.dtype, seed: int = 0):
    """(M, w, order) on the GPU: M = G G^T of random G [n, d] (d < n for "deficient",
    one zero gradient for "zero"), weights in [0.2, 1.2), a PCGrad order."""
    gen = torch.Generator().manual_seed(seed)
    d = max(1, n // 2) if kind == "deficient" else 2 * n + 7
    G = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if kind == "zero" and n > 1:
        G[n // 2] = 0.0
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.2
    M = (G @ G.T).to(dtype)
    return M.cuda(), w.to(dtype).cuda(), methods.pcgrad_order(n, seed).cuda()


def assert_same_nans(got, want):
    for a, b in zip(got, want):
        assert torch.equal(a.isnan(), b.isnan()), (a, b)


def tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 1e-5


def assert_coeffs_close(got: torch.Tensor, want: torch.Tensor, tol: float):
    got, want = got.cpu().double(), want.cpu().double()
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())), (got, want)


def assert_on_simplex(alpha: torch.Tensor):
    tol = alpha.numel() * torch.finfo(alpha.dtype).eps
    alpha = alpha.cpu().double()
    assert bool((alpha >= 0).all()) and abs(float(alpha.sum()) - 1.0) <= tol, alpha


@needs_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", BASELINE_TASKS)
@pytest.mark.parametrize("kind", BASELINE_KINDS)
@pytest.mark.parametrize("rescale", (0, 1, 2))
def test_cagrad_matches_methods(cuda_ops, dtype, n, kind, rescale):
    M, w, _ = baseline_inputs(n, kind, dtype, seed=n)
    rho = 0.4
    got = cuda_backend.solvers()["cagrad"](M, w, rho, rescale)
    want = methods.cagrad_coefficients(M.cpu(), w.cpu(), rho, rescale)
    assert [t.dtype for t in got] == [dtype] * 3 + [torch.bool]
    assert not bool(got[3]) and not bool(want[3])
    assert_same_nans(got, want)
    assert_on_simplex(got[0])
    alpha, coeffs, gap = (t.cpu().double() for t in got[:3])
    if kind == "full" or n == 1:
        assert_coeffs_close(coeffs, want[1], tolerance(dtype))
        assert torch.allclose(alpha, want[0].double(), rtol=0, atol=1e-6)
        assert abs(float(gap) - float(want[2])) <= 1e-6
        return
    # The dual F(alpha) = alpha.b + s ||g_alpha|| on Mw: the gap bounds F(alpha) - min F.
    Mw = M.cpu().double() * w.cpu().double()[:, None] * w.cpu().double()[None, :]
    b = Mw.mean(dim=1)
    mu_norm = float(b.mean().clamp_min(0).sqrt())
    max_norm = float(Mw.diagonal().max().clamp_min(0).sqrt())

    def dual(a):
        return float(a @ b + rho * mu_norm * (a @ Mw @ a).clamp_min(0).sqrt())

    slack = (max(float(gap), 0.0) + 1e-9) * mu_norm * max_norm
    assert dual(alpha) <= dual(want[0].double()) + slack
    assert float(gap) <= 10 * max(float(want[2]), 0.0) + 1e-6


@needs_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", BASELINE_TASKS)
@pytest.mark.parametrize("kind", BASELINE_KINDS)
@pytest.mark.parametrize("normalization", ("none", "l2"))
def test_mgda_matches_methods(cuda_ops, dtype, n, kind, normalization):
    M, w, _ = baseline_inputs(n, kind, dtype, seed=n)
    got = cuda_backend.solvers()["mgda"](M, w, normalization)
    want = methods.mgda_coefficients(M.cpu(), w.cpu(), normalization)
    assert [t.dtype for t in got] == [dtype] * 3 + [torch.bool]
    assert not bool(got[3]) and not bool(want[3])
    assert_same_nans(got, want)
    assert_on_simplex(got[0])
    alpha, coeffs, gap = (t.cpu().double() for t in got[:3])
    assert float(gap) >= 0
    if kind == "full" or n == 1:
        assert_coeffs_close(coeffs, want[1], tolerance(dtype))
        assert torch.allclose(alpha, want[0].double(), rtol=0, atol=1e-6)
        assert abs(float(gap) - float(want[2])) <= 1e-6
        return
    # The update x = coeffs @ G is the min-norm point of the (normalised) hull,
    # unique even where alpha is not: ||x - x*||^2 <= the Frank-Wolfe gap of x,
    # which is 2 * scale * gap (scale = max_i ||h_i||^2 of the hull's vertices).
    M64 = M.cpu().double()
    Mw = M64 * w.cpu().double()[:, None] * w.cpu().double()[None, :]
    scale = 1.0 if normalization == "l2" else float(Mw.diagonal().max())
    diff = coeffs - want[1].double()
    dist = float((diff @ M64 @ diff).clamp_min(0).sqrt())
    bound = (2 * scale * float(gap)) ** 0.5 + (2 * scale * max(float(want[2]), 0.0)) ** 0.5
    assert dist <= bound + 1e-6 * scale**0.5, (dist, bound)
    assert float(gap) <= 10 * float(want[2]) + 1e-6


@needs_gpu
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("n", BASELINE_TASKS)
@pytest.mark.parametrize("kind", BASELINE_KINDS)
@pytest.mark.parametrize("reduction", ("sum", "mean"))
def test_pcgrad_matches_methods(cuda_ops, dtype, n, kind, reduction):
    # A finite algorithm: the same arithmetic as methods.py up to summation order.
    M, w, order = baseline_inputs(n, kind, dtype, seed=n)
    got = cuda_backend.solvers()["pcgrad"](M, w, order, reduction)
    want = methods.pcgrad_coefficients(M.cpu(), w.cpu(), order.cpu(), reduction)
    assert [t.dtype for t in got] == [dtype] * 3 + [torch.bool]
    assert not bool(got[3]) and torch.isnan(got[0]).all() and torch.isnan(got[2])
    assert_coeffs_close(got[1], want[1], tolerance(dtype))


@needs_gpu
def test_pcgrad_skips_bad_order_entries(cuda_ops):
    M, w, _ = baseline_inputs(6, "full", torch.float64, seed=3)
    order = methods.pcgrad_order(6, 1)
    order[0, 0], order[1, 2], order[2, 5], order[3, 1], order[4, 4] = -1, 99, 2**40, 3, -(2**62)
    got = cuda_backend.solvers()["pcgrad"](M, w, order.cuda(), "sum")
    want = methods.pcgrad_coefficients(M.cpu(), w.cpu(), order, "sum")
    assert_coeffs_close(got[1], want[1], 1e-12)
    # An order that skips everything leaves every g_i' = g_i.
    none = torch.full((6, 6), -1, dtype=torch.int64, device="cuda")
    assert torch.equal(cuda_backend.solvers()["pcgrad"](M, w, none, "sum")[1], w)


def baseline_ops(M, w, order):
    """The three baseline ops, all options, on the CUDA backend."""
    return [
        *[cuda_backend.solvers()["cagrad"](M, w, 0.5, r) for r in (0, 1, 2)],
        *[cuda_backend.solvers()["mgda"](M, w, nz) for nz in ("none", "l2")],
        *[cuda_backend.solvers()["pcgrad"](M, w, order, red) for red in ("sum", "mean")],
    ]


@needs_gpu
@pytest.mark.parametrize("bad", (float("nan"), float("inf"), float("-inf")))
@pytest.mark.parametrize("n", (1, 5, 40))
def test_baselines_nonfinite_gram_is_skipped(cuda_ops, bad, n):
    M, w, order = baseline_inputs(n, "full", torch.float32, seed=n)
    M[n - 1, 0] = bad
    for alpha, coeffs, gap, skipped in baseline_ops(M, w, order):
        assert bool(skipped) and torch.equal(coeffs, torch.zeros_like(coeffs))
        assert torch.isnan(alpha).all() and torch.isnan(gap)


@needs_gpu
@pytest.mark.parametrize("n", (5, 33, 64))
def test_baselines_are_bitwise_deterministic(cuda_ops, n):
    M, w, order = baseline_inputs(n, "deficient", torch.float64, seed=n)
    first = baseline_ops(M, w, order)
    for got, again in zip(first, baseline_ops(M, w, order)):
        for a, b in zip(got, again):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@needs_gpu
def test_baseline_op_checks(cuda_ops):
    M, w, order = baseline_inputs(4, "full", torch.float32)
    C = torch.ops.camegrad
    cases = [
        (lambda: C.cagrad_coefficients(M, w, 0.5, 3), "rescale must be 0, 1 or 2"),
        (lambda: C.mgda_coefficients(M, w, "l1"), "normalization must be 'none' or 'l2'"),
        (lambda: C.pcgrad_coefficients(M, w, order, "max"), "reduction must be 'sum' or 'mean'"),
        (lambda: C.pcgrad_coefficients(M, w, order.int(), "sum"), "order must be an int64"),
        (lambda: C.pcgrad_coefficients(M, w, order[:2], "sum"), "order must be an int64"),
        (lambda: C.pcgrad_coefficients(M, w, order.cpu(), "sum"), "order must be on"),
        (lambda: C.mgda_coefficients(M[:2], w, "none"), "gram must be square"),
        (lambda: C.cagrad_coefficients(M, w[:2], 0.5, 1), "weights must have 4 entries"),
        (lambda: C.mgda_coefficients(M.half(), w.half(), "none"), "float32 or float64"),
    ]
    for call, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call()
    big = torch.eye(cuda_backend.SOLVE_MAX_TASKS + 1, device="cuda")
    with pytest.raises(RuntimeError, match="the solver supports 1 to"):
        C.mgda_coefficients(big, torch.ones(big.shape[0], device="cuda"), "none")


@needs_gpu
def test_baselines_beyond_the_kernels_run_methods(cuda_ops):
    n = cuda_backend.SOLVE_MAX_TASKS + 1
    M, w, order = baseline_inputs(n, "full", torch.float64)
    pairs = [
        (cuda_backend.solvers()["cagrad"](M, w, 0.5, 1), methods.cagrad_coefficients(M, w, 0.5, 1)),
        (cuda_backend.solvers()["mgda"](M, w, "l2"), methods.mgda_coefficients(M, w, "l2")),
        (
            cuda_backend.solvers()["pcgrad"](M, w, order, "mean"),
            methods.pcgrad_coefficients(M, w, order, "mean"),
        ),
    ]
    for got, want in pairs:
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@needs_gpu
@pytest.mark.parametrize("n", (8, 64))  # 64 tasks: the kernels' shared memory opt-in
def test_baselines_cuda_graph_replay_equals_eager(cuda_ops, n):
    M, w, order = baseline_inputs(n, "full", torch.float64, seed=1)
    graph, outs = _capture(lambda: baseline_ops(M, w, order))
    for seed in (2, 3):
        M2, w2, order2 = baseline_inputs(n, "deficient", torch.float64, seed=seed)
        M.copy_(M2), w.copy_(w2), order.copy_(order2)
        graph.replay()
        for got, eager in zip(outs, baseline_ops(M, w, order)):
            for a, b in zip(got, eager):
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    M[0, 1] = float("nan")
    graph.replay()
    assert all(bool(skipped) for *_, skipped in outs)
