"""The grid of bench_step.py: (n, d, dtype) x implementation x multi-task method.

Every implementation is first checked against ``camegrad_kernels.reference.camegrad_step``
(float64; for a baseline --method, its ``camegrad_kernels.methods`` coefficients
of the float64 Gram, combined in float64); one that disagrees beyond the dtype's tolerance is reported as
"disagrees" and not timed. Timing: warm-up, then >= --repeats runs (more while
a run is short, up to --target-s of timing per implementation), median and p10/p90;
CUDA events on a GPU, time.perf_counter on the CPU. Each (n, d, dtype) also
times dst.copy_(src) of n*d elements: the copy bandwidth the step is held to.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
import traceback
from typing import Callable

import peers
import torch
from harness import (
    Timer,
    available_ram_bytes,
    dtype_name,
    measure,
    measure_copy,
    memory_bytes,
    rel_err,
    tolerance,
)
from implementations import (
    BACKENDS,
    IMPLEMENTATIONS,
    CompileCache,
    backend_can_run,
    build_step,
    ground_truth,
    mtl_options,
)

from camegrad_kernels import api

FULL_N = (2, 4, 8, 16, 40)
FULL_D = (10**5, 10**6, 10**7)
GPU_EXTRA_D = (10**8,)
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_number(text: str) -> int:
    return int(float(text))


def configs(args: argparse.Namespace, device: torch.device) -> list[tuple[int, int, torch.dtype]]:
    """(n, d, dtype) of the grid (``--n``, ``--d``, ``--dtype``), then the ``--extra`` ones."""
    ns = args.n or list(FULL_N)
    ds = args.d or (list(FULL_D) + (list(GPU_EXTRA_D) if device.type == "cuda" else []))
    dtypes = [DTYPES[x] for x in args.dtype]
    grid = [(n, d, dt) for d in ds for n in ns for dt in dtypes]
    for spec in args.extra:
        n_, d_, dt_ = spec.split(":")
        grid.append((int(n_), parse_number(d_), DTYPES[dt_]))
    return grid


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


def split_times(
    name: str, G: torch.Tensor, timer: Timer, repeats: int, warmup: int, target_s: float,
    mtl: dict,
) -> dict:
    """gram / solve / combine of backend ``name`` as three separately timed public ops."""
    out = torch.empty(G.shape[1], dtype=G.dtype, device=G.device)
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


def reference_or_note(G: torch.Tensor, mtl_method: str, seed: int, base: dict):
    """(ground truth, None), or (None, why not checked); times it into ``base``."""
    n, d = G.shape
    ref_bytes = n * d * 8 * 2 + 4 * d * 8
    free = available_ram_bytes() if G.device.type == "cpu" else torch.cuda.mem_get_info(G.device)[0]
    if ref_bytes > 0.8 * free:
        return None, f"not checked: the float64 reference needs ~{ref_bytes / 2**30:.1f} GiB"
    t0 = time.perf_counter()
    ref = note = None
    try:
        ref = ground_truth(G, mtl_method, seed)
    except Exception as exc:  # noqa: BLE001
        note = f"reference failed: {type(exc).__name__}: {exc}"
    base["reference_s"] = time.perf_counter() - t0
    return ref, note


# --------------------------------------------------------------------------- one configuration


def run_config(
    n: int,
    d: int,
    dtype: torch.dtype,
    G: torch.Tensor,
    implementations: list[str],
    args: argparse.Namespace,
    timer: Timer,
    compile_cache: CompileCache,
    log: Callable[[str], None],
    mtl_method: str = "camegrad",
) -> list[dict]:
    """Rows of ``implementations`` (peers, backends) stepping with multi-task method ``mtl_method``."""
    mtl = mtl_options(mtl_method, args.seed)
    if mtl_method != "camegrad":
        implementations = [m for m in implementations if m in BACKENDS]  # the peers are CAME-Grad only
    size = G.element_size()
    bytes_step = 2 * n * d * size + d * size
    base = {"n": n, "d": d, "dtype": dtype_name(dtype), "bytes": bytes_step}

    # Copy bandwidth of n*d elements of this dtype, measured now.
    copy = measure_copy(G, timer, args.repeats, args.warmup, args.target_s)
    base["copy"] = {"time": copy, "gbps": 2 * n * d * size / copy["median"] / 1e9}
    ref, ref_note = reference_or_note(G, mtl_method, args.seed, base)
    tol = tolerance(dtype, d)

    rows = []
    for name in implementations:
        impl = IMPLEMENTATIONS[name]
        row = dict(base, method=name, mtl_method=mtl_method, label=impl.label, tol=tol)
        row["kind"] = impl.kind
        rows.append(row)
        tag = name if mtl_method == "camegrad" else f"{name}/{mtl_method}"
        step = checked_step(name, G, row, ref, ref_note, tag, args, timer, compile_cache, log, mtl)
        if step is not None:
            time_row(name, step, G, row, tag, args, timer, log, mtl)
            gc.collect()

    timed = {r["method"]: r["time_s"] for r in rows if r.get("status") == "ok"}
    for r in rows:
        if r.get("status") == "ok":
            r["speedup_over"] = {m: t / r["time_s"] for m, t in timed.items() if m != r["method"]}
    return rows


def checked_step(
    name: str, G: torch.Tensor, row: dict, ref: torch.Tensor | None, ref_note: str | None,
    tag: str, args: argparse.Namespace, timer: Timer, compile_cache: CompileCache,
    log: Callable[[str], None], mtl: dict,
) -> Callable[[], torch.Tensor] | None:
    """``name``'s step, built and checked against ``ref``; None (and ``row`` says why) if not timed."""
    if name in BACKENDS:
        reason = backend_can_run(name, G.device, G.dtype)
        if reason is not None:
            row.update(status="unavailable", note=reason)
            return None
    try:
        step = build_step(name, G, compile_cache, timer, row, mtl)
        y = step()
        timer.sync()
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
        if args.verbose:
            traceback.print_exc()
        log(f"  {tag:>9}: ERROR {row['error'][:160]}")
        return None
    if ref is not None:
        err = rel_err(y, ref)
        row["rel_err"] = err
        tol = row["tol"]
        if not err <= tol:
            row.update(status="disagrees", note=f"rel. L2 error {err:.2e} > tol {tol:.0e}; not timed")
            log(f"  {tag:>9}: DISAGREES rel_err={err:.2e} (tol {tol:.0e})")
            return None
    else:
        row["note"] = ref_note
    del y
    if name == "naive" and ref is not None:
        # CAGrad's verbatim call (SciPy's default ftol): how far it lands (not timed).
        try:
            row["slsqp_default_rel_err"] = rel_err(peers.naive_step(G, ftol=peers.CAGRAD_FTOL), ref)
        except Exception as exc:  # noqa: BLE001
            row["slsqp_default_error"] = f"{type(exc).__name__}: {exc}"[:300]
    return step


