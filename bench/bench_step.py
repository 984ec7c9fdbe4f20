#!/usr/bin/env python
"""One CAME-Grad step, camegrad_kernels backends vs the peers of docs/camegrad.md (§3, §7).

    PYTHONPATH=. python bench/bench_step.py --quick          # a minute: n=4, d=1e5/1e6, fp32
    PYTHONPATH=. python bench/bench_step.py                  # the full grid of docs/camegrad.md §7
    PYTHONPATH=. python bench/bench_step.py --e2e            # + training-step overhead

Methods (``--methods``; default all that can run the device):
  naive      paper-literal eager PyTorch in the input dtype, CAGrad-style SciPy SLSQP dual
  eager      best-effort PyTorch: G @ G.T (fp32), solver.camegrad_coefficients, c @ G
  compile    torch.compile of "eager" (one dynamic-shape compile per dtype, time apart)
  cuda, triton, cpu, reference
             camegrad_kernels backends through camegrad_step(..., out=, nonfinite="skip")

``--method`` (comma list, default camegrad) picks the multi-task method(s)
the backends step with (camegrad_step's ``method=``: camegrad, cagrad, mgda,
pcgrad, linear), side by side; each row says which in ``mtl_method`` (its
``method`` field stays the implementation: a peer or a backend). The peers are
CAME-Grad only and run with camegrad alone. A baseline's split times its
coefficients through ``camegrad_coefficients(method=...)``; pcgrad runs with
``{"seed": --seed}`` so every backend and the check see one projection order.

Every method is first checked against ``camegrad_kernels.reference.camegrad_step``
(float64; for a baseline --method, its ``camegrad_kernels.methods`` coefficients
of the float64 Gram, combined in float64); one that disagrees beyond the dtype's tolerance is reported as
"disagrees" and not timed. Timing: warm-up, then >= --repeats runs (more while
a run is short, up to --target-s of timing per method), median and p10/p90;
CUDA events on a GPU, time.perf_counter on the CPU. Each (n, d, dtype) also
times dst.copy_(src) of n*d elements: the copy bandwidth the step is held to.

Writes bench/results/<device>-<yyyymmdd>.json and a PNG beside it (bench/plot.py).
See bench/README.md for the fields.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import scipy
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import peers

import camegrad_kernels as cg
from camegrad_kernels import api, backends, methods, ops, reference

PEERS = ("naive", "eager", "compile")
BACKENDS = tuple(backends.PRIORITY)  # from the backend registry: cuda, triton, cpu, torch
ALL_METHODS = PEERS + BACKENDS
LABELS = {
    "naive": "naive (paper-literal, SLSQP)",
    "eager": "PyTorch best-effort",
    "compile": "torch.compile(best-effort)",
    **{name: f"camegrad {name}" for name in BACKENDS},
}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Relative L2 error ||y - y_ref|| / ||y_ref|| allowed against the float64 reference:
# max(BASE_TOL[dtype], 4 sqrt(d) eps_fp32). The base values are tests/test_backends.py's
# UPDATE_TOL (output rounding, half-precision intermediates of the naive peer). The
# second term admits a correct fp32-accumulating Gram: a length-d fp32 dot product
# is off by ~sqrt(d) eps (probabilistic rounding bound, Higham & Mary 2019), and
# torch's CPU G @ G.T does reach 1.6e-3 relative error in M at n=4, d=1e7.
# A wrong implementation is off by 1e-2..1. Every row reports its rel_err anyway.
BASE_TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2, torch.float64: 1e-9}
ACC_TOL_FACTOR = 4.0


def tolerance(dtype: torch.dtype, d: int) -> float:
    acc_eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return max(BASE_TOL[dtype], ACC_TOL_FACTOR * math.sqrt(d) * acc_eps)


FULL_N = (2, 4, 8, 16, 40)
FULL_D = (10**5, 10**6, 10**7)
GPU_EXTRA_D = (10**8,)


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ram_bytes() -> int:
    m = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    return int(m.group(1)) * 1024 if m else 8 << 30


def available_ram_bytes() -> int:
    m = re.search(r"MemAvailable:\s+(\d+) kB", _read("/proc/meminfo"))
    return int(m.group(1)) * 1024 if m else ram_bytes()


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(device).replace("NVIDIA", ""))
    return f"cpu-{slug(cpu_model())}-{os.cpu_count()}c"


def memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return ram_bytes()


def git_commit() -> str | None:
    def git(*args: str) -> str:
        cmd = ["git", "-C", str(ROOT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
        return head + ("+dirty" if dirty else "") or None
    except (OSError, subprocess.SubprocessError):
        return None


def safe_available_backends() -> list[str]:
    """api.available_backends(), or the same list built by hand when it raises."""
    try:
        return api.available_backends()
    except Exception as exc:  # noqa: BLE001 - e.g. a backend module not written yet
        names = []
        for name in BACKENDS:
            dev = torch.device("cuda" if name == "cuda" else "cpu")
            # A backend that cannot even say why it is unavailable is left out.
            with contextlib.suppress(Exception):
                if backends.load(name).unavailable_reason(dev, torch.float32) is None:
                    names.append(name)
        print(f"# note: api.available_backends() raised {type(exc).__name__}: {exc}", flush=True)
        return names


def machine_info(device: torch.device) -> dict:
    info = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(ram_bytes() / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "camegrad_kernels": getattr(cg, "__version__", None),
        "git_commit": git_commit(),
        "has_cpu_ops": ops.HAS_CPU_OPS,
        "has_cuda_ops": ops.HAS_CUDA_OPS,
        "available_backends": safe_available_backends(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


# --------------------------------------------------------------------------- timing


class Timer:
    """Wall time of one call: CUDA events on a GPU, time.perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def summarize(times: list[float], warmup: int) -> dict:
    arr = np.asarray(times, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p10": float(np.percentile(arr, 10)),
        "p90": float(np.percentile(arr, 90)),
        "min": float(arr.min()),
        "mean": float(arr.mean()),
        "repeats": len(times),
        "warmup": warmup,
    }


