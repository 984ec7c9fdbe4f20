"""Public API: validation messages, no mutation of inputs, out=, nonfinite, dispatch."""

import pytest
import torch
from helpers import make_grads, rel_err

import camegrad_kernels as ck

G = make_grads("conflicting", 3, 17)


@pytest.mark.parametrize(
    "grads,exc,match",
    [
        ([[1.0, 2.0]], TypeError, "grads: expected a torch.Tensor"),
        (torch.ones(4), ValueError, "grads: expected a 2-D tensor"),
        (torch.ones(0, 4), ValueError, "n >= 1"),
        (torch.ones(2, 0), ValueError, "d >= 1"),
        (torch.ones(2, 4, dtype=torch.int32), TypeError, "grads: expected dtype"),
        (torch.ones(2, 4, dtype=torch.complex64), TypeError, "grads: expected dtype"),
        (torch.ones(4, 2).T, ValueError, "grads: expected a contiguous"),
    ],
)
def test_bad_grads(grads, exc, match):
    with pytest.raises(exc, match=match):
        ck.camegrad_step(grads)
    with pytest.raises(exc, match=match):
        ck.gram(grads)


@pytest.mark.parametrize(
    "weights,exc,match",
    [
        ([1.0, 1.0], ValueError, r"weights: expected shape \(3,\)"),
        ([1.0, -1.0, 1.0], ValueError, "weights: expected values >= 0"),
        ([0.0, 0.0, 0.0], ValueError, "weights: expected a positive sum"),
        ([1.0, float("nan"), 1.0], ValueError, "weights: expected finite"),
        (["a", "b", "c"], TypeError, "weights: expected a sequence"),
        (torch.ones(3, dtype=torch.complex64), TypeError, "weights: expected real"),
    ],
)
def test_bad_weights(weights, exc, match):
    with pytest.raises(exc, match=match):
        ck.camegrad_step(G, weights)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"rho": -0.1}, ValueError, "rho: expected a finite number >= 0"),
        ({"kappa": 0.0}, ValueError, "kappa: expected a finite number > 0"),
        ({"nu": 1.5}, ValueError, r"nu: expected a finite number in \[0, 1\]"),
        ({"eps": float("inf")}, ValueError, "eps: expected a finite number"),
        ({"rho": "0.5"}, TypeError, "rho: expected a real number"),
        ({"stages": "rectify"}, TypeError, "stages: expected a collection"),
        ({"stages": ("rectify", "spin")}, ValueError, "stages: unknown stage 'spin'"),
        ({"nonfinite": "ignore"}, ValueError, "nonfinite: expected"),
        ({"backend": "tpu"}, ValueError, "backend: expected one of"),
        ({"out": torch.empty(16)}, ValueError, r"out: expected shape \(17,\)"),
        ({"out": torch.empty(17, dtype=torch.float64)}, TypeError, "out: expected dtype"),
        ({"out": torch.empty(34)[::2]}, ValueError, "out: expected a contiguous"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ck.camegrad_step(G, **kwargs)


def test_bad_gram_and_coeffs():
    with pytest.raises(ValueError, match="gram: expected a square"):
        ck.camegrad_coefficients(torch.ones(2, 3))
    with pytest.raises(TypeError, match="gram: expected dtype float32 or float64"):
        ck.camegrad_coefficients(torch.ones(2, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"coeffs: expected shape \(3,\)"):
        ck.combine(G, torch.ones(2))


def test_unavailable_backend_says_why(monkeypatch):
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run torch.float32 on cpu"):
        ck.camegrad_step(G, backend="cuda")  # G is a CPU tensor
    monkeypatch.setenv("CAMEGRAD_BACKEND", "torch")
    _, info = ck.camegrad_step(G, return_info=True)
    assert info.backend == "torch"
    monkeypatch.setenv("CAMEGRAD_BACKEND", "nope")
    with pytest.raises(ValueError, match="CAMEGRAD_BACKEND"):
        ck.camegrad_step(G)


def test_available_backends_in_priority_order():
    names = ck.available_backends()
    assert names[-1] == "torch"
    order = ["cuda", "triton", "cpu", "torch"]
    assert names == sorted(names, key=order.index)
    # "cuda" only where torch sees a CUDA device, whether or not the extension is built.
    assert ("cuda" in names) <= torch.cuda.is_available()


def test_no_cuda_device_is_a_clear_reason(monkeypatch):
    from camegrad_kernels.backends import triton as triton_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in ck.available_backends()
    reason = triton_backend.unavailable_reason(torch.device("cuda"), torch.float32)
    assert reason is not None and ("CUDA device" in reason or "triton" in reason.lower())


def test_inputs_untouched_and_out_written():
    g = G.clone()
    w = torch.tensor([1.0, 2.0, 0.5])
    w_copy = w.clone()
    out = torch.full((17,), 7.0)
    result = ck.camegrad_step(g, w, out=out)
    assert result is out
    assert torch.equal(g, G) and torch.equal(w, w_copy)
    assert rel_err(out, ck.reference.camegrad_step(G, w)) < 1e-4


def test_nonfinite_raise_names_the_tasks():
    g = G.clone()
    g[2, 5] = float("nan")
    g[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"task gradient\(s\) \[0, 2\] hold NaN or Inf"):
        ck.camegrad_step(g)


def test_nonfinite_skip_writes_zeros():
    g = G.clone()
    g[1, 3] = float("nan")
    out, info = ck.camegrad_step(g, nonfinite="skip", return_info=True)
    assert torch.equal(out, torch.zeros(17)) and bool(info.skipped)
    _, info = ck.camegrad_step(G, nonfinite="skip", return_info=True)
    assert not bool(info.skipped)


def test_info_fields():
    out, info = ck.camegrad_step(G, return_info=True)
    n = G.shape[0]
    assert info.gram.shape == (n, n) and info.cosines.shape == (n, n)
    # The Gram is float64 for fp32 gradients too, and so what is solved from it.
    assert info.gram.dtype == info.cosines.dtype == info.coeffs.dtype == torch.float64
    assert torch.allclose(torch.diagonal(info.cosines), torch.ones(n, dtype=torch.float64))
    assert info.alpha.shape == (n,) and info.coeffs.shape == (n,)
    assert rel_err(info.coeffs @ G.double(), out) < 1e-5


def test_pieces_compose_to_the_step():
    M = ck.gram(G)
    c = ck.camegrad_coefficients(M, [1.0, 1.0, 2.0])
    step = ck.camegrad_step(G, [1.0, 1.0, 2.0])
    assert rel_err(ck.combine(G, c.coeffs), step) < 1e-6