def time_row(
    name: str, step: Callable[[], torch.Tensor], G: torch.Tensor, row: dict, tag: str,
    args: argparse.Namespace, timer: Timer, log: Callable[[str], None], mtl: dict,
) -> None:
    """Time ``step`` (and a backend's split) into ``row``, log it."""
    n, d = G.shape
    big = d * n >= args.naive_big_nd
    reduced = name == "naive" and big and args.naive_repeats < args.repeats
    repeats = args.naive_repeats if reduced else args.repeats
    warmup = 1 if reduced else args.warmup
    t = measure(step, timer, repeats, warmup, 0.0 if reduced else args.target_s)
    if reduced:
        row["reduced_repeats"] = (
            f"--naive-repeats {args.naive_repeats} (naive peer, n*d >= {args.naive_big_nd:.0e})"
        )
    copy_gbs = row["copy"]["gbps"]
    row["status"] = "ok"
    row["time"] = t
    row["time_s"] = t["median"]
    row["gbps"] = row["bytes"] / t["median"] / 1e9
    row["pct_copy_bw"] = 100.0 * row["gbps"] / copy_gbs
    row["floor_s"] = row["bytes"] / (copy_gbs * 1e9)
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


# --------------------------------------------------------------------------- the grid


def run(
    grid: list[tuple[int, int, torch.dtype]], args: argparse.Namespace, device: torch.device,
    timer: Timer, log: Callable[[str], None],
) -> dict:
    """The result's "rows", "skipped", "compile" (and "compile_errors") of the whole grid."""
    result = {"rows": [], "skipped": []}
    compile_cache = CompileCache()
    mem = memory_bytes(device)
    t_start = time.perf_counter()
    grads_cache: dict = {}
    for n, d, dtype in grid:
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
        log(f"# n={n} d={d:.0e} {dtype_name(dtype)} "
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
    result["compile"] = {dtype_name(k): v for k, v in compile_cache.first_call.items()}
    if compile_cache.errors:
        result["compile_errors"] = {dtype_name(k): v for k, v in compile_cache.errors.items()}
    return result