def measure(
    fn: Callable[[], object],
    timer: Timer,
    repeats: int,
    warmup: int,
    target_s: float,
    max_repeats: int = 1000,
) -> dict:
    """Warm-up, then max(repeats, target_s / t) runs (at most max_repeats)."""
    last = 0.0
    for _ in range(max(warmup, 1)):
        last = timer.once(fn)
    count = repeats
    if last > 0 and target_s > 0:
        count = max(repeats, min(max_repeats, int(target_s / last)))
    return summarize([timer.once(fn) for _ in range(count)], warmup)


# --------------------------------------------------------------------------- data


def make_grads(n: int, d: int, device: torch.device, seed: int) -> torch.Tensor:
    """Deterministic fp32 task gradients [n, d] with real conflicts.

    g_i = (s_i * z_i + c_i * base) / sqrt(d) (z_i, base ~ N(0, I)), c_i spread
    over [-0.6, 1.2] (some tasks point against the shared direction), s_i over
    [0.5, 2] (unequal norms). So ||g_i|| ~ 1 whatever d, like real gradients
    (and SLSQP in the naive peer sees the objective scale it was tuned for).
    The dual has a non-trivial support and r = ||g_alpha|| stays away from 0
    (well-posed, docs/camegrad.md §2).
    """
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7919 * n + d % 1_000_003)
    G = torch.randn(n, d, generator=gen, device=device, dtype=torch.float32)
    base = torch.randn(d, generator=gen, device=device, dtype=torch.float32)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + n))
    coef = torch.linspace(-0.6, 1.2, n)[perm].to(device)
    scale = torch.logspace(math.log10(0.5), math.log10(2.0), n)[perm.flip(0)].to(device)
    G.mul_(scale[:, None] / math.sqrt(d))
    G.addr_(coef / math.sqrt(d), base)
    return G


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 (chunked: no [d] float64 copy of y at once)."""
    num = 0.0
    den = 0.0
    step = 1 << 22
    for i in range(0, ref.numel(), step):
        r = ref[i : i + step]
        num += float(((y[i : i + step].to(torch.float64) - r) ** 2).sum())
        den += float((r**2).sum())
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num) / max(math.sqrt(den), 1e-300)


# --------------------------------------------------------------------------- methods


class Method:
    """A named way to compute the step; ``step()`` is what gets timed."""

    def __init__(self, name: str, step: Callable[[], torch.Tensor], kind: str):
        self.name = name
        self.step = step
        self.kind = kind  # "peer" or "backend"


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


def mtl_options(mtl_method: str, args: argparse.Namespace) -> dict:
    """camegrad_step's method= keywords for ``--method`` entry ``mtl_method``."""
    if mtl_method == "camegrad":
        return {}
    options = {"seed": args.seed} if mtl_method == "pcgrad" else None
    return {"method": mtl_method, "method_options": options, "rho": peers.RHO}


