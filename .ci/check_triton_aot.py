#!/usr/bin/env python3
"""Compile every Triton kernel of camegrad_kernels ahead of time, without a GPU.

For sm_80, sm_86 and sm_90 and the installed triton, this drives the package's
own wrappers (camegrad_kernels.backends.triton: gram, combine, coefficients,
cagrad/mgda/pcgrad_coefficients) over a sweep of task counts n, dtypes and flags
with CPU tensors, catches each kernel launch instead of running it, and turns
the launch into exactly what triton's JIT would compile for it (its own binder:
argument types, the constexprs such as NPAD/BLOCK/flags, the alignment and
"== 1" specialisations, num_warps/num_stages/enable_fp_fusion; every autotune
config of an autotuned kernel). Each is then compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` (triton
ships ptxas) and its resource use read from the cubin (cuobjdump
--dump-resource-usage, also shipped): registers per thread, local memory per
thread (the stack frame, where ptxas puts spilled registers: what triton's
``n_spills`` reports on a GPU) and shared memory (the compiled kernel's
``shared`` metadata, the dynamic shared memory a launch asks for).

It prints a table (kernel, config, arch, registers, spill bytes, shared memory,
compile seconds) and a summary of the worst case per kernel and arch, and exits
non-zero on any compile failure, on a kernel of the package that no sweep
launched, or on a spill over the budget:

Spill budget (bytes of local memory per thread, SPILL_BUDGET; --spill-budget
overrides it for every kernel):
* 0 for the Gram-reduce, combine and PCGrad kernels: they fit in registers
  with every triton from 3.6 to 3.9 on all three archs, so any spill there is
  a regression (the combine is the bandwidth-bound pass over all of G).
* 256 for the Gram partial kernel. Its real hazard is the [NPAD, NPAD] fp64
  accumulator at NPAD = 128, which spilled 2-9 KB a thread with 4 warps (the
  autotuner now prunes NPAD = 128 to 8 warps and 2 stages, gram.py). Beyond
  that, ptxas (which unrolls the column loop up to 255 registers) leaves a few
  registers in local memory in some warps/stages configs: 8-152 B a thread,
  differing between the ptxas of triton 3.6, 3.7 and 3.9, L1-resident. 256
  tolerates those and still fails on a tile that does not fit.
* 2048 for the two dual solves (CAME-Grad/CAGrad: coefficients_kernel, MGDA:
  mgda_kernel). Their [NPAD, NPAD] tiles and the row vectors that Triton's
  layouts replicate over the 32 lanes of a warp do not fit in 128 registers a
  thread at NPAD = 64 (16 warps, maxnreg 128): ~0.7-1.4 KB a thread spill there
  on sm_80/86/90 with triton 3.6-3.9 (none at NPAD <= 32). That is one program
  of 512 threads per step, so <= 1 MiB of spill traffic held in L1/L2, and the
  driver's local-memory reservation (bytes per thread x resident threads,
  ~0.55 GB on a 132-SM H100 at 2 KiB) stays a fraction of what NPAD = 128 cost
  (~30 KB a thread, which is why the Triton solves now stop at n = 64 and
  larger n takes the torch solver, as the CUDA solve does). 2 KiB leaves room
  for ptxas versions to differ (they do, by ~30%) while still failing on a
  return to heavy spills.

--quick compiles a representative subset (every kernel, every arch, every
gradient dtype, the largest tile of each kernel, one autotune config per
kernel; see QUICK below) in a few CPU minutes; the default is the full sweep
(all n buckets, all stage masks, all autotune configs: long, run it when a
kernel or a wrapper's launch changes). The compile cache is a fresh temporary
directory, so every run really compiles.

    python .ci/check_triton_aot.py --quick [--arch 90] [-j 2] [--kernel gram] [--match RE]
    python .ci/check_triton_aot.py --dry-run    # the launch configs only (tests/test_triton_aot.py)
"""

from __future__ import annotations

import argparse
import atexit
import collections
import concurrent.futures
import importlib
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

