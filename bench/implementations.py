"""The implementations bench_step.py times (one registry) and how each is built and checked.

Implementations (``--methods``; default all that can run the device):
  naive      paper-literal eager PyTorch in the input dtype, CAGrad-style SciPy SLSQP dual
  eager      best-effort PyTorch: G @ G.T (fp32), solver.camegrad_coefficients, c @ G
  compile    torch.compile of "eager" (one dynamic-shape compile per dtype, time apart)
  cuda, triton, cpu, torch
             camegrad_kernels backends through camegrad_step(..., out=, nonfinite="skip"),
             one per camegrad_kernels.backends.PRIORITY

``--method`` (comma list, default camegrad) picks the multi-task method(s)
the backends step with (camegrad_step's ``method=``: camegrad, cagrad, mgda,
pcgrad, linear), side by side; each row says which in ``mtl_method`` (its
``method`` field stays the implementation: a peer or a backend). The peers are
CAME-Grad only and run with camegrad alone. A baseline's split times its
coefficients through ``camegrad_coefficients(method=...)``; pcgrad runs with
``{"seed": --seed}`` so every backend and the check see one projection order.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import peers
import torch
from harness import Timer

import camegrad_kernels as cg
from camegrad_kernels import api, backends, reference


class Implementation(NamedTuple):
    label: str
    kind: str  # "peer" (bench/peers.py, CAME-Grad only) or "backend" (camegrad_kernels)


BACKENDS = tuple(backends.PRIORITY)  # from the backend registry: cuda, triton, cpu, torch
IMPLEMENTATIONS: dict[str, Implementation] = {
    "naive": Implementation("naive (paper-literal, SLSQP)", "peer"),
    "eager": Implementation("PyTorch best-effort", "peer"),
    "compile": Implementation("torch.compile(best-effort)", "peer"),
    **{name: Implementation(f"camegrad {name}", "backend") for name in BACKENDS},
}


class CompileCache:
    """One ``torch.compile(best_effort_step, dynamic=True)`` per dtype, first call timed."""

    def __init__(self) -> None:
        self.fns: dict[torch.dtype, Callable] = {}
        self.first_call: dict[torch.dtype, dict] = {}
        self.errors: dict[torch.dtype, str] = {}

    def get(self, dtype: torch.dtype, G: torch.Tensor, w: torch.Tensor, timer: Timer):
        """(fn, info) where info describes the compile (None once compiled)."""
        if dtype in self.errors:
            raise RuntimeError(self.errors[dtype])
        if dtype in self.fns:
            return self.fns[dtype], None
        try:
            from torch._dynamo.utils import counters
        except ImportError:  # pragma: no cover
            counters = None
        before = dict(counters["inductor"]) if counters is not None else {}
        fn = peers.make_compiled_step(dynamic=True)
        try:
            timer.sync()
            t0 = time.perf_counter()
            fn(G, w)
            timer.sync()
            elapsed = time.perf_counter() - t0
        except Exception as exc:
            msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self.errors[dtype] = msg[:500]
            raise RuntimeError(self.errors[dtype]) from exc
        after = dict(counters["inductor"]) if counters is not None else {}
        info = {
            "first_call_s": elapsed,
            "compiled_at": {"n": G.shape[0], "d": G.shape[1]},
            "dynamic": True,
            "fxgraph_cache_hit": after.get("fxgraph_cache_hit", 0) - before.get("fxgraph_cache_hit", 0),
            "fxgraph_cache_miss": after.get("fxgraph_cache_miss", 0)
            - before.get("fxgraph_cache_miss", 0),
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
        }
        self.fns[dtype] = fn
        self.first_call[dtype] = info
        return fn, info


def backend_can_run(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None when backend ``name`` runs ``dtype`` on ``device`` here, else why not."""
    if name == "triton" and device.type != "cuda":
        return "triton is not benchmarked off the GPU (the interpreter is not a backend)"
    try:
        module = backends.load(name)
    except Exception as exc:  # noqa: BLE001 - a backend module that fails to import
        return f"import failed: {type(exc).__name__}: {exc}"
    return module.unavailable_reason(device, dtype)


def mtl_options(mtl_method: str, seed: int) -> dict:
    """camegrad_step's method= keywords for ``--method`` entry ``mtl_method``."""
    if mtl_method == "camegrad":
        return {}
    options = {"seed": seed} if mtl_method == "pcgrad" else None
    return {"method": mtl_method, "method_options": options, "rho": peers.RHO}


def baseline_reference(G: torch.Tensor, mtl_method: str, seed: int) -> torch.Tensor:
    """Ground truth of a baseline method: its torch-ops solve on the float64 Gram, c @ G."""
    G64 = G.double()
    options = mtl_options(mtl_method, seed)["method_options"]
    M = G64 @ G64.T
    coeffs = api.coefficients(
        M, mtl_method, method_options=options, rho=peers.RHO, backend="torch"
    ).coeffs
    return coeffs.to(torch.float64) @ G64


def ground_truth(G: torch.Tensor, mtl_method: str, seed: int) -> torch.Tensor:
    """The float64 step every implementation stepping with ``mtl_method`` is checked against."""
    if mtl_method != "camegrad":
        return baseline_reference(G, mtl_method, seed)
    # Half inputs go in upcast to fp32 (exact: same values). reference.py keys its
    # "r ~ 0" threshold on the input dtype (10 sqrt(eps_bf16) = 0.88 of max ||g_i||,
    # which switches Stage 1 off in most bf16 cases), while every backend keys it on
    # the fp32 Gram (3.5e-3); fed bf16 as is, it disagrees with all of them by ~30%.
    return reference.camegrad_step(G if G.dtype in (torch.float32, torch.float64) else G.float())


def build_step(
    name: str, G: torch.Tensor, compile_cache: CompileCache, timer: Timer, row: dict,
    mtl: dict,
) -> Callable[[], torch.Tensor]:
    """The timed call of implementation ``name`` on ``G`` (``mtl``: see :func:`mtl_options`).

    A first compile of "compile" is recorded in ``row["compile"]``.
    """
    n, d = G.shape
    if name == "naive":
        return lambda: peers.naive_step(G)
    if name == "eager":
        w = torch.ones(n, dtype=torch.float32, device=G.device)
        return lambda: peers.best_effort_step(G, w)
    if name == "compile":
        w = torch.ones(n, dtype=torch.float32, device=G.device)
        fn, info = compile_cache.get(G.dtype, G, w, timer)
        if info is not None:
            row["compile"] = info
        return lambda: fn(G, w)
    out = torch.empty(d, dtype=G.dtype, device=G.device)
    return lambda: cg.camegrad_step(G, backend=name, out=out, nonfinite="skip", **mtl)