def baseline_reference(G: torch.Tensor, mtl_method: str, args: argparse.Namespace) -> torch.Tensor:
    """Ground truth of a baseline method: its torch-ops solve on the float64 Gram, c @ G."""
    G64 = G.double()
    options = mtl_options(mtl_method, args)["method_options"]
    M = G64 @ G64.T
    coeffs = api.coefficients(
        M, mtl_method, method_options=options, rho=peers.RHO, backend="torch"
    ).coeffs
    return coeffs.to(torch.float64) @ G64


def build_method(
    name: str, G: torch.Tensor, compile_cache: CompileCache, timer: Timer, row: dict,
    mtl: dict | None = None,
) -> Method:
    n, d = G.shape
    if name == "naive":
        return Method(name, lambda: peers.naive_step(G), "peer")
    if name == "eager":
        w = torch.ones(n, dtype=torch.float32, device=G.device)
        return Method(name, lambda: peers.best_effort_step(G, w), "peer")
    if name == "compile":
        w = torch.ones(n, dtype=torch.float32, device=G.device)
        fn, info = compile_cache.get(G.dtype, G, w, timer)
        if info is not None:
            row["compile"] = info
        return Method(name, lambda: fn(G, w), "peer")
    out = torch.empty(d, dtype=G.dtype, device=G.device)
    return Method(
        name,
        lambda: cg.camegrad_step(G, backend=name, out=out, nonfinite="skip", **(mtl or {})),
        "backend",
    )


def split_times(
    name: str, G: torch.Tensor, timer: Timer, repeats: int, warmup: int, target_s: float,
    mtl: dict | None = None,
) -> dict:
    """gram / solve / combine of backend ``name`` as three separately timed public ops."""
    out = torch.empty(G.shape[1], dtype=G.dtype, device=G.device)
    mtl = mtl or {}
    M = api.gram(G, backend=name)
    co = api.camegrad_coefficients(M, backend=name, **mtl)
    return {
        "gram": measure(lambda: api.gram(G, backend=name), timer, repeats, warmup, target_s),
        "solve": measure(
            lambda: api.camegrad_coefficients(M, backend=name, **mtl), timer, repeats, warmup, target_s
        ),
        "combine": measure(
            lambda: api.combine(G, co.coeffs, out=out, backend=name), timer, repeats, warmup, target_s
        ),
    }


# --------------------------------------------------------------------------- one configuration