# Compile for the GPU, never interpret; a private cache so that every run compiles.
os.environ["TRITON_INTERPRET"] = "0"
_CACHE = tempfile.mkdtemp(prefix="camegrad-aot-")
os.environ["TRITON_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

from camegrad_kernels import methods as torch_methods
from camegrad_kernels import solver
from camegrad_kernels.backends import triton as backend

ARCHS = (80, 86, 90)
# Bytes of local memory per thread; kernels not named: 0 (see the docstring).
SPILL_BUDGET = {"gram_partial_kernel": 256, "coefficients_kernel": 2048, "mgda_kernel": 2048}
# By module name: triton_ops/__init__ rebinds the names gram and combine to the functions.
MODULES = tuple(
    importlib.import_module(f"camegrad_kernels.triton_ops.{m}")
    for m in ("gram", "combine", "solve", "methods")
)
GRAD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
GRAM_DTYPES = (torch.float32, torch.float64)
# n buckets: each NPAD (16, 32, 64, 128; 256 for the combine, which has no cap),
# n not and n a multiple of 16 (triton specialises ints divisible by 16), n = 1
# (specialised to a constant where the kernel allows it) and n past each cap.
FULL_N = (1, 3, 16, 24, 32, 40, 64, 100, 128, 200)
D = 4099  # columns: odd, so d is not specialised as a multiple of 16
HYPER = (0.5, 1.5, 0.2, 1e-8)  # rho, kappa, nu, eps


class _Recorder:
    """Stands in for a kernel object during the sweep: records launches, runs nothing."""

    def __init__(self, name: str, kernel):
        self.name, self.kernel, self.calls = name, kernel, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _kernels() -> dict[str, tuple[object, str, object]]:
    """{name: (module, attribute, kernel object)} of the package's launched kernels."""
    found = {}
    for mod in MODULES:
        for attr, obj in vars(mod).items():
            if isinstance(obj, (JITFunction, Autotuner)) and attr.endswith("_kernel"):
                found[attr.lstrip("_")] = (mod, attr, obj)
    return found


def _sweep(quick: bool) -> None:
    """Every wrapper of backends/triton.py over dtypes, n and flags (CPU tensors)."""
    ns = (3, 64, 128) if quick else FULL_N
    for dtype in GRAD_DTYPES:
        for n in ns:
            g = torch.zeros(n, D, dtype=dtype)
            backend.gram(g)
            coeffs = torch.ones(n, dtype=torch.float64)
            out = torch.empty(D, dtype=dtype)
            backend.combine(g, coeffs, out, torch.tensor(False))
            if not quick:
                backend.combine(g, coeffs, out, None)
    for dtype in GRAM_DTYPES:
        for n in ns:
            gram = torch.eye(n, dtype=dtype)
            w = torch.ones(n, dtype=dtype)
            stages_list = (solver.ALL_STAGES, solver.RECTIFY) if quick else range(8)
            for stages in stages_list:
                backend.solvers()["camegrad"](gram, w, *HYPER, stages)
            backend.solvers()["cagrad"](gram, w, 0.5, 1)
            for norm in ("l2",) if quick else ("none", "l2"):
                backend.solvers()["mgda"](gram, w, norm)
            order = torch_methods.pcgrad_order(n, seed=0)
            for reduction in ("sum",) if quick else ("sum", "mean"):
                backend.solvers()["pcgrad"](gram, w, order, reduction)


# --quick: of each kernel's launches, those whose config label matches (all
# dtypes and archs stay): the largest tile, and for the solve the fp64 path at
# its cap plus the fp32 path at the smallest tile; one autotune config each.
QUICK = {
    "gram_partial_kernel": r"(NPAD=16 .*num_warps=4 num_stages=3)|(NPAD=64 .*num_warps=4 num_stages=4)|NPAD=128",
    "gram_reduce_kernel": r"",
    "combine_kernel": r"NPAD=(16|128) .*BLOCK=4096 num_warps=4",
    "coefficients_kernel": r"(m_ptr=\*fp64 .*NPAD=64 .*CAGRAD=False)|(NPAD=16 .*CAGRAD=True)",
    "mgda_kernel": r"NPAD=64 ",
    "pcgrad_kernel": r"NPAD=64 ",
}


def _specs(kernels, quick: bool) -> list[dict]:
    """Each distinct compile the sweep's launches ask for (per arch: see _compile)."""
    recorders = {name: _Recorder(name, k) for name, (_, _, k) in kernels.items()}
    for name, (mod, attr, _) in kernels.items():
        setattr(mod, attr, recorders[name])
    try:
        _sweep(quick)
    finally:
        for name, (mod, attr, kernel) in kernels.items():
            setattr(mod, attr, kernel)
    # Any target gives the same binder (the specialisation is arch independent).
    be = make_backend(GPUTarget("cuda", 90, 32))
    specs, seen = [], set()
    for name, rec in recorders.items():
        if not rec.calls:
            raise SystemExit(f"kernel {name}: no launch in the sweep; add its wrapper to _sweep")
        kernel = rec.kernel
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        binder = create_function_from_signature(fn.signature, fn.params, be)
        for args, kwargs in rec.calls:
            if "enable_fp_fusion" not in kwargs:
                # triton's default changes in 3.10: the bits must not follow it.
                raise SystemExit(f"kernel {name}: a launch without an explicit enable_fp_fusion")
            configs = [None]
            if isinstance(kernel, Autotuner):
                configs = kernel.configs  # those the autotuner would try for this launch
                if kernel.early_config_prune:
                    nargs = dict(zip(kernel.arg_names, args))
                    configs = kernel.early_config_prune(configs, nargs, **kwargs)
            for cfg in configs:
                kw = dict(kwargs, **(cfg.all_kwargs() if cfg is not None else {}))
                bound, specialization, opts = binder(*args, **kw)
                options, signature, constexprs, attrs = fn._pack_args(
                    be, kw, bound, specialization, opts
                )
                label = _label(fn, signature, constexprs, options)
                key = (name, label, repr(sorted(attrs.items())))
                if key in seen:
                    continue
                if quick and not re.search(QUICK.get(name, ""), label):
                    continue
                seen.add(key)
                specs.append(
                    {
                        "name": name,
                        "label": label,
                        "module": fn.fn.__module__,
                        "attr": fn.fn.__name__,
                        "signature": signature,
                        "constexprs": constexprs,
                        "attrs": attrs,
                        "options": options.__dict__,
                    }
                )
    return specs


def _label(fn, signature, constexprs, options) -> str:
    names = [p.name for p in fn.params]
    ptrs = [f"{k}={v}" for k, v in signature.items() if v.startswith("*")]
    consts = []
    for path, value in constexprs.items():
        arg = names[path[0]]
        if signature[arg] == "constexpr":  # declared constexpr (not a specialised "== 1" int)
            consts.append(f"{arg}={getattr(value, 'name', value)}")
        else:
            consts.append(f"{arg}=={value}")
    opts = [f"num_warps={options.num_warps}", f"num_stages={options.num_stages}"]
    if getattr(options, "maxnreg", None):
        opts.append(f"maxnreg={options.maxnreg}")
    opts.append(f"fp_fusion={options.enable_fp_fusion}")
    return " ".join(ptrs + consts + opts)


def _cost(spec: dict) -> tuple[bool, int]:
    npad = re.search(r"NPAD=(\d+)", spec["label"])
    slow = spec["name"] in ("coefficients_kernel", "mgda_kernel")
    return slow, int(npad.group(1)) if npad else 0


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers, local bytes per thread) of the cubin's one function."""
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin", dir=_CACHE, delete=False) as f:
        f.write(cubin)
    try:
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(f.name)
    regs = int(re.search(r"REG:(\d+)", text).group(1))
    local = int(re.search(r"STACK:(\d+)", text).group(1)) + int(
        re.search(r"LOCAL:(\d+)", text).group(1)
    )
    return regs, local


