"""torch.compile(fullgraph=True) on CPU through the camegrad ops and their fake kernels.

The ops are opaque to Inductor, so their outputs must match eager bit for bit;
the pointwise SGD-style update around them is compiled code (1e-6 relative).
torch.library.opcheck of every op is in test_cpu_ext.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_grads, rel_err
from torch._dynamo.testing import CompileCounterWithBackend

import camegrad_kernels as ck
from camegrad_kernels import ops

needs_cpu_ops = pytest.mark.skipif(
    not ops.HAS_CPU_OPS, reason=f"camegrad_kernels._C not built: {ops.LOAD_ERRORS.get('_C')}"
)

HYPER = (0.5, 1.5, 0.2, 1e-8, 7)  # rho, kappa, nu, eps, stages
LR = 0.1


def _step(G, w, param):
    update, M, alpha, coeffs, gap, skipped = torch.ops.camegrad.step(G, w, *HYPER)
    return param - LR * update, (update, M, alpha, coeffs, gap, skipped)


def _three_passes(G, w, param):
    M = torch.ops.camegrad.gram(G)
    alpha, coeffs, gap, skipped = torch.ops.camegrad.coefficients(M, w, *HYPER)
    update = torch.ops.camegrad.combine(G, coeffs, skipped)
    return param - LR * update, (update, M, alpha, coeffs, gap, skipped)


def _inputs(dtype: torch.dtype, n: int = 4, d: int = 1031):
    G = make_grads("conflicting", n, d, dtype, seed=n)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.linspace(0.5, 1.5, n, dtype=acc)
    param = make_grads("random", 1, d, dtype, seed=99)[0]
    return G, w, param


def _compile(fn) -> tuple[object, CompileCounterWithBackend]:
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def _camegrad_calls(counter: CompileCounterWithBackend) -> list[str]:
    return [
        str(node.target)
        for graph in counter.graphs
        for node in graph.graph.nodes
        if node.op == "call_function" and str(node.target).startswith("camegrad.")
    ]


def _assert_same(compiled, eager) -> None:
    new_param, outs = compiled
    want_param, want_outs = eager
    for got, want in zip(outs, want_outs):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
        assert torch.equal(got.isnan(), want.isnan())
    assert new_param.dtype == want_param.dtype
    assert rel_err(new_param, want_param) <= 1e-6


@needs_cpu_ops
@pytest.mark.parametrize(
    "fn,calls",
    [
        (_step, ["camegrad.step"]),
        (_three_passes, ["camegrad.gram", "camegrad.coefficients", "camegrad.combine"]),
    ],
    ids=["step", "gram_coefficients_combine"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compile_fullgraph_matches_eager(fn, calls, dtype):
    compiled, counter = _compile(fn)
    G, w, param = _inputs(dtype)
    got = compiled(G, w, param)
    _assert_same(got, fn(G, w, param))
    # The Gram, hence alpha, coeffs and gap, are float64 for every gradient dtype.
    assert [t.dtype for t in got[1][1:5]] == [torch.float64] * 4
    # A second problem of the same shape reuses the graph and still matches.
    G2, w2, param2 = _inputs(dtype)
    G2 = G2.flip(0).contiguous()
    _assert_same(compiled(G2, w2, param2), fn(G2, w2, param2))
    assert counter.frame_count == 1 and _camegrad_calls(counter) == calls


@needs_cpu_ops
def test_compile_skips_nonfinite():
    """The skip flag stays on device through the compiled graph: a zero update."""
    compiled, _ = _compile(_three_passes)
    G, w, param = _inputs(torch.float32)
    G[1, 5] = float("nan")
    new_param, outs = compiled(G, w, param)
    _assert_same((new_param, outs), _three_passes(G, w, param))
    assert bool(outs[5]) and torch.equal(new_param, param)


# --------------------------------------------------------------------------- the whole step

STEP_BACKENDS = [b for b in ("cpu", "torch") if b in ck.available_backends()]
METHOD_CASES = [
    ("camegrad", None),
    ("cagrad", {"rescale": 2}),
    ("mgda", {"normalization": "l2"}),
    ("pcgrad", {"seed": 5}),
    ("linear", None),
]


@pytest.mark.parametrize("method,options", METHOD_CASES, ids=[m for m, _ in METHOD_CASES])
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_compiled_step_fullgraph_equals_eager(backend, method, options):
    """torch.compile(ck.step, fullgraph=True): no graph break, for every method, same bits."""
    weights = [1.0, 0.5, 2.0, 1.0]

    def step(G):
        return ck.step(
            G, method, weights, method_options=options, backend=backend, nonfinite="skip"
        )

    compiled, counter = _compile(step)
    G = make_grads("conflicting", 4, 257, torch.float32, seed=3)
    got = compiled(G)
    assert counter.frame_count == 1
    assert torch.equal(got, step(G))
    bad = G.clone()
    bad[2, 7] = float("inf")
    assert torch.equal(compiled(bad), torch.zeros_like(got))  # skipped on the device
    assert counter.frame_count == 1