def run_config(
    n: int,
    d: int,
    dtype: torch.dtype,
    G: torch.Tensor,
    methods: list[str],
    args: argparse.Namespace,
    timer: Timer,
    compile_cache: CompileCache,
    log: Callable[[str], None],
    mtl_method: str = "camegrad",
) -> list[dict]:
    """Rows of ``methods`` (peers, backends) stepping with multi-task method ``mtl_method``."""
    mtl = mtl_options(mtl_method, args)
    if mtl_method != "camegrad":
        methods = [m for m in methods if m in BACKENDS]  # the peers are CAME-Grad only
    dtype_name = str(dtype).replace("torch.", "")
    size = G.element_size()
    bytes_step = 2 * n * d * size + d * size
    base = {"n": n, "d": d, "dtype": dtype_name, "bytes": bytes_step}

    # Copy bandwidth of n*d elements of this dtype, measured now.
    copy = measure(
        functools.partial(torch.Tensor.copy_, torch.empty_like(G), G),
        timer, args.repeats, args.warmup, args.target_s,
    )
    copy_gbs = 2 * n * d * size / copy["median"] / 1e9
    base["copy"] = {"time": copy, "gbps": copy_gbs}
    floor_s = bytes_step / (copy_gbs * 1e9)

    # Ground truth (float64).
    ref = None
    ref_note = None
    ref_bytes = n * d * 8 * 2 + 4 * d * 8
    free = available_ram_bytes() if G.device.type == "cpu" else torch.cuda.mem_get_info(G.device)[0]
    if ref_bytes > 0.8 * free:
        ref_note = f"not checked: the float64 reference needs ~{ref_bytes / 2**30:.1f} GiB"
    else:
        t0 = time.perf_counter()
        try:
            # Half inputs go in upcast to fp32 (exact: same values). reference.py keys its
            # "r ~ 0" threshold on the input dtype (10 sqrt(eps_bf16) = 0.88 of max ||g_i||,
            # which switches Stage 1 off in most bf16 cases), while every backend keys it on
            # the fp32 Gram (3.5e-3); fed bf16 as is, it disagrees with all of them by ~30%.
            if mtl_method == "camegrad":
                ref = reference.camegrad_step(
                    G if G.dtype in (torch.float32, torch.float64) else G.float()
                )
            else:
                ref = baseline_reference(G, mtl_method, args)
        except Exception as exc:  # noqa: BLE001
            ref_note = f"reference failed: {type(exc).__name__}: {exc}"
        base["reference_s"] = time.perf_counter() - t0
    tol = tolerance(dtype, d)

    rows = []
    for name in methods:
        tag = name if mtl_method == "camegrad" else f"{name}/{mtl_method}"
        row = dict(base, method=name, mtl_method=mtl_method, label=LABELS[name], tol=tol)
        row["kind"] = "peer" if name in PEERS else "backend"
        rows.append(row)
        if name in BACKENDS:
            reason = backend_can_run(name, G.device, dtype)
            if reason is not None:
                row.update(status="unavailable", note=reason)
                continue
        try:
            method = build_method(name, G, compile_cache, timer, row, mtl)
            y = method.step()
            timer.sync()
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
            if args.verbose:
                traceback.print_exc()
            log(f"  {tag:>9}: ERROR {row['error'][:160]}")
            continue
        if ref is not None:
            err = rel_err(y, ref)
            row["rel_err"] = err
            if not err <= tol:
                row.update(status="disagrees", note=f"rel. L2 error {err:.2e} > tol {tol:.0e}; not timed")
                log(f"  {tag:>9}: DISAGREES rel_err={err:.2e} (tol {tol:.0e})")
                continue
        else:
            row["note"] = ref_note
        del y
        if name == "naive" and ref is not None:
            # CAGrad's verbatim call (SciPy's default ftol): how far it lands (not timed).
            try:
                row["slsqp_default_rel_err"] = rel_err(peers.naive_step(G, ftol=peers.CAGRAD_FTOL), ref)
            except Exception as exc:  # noqa: BLE001
                row["slsqp_default_error"] = f"{type(exc).__name__}: {exc}"[:300]

        big = d * n >= args.naive_big_nd
        reduced = name == "naive" and big and args.naive_repeats < args.repeats
        repeats = args.naive_repeats if reduced else args.repeats
        warmup = 1 if reduced else args.warmup
        t = measure(method.step, timer, repeats, warmup, 0.0 if reduced else args.target_s)
        if reduced:
            row["reduced_repeats"] = (
                f"--naive-repeats {args.naive_repeats} (naive peer, n*d >= {args.naive_big_nd:.0e})"
            )
        row["status"] = "ok"
        row["time"] = t
        row["time_s"] = t["median"]
        row["gbps"] = bytes_step / t["median"] / 1e9
        row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbs
        row["floor_s"] = floor_s
        if name in BACKENDS and not args.no_split:
            row["split"] = split_times(name, G, timer, args.repeats, args.warmup, args.target_s, mtl)
        log(
            f"  {tag:>9}: {1e3 * t['median']:9.3f} ms  [p10 {1e3 * t['p10']:.3f}, p90 {1e3 * t['p90']:.3f}, "
            f"x{t['repeats']}]  {row['gbps']:6.2f} GB/s = {row['pct_copy_bw']:5.1f}% of copy"
            + (f"  err {row['rel_err']:.1e}" if "rel_err" in row else "")
            + (
                "  split gram/solve/combine "
                + "/".join(f"{1e3 * row['split'][k]['median']:.3f}" for k in ("gram", "solve", "combine"))
                + " ms"
                if "split" in row
                else ""
            )
        )
        gc.collect()

    timed = {r["method"]: r["time_s"] for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") == "ok":
            r["speedup_over"] = {m: t / r["time_s"] for m, t in timed.items() if m != r["method"]}
    return rows


# --------------------------------------------------------------------------- end to end


def e2e(args: argparse.Namespace, device: torch.device, methods: list[str], log) -> dict:
    """Training step of python/train_multitask.py: linear scalarization vs CAME-Grad.

    Uses the script's data, model and ``CAMEGrad`` trainer (imported, not copied).
    Per backend, the whole step (zero_grad, forward of all task losses, the
    backward(s), the update, AdamW) is timed over pre-generated batches:
      linear_1bwd  sum(losses).backward(): the cheapest linear scalarization;
      linear_cg    CAMEGrad(stages=()): n per-task backwards + c = w (the script's baseline);
      camegrad     CAMEGrad(all stages, backend=...), the script's defaults.
    Overhead = (t_camegrad - t_linear) / t_camegrad, i.e. as % of the whole CAME-Grad step.
    """
    sys.path.insert(0, str(ROOT / "python"))
    import train_multitask as tm

    from camegrad_kernels.trainer import CAMEGrad

    threads = torch.get_num_threads()
    if args.e2e_threads > 0:
        torch.set_num_threads(args.e2e_threads)
    result = {
        "source": "python/train_multitask.py (SyntheticRRG, MultiTaskRRG) + camegrad_kernels.trainer.CAMEGrad",
        "threads": torch.get_num_threads(),
        "batch": args.e2e_batch,
        "tasks_n": args.e2e_tasks + 1,
        "steps_timed": args.e2e_steps,
        "configs": [],
    }
    try:
        data = tm.SyntheticRRG(0)
        batches = [data.batch(i, args.e2e_batch, device) for i in range(1, 9)]
        for dim in args.e2e_dim:
            torch.manual_seed(0)
            model = tm.MultiTaskRRG(data.vocab, data.C, args.e2e_tasks, dim=dim).to(device)
            shared = sum(p.numel() for p in model.encoder.parameters())
            timer = Timer(device)
            cfg = {"dim": dim, "d_shared": shared, "params_total": sum(p.numel() for p in model.parameters()), "rows": []}
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            k = [0]

            def next_batch(k=k):
                k[0] += 1
                return batches[k[0] % len(batches)]

            def step_linear_1bwd(model=model, opt=opt, next_batch=next_batch):
                opt.zero_grad(set_to_none=True)
                losses, _ = model.losses(next_batch())
                torch.stack(losses).sum().backward()
                opt.step()

            def make_cg_step(trainer, model=model, opt=opt, next_batch=next_batch):
                def step():
                    opt.zero_grad(set_to_none=True)
                    losses, _ = model.losses(next_batch())
                    trainer.backward(losses)
                    opt.step()

                return step

            variants = [("linear_1bwd", None, step_linear_1bwd)]
            names = [m for m in methods if m in BACKENDS and backend_can_run(m, device, torch.float32) is None]
            for name in names:
                lin = CAMEGrad(model.encoder.parameters(), stages=(), backend=name)
                variants.append((f"linear_cg[{name}]", name, make_cg_step(lin)))
                full = CAMEGrad(model.encoder.parameters(), backend=name)
                variants.append((f"camegrad[{name}]", name, make_cg_step(full)))
                # kernel alone on this step's [n, d_shared] buffer (after one call allocates it)
            times = {}
            for label, backend, fn in variants:
                t = measure(fn, timer, args.e2e_steps, 3, 0.0)
                times[label] = t["median"]
                cfg["rows"].append({"variant": label, "backend": backend, "time": t, "time_s": t["median"]})
                log(f"  e2e dim={dim} d={shared}: {label:>22}: {1e3 * t['median']:8.3f} ms/step")
            for name in names:
                full = CAMEGrad(model.encoder.parameters(), backend=name)
                # Kernel alone: the step on the [n, d] buffer the trainer fills.
                losses, _ = model.losses(next_batch())
                full.backward(losses)
                G = full.grads
                out = torch.empty(G.shape[1], dtype=G.dtype, device=G.device)
                kt = measure(
                    functools.partial(cg.camegrad_step, G, backend=name, out=out), timer, 20, 3, 0.2
                )
                t_cg = times[f"camegrad[{name}]"]
                cfg.setdefault("overhead", {})[name] = {
                    "camegrad_step_s": t_cg,
                    "linear_1bwd_s": times["linear_1bwd"],
                    "linear_cg_s": times[f"linear_cg[{name}]"],
                    "kernel_s": kt["median"],
                    "overhead_vs_linear_1bwd_pct_of_step": 100 * (t_cg - times["linear_1bwd"]) / t_cg,
                    "overhead_vs_linear_cg_pct_of_step": 100 * (t_cg - times[f"linear_cg[{name}]"]) / t_cg,
                    "kernel_pct_of_step": 100 * kt["median"] / t_cg,
                }
                o = cfg["overhead"][name]
                log(
                    f"  e2e dim={dim} [{name}]: CAME-Grad step {1e3 * t_cg:.2f} ms; overhead vs 1-backward linear "
                    f"{o['overhead_vs_linear_1bwd_pct_of_step']:.1f}% of the step, vs per-task-backward linear "
                    f"{o['overhead_vs_linear_cg_pct_of_step']:.1f}%; camegrad_step alone {1e3 * kt['median']:.3f} ms "
                    f"= {o['kernel_pct_of_step']:.1f}%"
                )
            result["configs"].append(cfg)
    finally:
        torch.set_num_threads(threads)
    return result


# --------------------------------------------------------------------------- main


def parse_number(text: str) -> int:
    return int(float(text))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help=f"comma-separated task counts (default {','.join(map(str, FULL_N))})")
    p.add_argument("--d", type=lambda s: [parse_number(x) for x in s.split(",")], default=None,
                   help="comma-separated sizes, e.g. 1e5,1e6 (default 1e5,1e6,1e7 [+1e8 on a GPU])")
    p.add_argument("--dtype", type=lambda s: s.split(","), default=None,
                   help="comma-separated: float32, bfloat16, float16 (default float32,bfloat16)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(ALL_METHODS),
                   help=f"comma-separated subset of {','.join(ALL_METHODS)}")
    p.add_argument("--extra", action="append", default=[], metavar="N:D:DTYPE",
                   help="one more configuration outside the grid, e.g. 4:4e6:float32 (repeatable)")
    p.add_argument("--repeats", type=int, default=20, help="minimum timed runs per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--target-s", type=float, default=0.5,
                   help="time short methods for at least this long (more runs than --repeats)")
    p.add_argument("--naive-repeats", type=int, default=5,
                   help="timed runs of the naive peer where n*d >= --naive-big-nd (fewer than --repeats)")
    p.add_argument("--naive-big-nd", type=float, default=1e8,
                   help="n*d from which the naive peer gets --naive-repeats runs")
    p.add_argument("--no-split", action="store_true", help="skip the gram/solve/combine split")
    p.add_argument("--mem-fraction", type=float, default=0.4,
                   help="skip configurations whose n*d*sizeof exceeds this fraction of the device memory")
    p.add_argument("--quick", action="store_true",
                   help="n=4, d=1e5,1e6, float32, 5 repeats; writes *-quick.json")
    p.add_argument("--e2e", action="store_true", help="also time the training step of python/train_multitask.py")
    p.add_argument("--e2e-only", action="store_true", help="only the --e2e part")
    p.add_argument("--e2e-dim", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256],
                   help="MultiTaskRRG feature dims (64 is the script's; the shared d grows ~dim*512)")
    p.add_argument("--e2e-tasks", type=int, default=3, help="auxiliary heads K (n = K+1), as the script")
    p.add_argument("--e2e-batch", type=int, default=64)
    p.add_argument("--e2e-steps", type=int, default=30)
    p.add_argument("--e2e-threads", type=int, default=1, help="torch threads in --e2e (the script's default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-<yyyymmdd>[-quick].json)")
    p.add_argument("--compile-cache", choices=("warm", "cold"), default="warm",
                   help="cold: a fresh TORCHINDUCTOR_CACHE_DIR, so the reported compile time is a cold compile")
    p.add_argument("--method", type=lambda s: s.split(","), default=["camegrad"],
                   help="multi-task method(s) the backends step with, side by side: "
                   f"some of {','.join(methods.METHODS)} (the peers run with camegrad only)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or [4]
        args.d = args.d or [10**5, 10**6]
        args.dtype = args.dtype or ["float32"]
        args.repeats = min(args.repeats, 5)
        args.target_s = min(args.target_s, 0.1)
    args.dtype = args.dtype or ["float32", "bfloat16"]
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {ALL_METHODS}")
    bad = [m for m in args.method if m not in methods.METHODS]
    if bad or not args.method:
        p.error(f"--method: unknown {bad}; expected some of {methods.METHODS}")
    args.method = list(dict.fromkeys(args.method))
    for dt in args.dtype:
        if dt not in DTYPES:
            p.error(f"--dtype: unknown {dt!r}; expected some of {sorted(DTYPES)}")
    if args.repeats < 1 or args.naive_repeats < 1:
        p.error("--repeats/--naive-repeats: expected >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.compile_cache == "cold" and "compile" in args.methods:
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="camegrad-bench-inductor-")
    device = torch.device(args.device)
    timer = Timer(device)
    ns = args.n or list(FULL_N)
    ds = args.d or (list(FULL_D) + (list(GPU_EXTRA_D) if device.type == "cuda" else []))
    dtypes = [DTYPES[x] for x in args.dtype]
    configs = [(n, d, dt) for d in ds for n in ns for dt in dtypes]
    for spec in args.extra:
        n_, d_, dt_ = spec.split(":")
        configs.append((int(n_), parse_number(d_), DTYPES[dt_]))

    started = datetime.datetime.now(datetime.timezone.utc)
    info = machine_info(device)
    info["loadavg_start"] = loadavg()
    stamp = started.strftime("%Y%m%d")
    out = Path(args.out) if args.out else HERE / "results" / (
        f"{info['device']}-{stamp}" + ("-quick" if args.quick else "") + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"# {info['device']} ({info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']}), "
        f"backends {info['available_backends']}, load {info['loadavg_start']}")

    # Reference copy bandwidth of a large buffer (out of cache).
    big = (256 << 20) if device.type == "cpu" else (2 << 30)
    src = torch.ones(big // 4, dtype=torch.float32, device=device)
    big_copy = measure(
        functools.partial(torch.Tensor.copy_, torch.empty_like(src), src),
        timer, args.repeats, args.warmup, args.target_s,
    )
    info["copy_bandwidth_large"] = {
        "bytes_copied": big, "time": big_copy, "gbps": 2 * big / big_copy["median"] / 1e9,
    }
    del src
    log(f"# copy bandwidth ({big >> 20} MiB buffer, read+write): {info['copy_bandwidth_large']['gbps']:.1f} GB/s")

    result = {
        "schema": 1,
        "created": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if argv is None else " ".join(argv),
        "machine": info,
        "settings": {
            "repeats": args.repeats, "warmup": args.warmup, "target_s": args.target_s,
            "naive_repeats": args.naive_repeats, "naive_big_nd": args.naive_big_nd,
            "mem_fraction": args.mem_fraction, "seed": args.seed,
            "compile_cache": args.compile_cache, "naive_slsqp_ftol": peers.NAIVE_FTOL, "tolerance": {
                "formula": f"max(base[dtype], {ACC_TOL_FACTOR:g} * sqrt(d) * eps(fp32 accumulation))",
                "base": {str(k).replace("torch.", ""): v for k, v in BASE_TOL.items()}},
            "mtl_methods": args.method,
            "hyper": {"rho": peers.RHO, "kappa": peers.KAPPA, "nu": peers.NU, "eps": peers.EPS},
            "bytes_formula": "2*n*d*sizeof(grad) + d*sizeof(out)",
            "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter",
            "cache": "hot: the same G is reused by every run (no cache flush)",
            "ground_truth": "reference.camegrad_step (float64) of G, of G.float() for bf16/fp16 inputs "
            "(reference.py keys its r-threshold on the input dtype: 0.88*max||g_i|| for bf16, "
            "vs 3.5e-3 in every backend)",
        },
        "rows": [],
        "skipped": [],
    }

    compile_cache = CompileCache()
    mem = memory_bytes(device)
    t_start = time.perf_counter()
    if not args.e2e_only:
        grads_cache: dict = {}
        for n, d, dtype in configs:
            size = torch.empty((), dtype=dtype).element_size()
            need = n * d * max(size, 4)  # fp32 data are generated first
            if need > args.mem_fraction * mem:
                note = f"n*d*sizeof = {need / 2**30:.1f} GiB > {args.mem_fraction:.0%} of {mem / 2**30:.0f} GiB"
                result["skipped"].append({"n": n, "d": d, "dtype": str(dtype), "reason": note})
                log(f"# skip n={n} d={d:.0e} {dtype}: {note}")
                continue
            key = (n, d)
            if key not in grads_cache:
                grads_cache.clear()
                gc.collect()
                grads_cache[key] = make_grads(n, d, device, args.seed)
            G32 = grads_cache[key]
            G = G32 if dtype == torch.float32 else G32.to(dtype)
            log(f"# n={n} d={d:.0e} {str(dtype).replace('torch.', '')} "
                f"({2 * n * d * G.element_size() / 1e6:.1f} MB read per step) [{time.perf_counter() - t_start:.0f} s]")
            rows = []
            for mtl_method in args.method:
                rows += run_config(
                    n, d, dtype, G, args.methods, args, timer, compile_cache, log, mtl_method
                )
            if not rows:
                continue
            c = rows[0]["copy"]
            log(f"  copy: {c['gbps']:.2f} GB/s ({1e3 * c['time']['median']:.3f} ms), floor "
                f"{1e3 * rows[0]['bytes'] / c['gbps'] / 1e9:.3f} ms")
            result["rows"].extend(rows)
            del G
            gc.collect()
        grads_cache.clear()
        result["compile"] = {str(k).replace("torch.", ""): v for k, v in compile_cache.first_call.items()}
        if compile_cache.errors:
            result["compile_errors"] = {str(k).replace("torch.", ""): v for k, v in compile_cache.errors.items()}

    if args.e2e or args.e2e_only:
        log("# e2e: training step of python/train_multitask.py")
        try:
            result["e2e"] = e2e(args, device, args.methods, log)
        except Exception as exc:  # noqa: BLE001
            result["e2e"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()

    result["machine"]["loadavg_end"] = loadavg()
    result["wall_s"] = time.perf_counter() - t_start
    with open(out, "w") as f:
        json.dump(strict_json(result), f, indent=1, allow_nan=False, default=str)
    log(f"# wrote {out} ({result['wall_s']:.0f} s)")
    if not args.no_plot and result["rows"]:
        try:
            import plot

            for png in (plot.plot(out), plot.plot_methods(out)):
                if png:
                    log(f"# wrote {png}")
        except Exception as exc:  # noqa: BLE001
            log(f"# plot failed: {type(exc).__name__}: {exc}")
    return result


def strict_json(value):
    """NaN/Inf -> None, recursively, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


if __name__ == "__main__":
    main()