_SPECS: list[dict] = []  # the worker processes fork with it


def _compile(job: tuple[int, int]) -> dict:
    index, arch = job
    spec = _SPECS[index]
    fn = getattr(sys.modules[spec["module"]], spec["attr"])
    fn = fn.fn if isinstance(fn, Autotuner) else fn
    start = _cpu()
    result = {"index": index, "arch": arch}
    try:
        src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
        options = dict(spec["options"])
        options.pop("arch", None)  # parse_options sets it from the target
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        result["regs"], result["spill"] = _resources(compiled.asm["cubin"])
        result["shared"] = int(compiled.metadata.shared)
        if not hasattr(compiled, "module"):
            compiled.module = None  # never loaded: quiets triton 3.9's CompiledKernel.__del__
    except Exception:  # noqa: BLE001 - reported in the table
        result["error"] = traceback.format_exc(limit=3)
    result["cpu_s"] = _cpu() - start
    return result


def _row(spec: dict, r: dict) -> None:
    if "error" in r:
        print(f"{spec['name']:<22} {r['arch']:>4} {'FAILED':>5}{'':>21}  {spec['label']}")
    else:
        print(
            f"{spec['name']:<22} {r['arch']:>4} {r['regs']:>5} {r['spill']:>6} {r['shared']:>6}"
            f" {r['cpu_s']:>6.1f}  {spec['label']}",
            flush=True,
        )


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (ptxas, cuobjdump)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the representative subset")
    parser.add_argument("--arch", type=int, action="append", help="80, 86 or 90 (default all)")
    parser.add_argument("--kernel", help="only kernels whose name contains this")
    parser.add_argument("--match", help="only configs whose label matches this regex")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the launch configs, compile nothing"
    )
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--spill-budget", type=int, help="bytes per thread, for every kernel (default SPILL_BUDGET)"
    )
    args = parser.parse_args()
    archs = tuple(args.arch or ARCHS)

    t0, cpu0 = time.time(), _cpu()
    kernels = _kernels()
    specs = _specs(kernels, args.quick)
    if args.kernel:
        specs = [s for s in specs if args.kernel in s["name"]]
    if args.match:
        specs = [s for s in specs if re.search(args.match, s["label"])]
    _SPECS.extend(specs)
    if args.dry_run:
        for spec in specs:
            print(f"{spec['name']:<22} {spec['label']}")
        names = sorted({spec["name"] for spec in specs})
        print(f"{len(specs)} launch configs of {len(names)} kernels: {', '.join(names)}")
        return 0
    jobs = [(i, a) for i in range(len(specs)) for a in archs]
    # The slow compiles first (the solves, big tiles first), so the pool ends together.
    jobs.sort(key=lambda j: _cost(specs[j[0]]), reverse=True)
    print(
        f"triton {triton.__version__}, torch {torch.__version__}: {len(specs)} launch configs"
        f" x {len(archs)} archs = {len(jobs)} compiles, {args.jobs} jobs"
        f"{' (--quick)' if args.quick else ''}",
        flush=True,
    )
    header = f"{'kernel':<22} {'arch':>4} {'regs':>5} {'spill':>6} {'smem':>6} {'cpu_s':>6}  config"
    print(header)
    print("-" * len(header), flush=True)
    ctx = multiprocessing.get_context("fork")
    results = []
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        # Rows in the order they finish (a long run shows progress).
        for future in concurrent.futures.as_completed([pool.submit(_compile, j) for j in jobs]):
            res = future.result()
            results.append(res)
            _row(specs[res["index"]], res)
    results.sort(key=lambda r: (specs[r["index"]]["name"], specs[r["index"]]["label"], r["arch"]))

    failures, over = [], []
    worst = collections.OrderedDict()
    for r in results:
        spec = specs[r["index"]]
        if "error" in r:
            failures.append((spec, r))
            continue
        budget = (
            SPILL_BUDGET.get(spec["name"], 0) if args.spill_budget is None else args.spill_budget
        )
        if r["spill"] > budget:
            over.append((spec, r))
        key = (spec["name"], r["arch"])
        w = worst.setdefault(key, {"regs": 0, "spill": 0, "shared": 0, "n": 0})
        w["n"] += 1
        for field in ("regs", "spill", "shared"):
            w[field] = max(w[field], r[field])

    print("\nworst per kernel and arch (regs, spill B/thread, smem B):")
    print(f"{'kernel':<22} {'arch':>4} {'configs':>7} {'regs':>5} {'spill':>6} {'smem':>6} budget")
    for (name, arch), w in sorted(worst.items()):
        budget = SPILL_BUDGET.get(name, 0) if args.spill_budget is None else args.spill_budget
        print(
            f"{name:<22} {arch:>4} {w['n']:>7} {w['regs']:>5} {w['spill']:>6} {w['shared']:>6}"
            f" {budget:>6}"
        )
    for spec, r in failures:
        print(f"\nFAILED {spec['name']} sm_{r['arch']} {spec['label']}\n{r['error']}")
    for spec, r in over:
        print(f"OVER BUDGET {spec['name']} sm_{r['arch']}: {r['spill']} B/thread {spec['label']}")
    cpu = _cpu() - cpu0  # the pool's workers are reaped: their time (and ptxas') is in it
    print(
        f"\n{len(results)} compiles, {len(failures)} failed, {len(over)} over the spill budget;"
        f" {time.time() - t0:.0f} s wall, {cpu:.0f} CPU-s (triton {triton.__version__})"
    )
    return 1 if failures or over else 0


if __name__ == "__main__":
    sys.exit(main())
