#!/usr/bin/env bash
# One command that proves the GPU path, written for the lent H200 (Python 3.12,
# torch 2.11+cu130, triton 3.6.0, nvcc 13.0, 16 cores, no network). Run it in the
# repository root of a copy of the working tree:
#
#     bash bench/gpu_check.sh
#
# Results go under $OUT when it is set (else bench/results/gpu-check-<stamp>/),
# at most 8 plain files:
#     gpu_check_summary.txt  machine, each step's status and seconds, test counts,
#                            the benchmark table
#     build.log              the in-place build and the import check
#     tests.log, tests.xml   pytest output (-ra) and its JUnit XML
#     sanitizer.log          compute-sanitizer memcheck, then racecheck
#     bench.log, bench.json, bench.png
#                            bench/bench_step.py --device cuda (JSON + PNG; the
#                            copy bandwidth of the same run is in the JSON)
#
# Steps, each under its own timeout inside one budget (GPU_CHECK_BUDGET_S, 460 s:
# the whole script ends inside 8 minutes); each is recorded as ok / failed /
# timed out / skipped with its seconds, and the next runs whatever happened:
#   build      python setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=9.0,
#              MAX_JOBS = cores (no network: torch, setuptools, ninja are there)
#   import     camegrad_kernels._C and ._cuda load; every op has a CUDA kernel
#   tests      pytest tests/test_cuda.py tests/test_triton.py tests/test_conformance.py tests/test_backends.py
#              tests/test_dynamic_range.py on the GPU (deselected: the nvcc-only
#              build test, which the build step covers, and the "cpu" backend's
#              cases); pytest-xdist when present
#   memcheck   compute-sanitizer --tool memcheck   } on the driver below: the solve
#   racecheck  compute-sanitizer --tool racecheck  } kernels at n = 3, 40, 64 first
#   bench      the GPU benchmark grid, trimmed to the time left
# The exit status is non-zero when any step did not pass. Without a GPU (torch
# sees none) it says so and exits 0.
#
# Knobs: PYTHON (python3), GPU_CHECK_BUDGET_S (460), GPU_CHECK_ARCH (9.0),
# GPU_CHECK_JOBS (MAX_JOBS of the build, all cores),
# GPU_CHECK_WORKERS (pytest-xdist workers, 8), GPU_CHECK_TESTS (the test files),
# GPU_CHECK_PYTEST_K (pytest -k, default "not sources_compile and not cpu": the
# "cpu" backend's cases of test_backends.py / test_dynamic_range.py are no GPU
# check, and they hand that backend CUDA tensors where a GPU exists),
# GPU_CHECK_BENCH_ARGS (replaces the chosen grid), COMPUTE_SANITIZER (its path),
# GPU_CHECK_DRY_RUN=1: check this script without a GPU (no build, unless
# GPU_CHECK_DRY_BUILD=1 with a CUDA build of torch; the tests are collected only;
# the sanitizer driver runs the CPU kernels without a sanitizer; a tiny CPU bench).

# shellcheck disable=SC2329  # the step_* functions run through run_step (bash -c, export -f)
set -uo pipefail # no -e: every step runs and is recorded
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY_RUN:-0}
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_BUDGET_S:-460}))

# ---------------------------------------------------------------- a GPU at all?
no_gpu=""
if ! timeout 120 "$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  no_gpu="torch.cuda.is_available() is False (or '$PY' cannot import torch)"
  command -v nvidia-smi >/dev/null 2>&1 || no_gpu="$no_gpu; nvidia-smi not found"
fi
if [ -n "$no_gpu" ] && [ "$DRY" != 1 ]; then
  echo "gpu_check: no GPU here ($no_gpu): nothing to check; exiting 0"
  if [ -n "${OUT:-}" ] && mkdir -p "$OUT" 2>/dev/null; then
    echo "no GPU: $no_gpu" >"$OUT/gpu_check_summary.txt"
  fi
  exit 0
fi

OUTDIR=${OUT:-$ROOT/bench/results/gpu-check-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUTDIR" || exit 1
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/gpu_check_summary.txt
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DRIVER=$WORK/sanitize_solve.py
export PY DRY ROOT OUTDIR DRIVER
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
CORES=$(nproc 2>/dev/null || echo 4)

# The CUDA toolkit for the build (torch's CUDA_HOME) and the sanitizer: CUDA_HOME
# if set, else the first of nvcc's prefix and /usr/local/cuda* with nvcc and headers.
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_prefix=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /none/bin/nvcc)")")")
  for dir in "$nvcc_prefix" /usr/local/cuda /usr/local/cuda-*; do
    if [ -x "$dir/bin/nvcc" ] && [ -f "$dir/include/cuda_runtime.h" ]; then
      export CUDA_HOME=$dir
      break
    fi
  done
fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x "${CUDA_HOME:-/none}/bin/nvcc" ]; then
  export PATH=$CUDA_HOME/bin:$PATH
fi

find_sanitizer() {
  local c
  for c in "${COMPUTE_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
    "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
    "${CUDA_HOME:-/nonexistent}/compute-sanitizer/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
    /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ] && [ -f "$c" ]; then
      echo "$c"
      return 0
    fi
  done
  # A pip-installed toolkit (nvidia-cuda-sanitizer-api) or another prefix.
  timeout 20 find /usr /opt -xdev -name compute-sanitizer -type f -perm -u+x 2>/dev/null | head -n 1
}
SANITIZER=$(find_sanitizer)
export SANITIZER

# ---------------------------------------------------------------- the machine
{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT"
  if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
    dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -c 1)
    echo "commit: $(git -C "$ROOT" rev-parse --short HEAD)${dirty:++dirty}"
  fi
  [ "$DRY" = 1 ] && echo "DRY RUN (GPU_CHECK_DRY_RUN=1): no GPU needed, nothing here proves the GPU path"
  echo "host: $(uname -r), $CORES cores"
  if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
      --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  else
    echo "gpu: nvidia-smi not found"
  fi
  timeout 60 "$PY" - <<'EOF' 2>&1
import sys
import torch
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, "
      f"torch.version.cuda {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"torch sees: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as exc:  # noqa: BLE001
    print(f"triton: not importable ({exc})")
EOF
  echo "nvcc: $(command -v nvcc 2>/dev/null || echo 'not found') $(nvcc --version 2>/dev/null | tail -n 1)"
  echo "CUDA_HOME: ${CUDA_HOME:-unset}"
  echo "ninja: $(ninja --version 2>/dev/null || echo 'not found (slow serial build)')"
  if [ -n "$SANITIZER" ]; then
    echo "compute-sanitizer: $SANITIZER ($("$SANITIZER" --version 2>/dev/null | grep -i version | head -n 1))"
  else
    echo "compute-sanitizer: not found"
  fi
} >"$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"

# ---------------------------------------------------------------- steps
STEPS=()
FAILED=0

# run_step NAME CAP_S RESERVE_S LOG FUNCTION: FUNCTION (exported) under
# timeout min(CAP_S, time left - RESERVE_S), RESERVE_S being what the later
# steps need at least; output appended to LOG.
run_step() {
  local name=$1 cap=$2 reserve=$3 log=$4 fn=$5 now left t t0 rc status
  now=$(date +%s)
  left=$((DEADLINE - now - reserve))
  t=$((cap < left ? cap : left))
  if [ "$t" -lt 10 ]; then
    record "$name" "skipped (no time left)" 0
    return
  fi
  t0=$now
  echo "== $name (timeout ${t}s) [$((now - START)) s]" | tee -a "$log"
  STEP_TIMEOUT=$t timeout -k 10 "$t" bash -c "$fn" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out (${t}s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "== $name: $status, rc $rc" >>"$log"
  record "$name" "$status" $(($(date +%s) - t0))
  if [ "$rc" -ne 0 ]; then
    echo "-- last lines of $(basename "$log"):"
    tail -n 25 "$log" | sed 's/^/   | /'
  fi
}

record() { # record NAME STATUS SECONDS
  STEPS+=("$(printf '%-10s %-28s %5s s' "$1" "$2" "$3")")
  echo "== $1: $2 ($3 s)"
  case $2 in ok | "skipped (dry run)") ;; *) FAILED=1 ;; esac
}

# -- build: in place, sm_90 only, no network
step_build() {
  set -e
  export TORCH_CUDA_ARCH_LIST=${GPU_CHECK_ARCH:-9.0} FORCE_CUDA=1
  export MAX_JOBS=${GPU_CHECK_JOBS:-$(nproc)}
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=${CUDA_HOME:-unset}"
  "$PY" setup.py build_ext --inplace
}

# -- import: both extensions load, every op has a CUDA kernel, sm_90 code in the .so
step_import() {
  "$PY" - <<'EOF' || exit 1
import os
import torch
from camegrad_kernels import ops
print(f"HAS_CPU_OPS={ops.HAS_CPU_OPS} HAS_CUDA_OPS={ops.HAS_CUDA_OPS} LOAD_ERRORS={ops.LOAD_ERRORS}")
import camegrad_kernels
print("available_backends:", camegrad_kernels.available_backends())
assert ops.HAS_CPU_OPS, ops.LOAD_ERRORS
if os.environ.get("DRY") == "1" and os.environ.get("GPU_CHECK_DRY_BUILD") != "1":
    raise SystemExit(0)
assert ops.HAS_CUDA_OPS, ops.LOAD_ERRORS
names = ("gram", "coefficients", "combine", "combine_out", "cagrad_coefficients",
         "mgda_coefficients", "pcgrad_coefficients", "step")
missing = [n for n in names
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"camegrad::{n}", "CUDA")]
assert not missing, f"ops without a CUDA kernel: {missing}"
print(f"all {len(names)} ops have CUDA kernels")
EOF
  if [ "$DRY" != 1 ] && command -v cuobjdump >/dev/null 2>&1; then
    for so in camegrad_kernels/_cuda*.so; do
      echo "cuobjdump --list-elf $so:"
      cuobjdump --list-elf "$so" 2>&1 | head -n 20
    done
  fi
}

# -- tests: the GPU tests against the reference
step_tests() {
  local files args
  read -r -a files <<<"${GPU_CHECK_TESTS:-tests/test_cuda.py tests/test_triton.py tests/test_conformance.py tests/test_backends.py tests/test_dynamic_range.py}"
  args=(-v -ra --tb=short -p no:cacheprovider -k "${GPU_CHECK_PYTEST_K:-not sources_compile and not cpu}"
    --junitxml="$OUTDIR/tests.xml")
  if [ "$DRY" = 1 ]; then
    "$PY" -m pytest "${files[@]}" "${args[@]}" --collect-only
    return
  fi
  if "$PY" -c "import xdist" >/dev/null 2>&1; then
    args+=(-n "${GPU_CHECK_WORKERS:-8}")
  fi
  if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
    args+=(--timeout 150)
  fi
  echo "pytest ${files[*]} ${args[*]}"
  "$PY" -m pytest "${files[@]}" "${args[@]}"
}

# -- compute-sanitizer on the solve kernels (the driver is written below)
sanitize() { # sanitize TOOL
  local budget=$((${STEP_TIMEOUT:-60} - 25))
  [ "$budget" -lt 5 ] && budget=5
  if [ "$DRY" = 1 ]; then
    echo "dry run: the driver on the CPU kernels, no compute-sanitizer"
    "$PY" "$DRIVER" --device cpu --budget-s "$budget"
    return
  fi
  if [ -z "$SANITIZER" ]; then
    echo "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*, /opt/nvidia); set COMPUTE_SANITIZER"
    return 2
  fi
  local extra=()
  [ "$1" = racecheck ] && extra=(--racecheck-report all)
  echo "$SANITIZER --tool $1 --error-exitcode 86 ${extra[*]} $PY $DRIVER --budget-s $budget"
  # No caching allocator: every tensor its own cudaMalloc, so memcheck sees an
  # access past a tensor's end even where the pool would have memory there.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$1" --error-exitcode 86 \
    --print-limit 50 "${extra[@]}" "$PY" "$DRIVER" --device cuda --budget-s "$budget"
  local rc=$?
  [ "$rc" -eq 86 ] && echo "compute-sanitizer $1 reported errors (exit 86)"
  return "$rc"
}
step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }

# -- the GPU benchmark grid
step_bench() {
  local args
  read -r -a args <<<"$BENCH_ARGS"
  echo "bench/bench_step.py ${args[*]} --out $OUTDIR/bench.json"
  "$PY" bench/bench_step.py "${args[@]}" --out "$OUTDIR/bench.json"
}

export -f step_build step_import step_tests sanitize step_memcheck step_racecheck step_bench

cat >"$DRIVER" <<'EOF'
"""The CUDA solve kernels (and the baselines, Gram, combine) for compute-sanitizer.

Written and run by bench/gpu_check.sh. The inputs are built on the CPU (no cuBLAS
under the sanitizer) and every result is checked on the CPU against the float64
torch solver (camegrad_kernels.solver / methods). --device cpu runs the same
calls on the C++ CPU kernels (a dry run of this file). --budget-s: the parts
after the solve kernels are skipped once that much time has passed.
"""

import argparse
import sys
import time

import torch

from camegrad_kernels import methods, ops, solver

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cuda")
parser.add_argument("--budget-s", type=float, default=1e9)
args = parser.parse_args()
dev = torch.device(args.device)
t0 = time.perf_counter()
assert ops.HAS_CUDA_OPS if dev.type == "cuda" else ops.HAS_CPU_OPS, ops.LOAD_ERRORS
C = torch.ops.camegrad
HYPER = (0.5, 1.5, 0.2, 1e-8)
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail} [{time.perf_counter() - t0:.1f} s]", flush=True)
    if not ok:
        failures.append(name)


def problem(n, dtype, seed, d=None):
    gen = torch.Generator().manual_seed(seed)
    d = d or 2 * n + 7
    G = torch.randn(n, d, generator=gen, dtype=torch.float64)
    G = G * (0.5 + torch.rand(n, 1, generator=gen, dtype=torch.float64))
    G = G + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64)
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.2
    return G, (G @ G.T).to(dtype), w.to(dtype)


def close(got, want, tol):
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    scale = float(want.abs().max()) if want.numel() else 1.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    ok = bool(torch.isfinite(got).all()) and err <= tol * max(scale, 1e-300)
    return ok, f"max err / max |ref| = {err / max(scale, 1e-300):.2e} (tol {tol:g})"


def on(t):
    return t.to(dev)


# 1. The CAME-Grad solve kernel, n = 3, 40, 64 (64: the shared-memory opt-in).
for n in (3, 40, 64):
    for dtype in (torch.float64, torch.float32):
        _, M, w = problem(n, dtype, seed=n)
        got = C.coefficients(on(M), on(w), *HYPER, solver.ALL_STAGES)
        want = solver.camegrad_coefficients(M, w, *HYPER, solver.ALL_STAGES)
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        ok, detail = close(got[1], want[1], tol)
        check(f"coefficients n={n} {dtype}", ok and not bool(got[3].cpu()), detail)
# Every stage mask, and a non-finite Gram (the skip path), at n = 40.
_, M, w = problem(40, torch.float64, seed=7)
for stages in range(8):
    got = C.coefficients(on(M), on(w), *HYPER, stages)
    want = solver.camegrad_coefficients(M, w, *HYPER, stages)
    ok, detail = close(got[1], want[1], 1e-8)
    check(f"coefficients n=40 stages={stages}", ok, detail)
bad = M.clone()
bad[39, 0] = float("nan")
got = C.coefficients(on(bad), on(w), *HYPER, solver.ALL_STAGES)
check("coefficients n=40 NaN Gram skipped", bool(got[3].cpu()) and not bool(got[1].cpu().any()))

# 2. The baselines' kernels (same block solver; PCGrad's own), then Gram and combine.
extras = []
for n in (40, 64):
    _, M, w = problem(n, torch.float64, seed=n + 1)
    order = methods.pcgrad_order(n, 0)
    extras += [
        (f"cagrad n={n}", lambda M=M, w=w: C.cagrad_coefficients(on(M), on(w), 0.5, 1),
         lambda M=M, w=w: methods.cagrad_coefficients(M, w, 0.5, 1)),
        (f"mgda n={n}", lambda M=M, w=w: C.mgda_coefficients(on(M), on(w), "l2"),
         lambda M=M, w=w: methods.mgda_coefficients(M, w, "l2")),
        (f"pcgrad n={n}", lambda M=M, w=w, o=order: C.pcgrad_coefficients(on(M), on(w), on(o), "sum"),
         lambda M=M, w=w, o=order: methods.pcgrad_coefficients(M, w, o, "sum")),
    ]
for name, run, ref in extras:
    if time.perf_counter() - t0 > args.budget_s:
        print(f"skipped {name}: past --budget-s {args.budget_s:.0f}", flush=True)
        continue
    ok, detail = close(run()[1], ref()[1], 1e-8)
    check(name, ok, detail)

for n, dtype in ((3, torch.float32), (40, torch.bfloat16), (40, torch.float32)):
    if time.perf_counter() - t0 > args.budget_s:
        print(f"skipped gram/combine n={n} {dtype}: past --budget-s", flush=True)
        continue
    G, _, _ = problem(n, dtype, seed=n + 2, d=4099)
    G = G.to(dtype)
    G64 = G.double()
    ok, detail = close(C.gram(on(G)), G64 @ G64.T, 1e-12)
    check(f"gram n={n} {dtype} d=4099", ok, detail)
    flat = torch.empty(n * 4099 + 1, dtype=dtype, device=dev)
    view = flat[1:].view(n, 4099)  # misaligned: the scalar-load path
    view.copy_(on(G))
    ok, detail = close(C.gram(view), G64 @ G64.T, 1e-12)
    check(f"gram n={n} {dtype} d=4099 misaligned", ok, detail)
    c = torch.linspace(-1.0, 1.0, n, dtype=torch.float32 if dtype != torch.float64 else dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    ok, detail = close(C.combine(on(G), on(c), None), c.double() @ G64, tol)
    check(f"combine n={n} {dtype} d=4099", ok, detail)

if dev.type == "cuda":
    torch.cuda.synchronize()
print(f"{len(failures)} failure(s): {failures}" if failures else "all checks passed", flush=True)
sys.exit(1 if failures else 0)
EOF

# ---------------------------------------------------------------- run
if [ "$DRY" = 1 ] && [ "${GPU_CHECK_DRY_BUILD:-0}" != 1 ]; then
  record build "skipped (dry run)" 0
else
  run_step build 240 200 "$OUTDIR/build.log" step_build
fi
run_step import 45 190 "$OUTDIR/build.log" step_import
run_step tests 170 130 "$OUTDIR/tests.log" step_tests
run_step memcheck 75 95 "$OUTDIR/sanitizer.log" step_memcheck
run_step racecheck 75 60 "$OUTDIR/sanitizer.log" step_racecheck

# The grid by the time left (a timed-out bench writes no JSON at all).
left=$((DEADLINE - $(date +%s) - 10))
common=(--repeats 10 --warmup 3 --naive-repeats 3)
if [ -n "${GPU_CHECK_BENCH_ARGS:-}" ]; then
  BENCH_ARGS=$GPU_CHECK_BENCH_ARGS
  grid="GPU_CHECK_BENCH_ARGS"
elif [ "$DRY" = 1 ]; then
  BENCH_ARGS="--device cpu --n 2,4 --d 1e4 --dtype float32 --methods naive,eager,cpu,torch --repeats 2 --warmup 1 --target-s 0.01 --naive-repeats 1 --no-plot"
  grid="dry run (CPU, tiny)"
elif [ "$left" -ge 260 ]; then # with the torch.compile peer (a cold compile per dtype)
  BENCH_ARGS="--device cuda --n 4,16 --d 1e6,1e8 --dtype float32,bfloat16 --extra 40:1e7:float32 --methods cuda,triton,eager,compile,naive ${common[*]} --target-s 0.1"
  grid="full (with compile)"
elif [ "$left" -ge 100 ]; then
  BENCH_ARGS="--device cuda --n 4,16 --d 1e6,1e8 --dtype float32,bfloat16 --extra 40:1e7:float32 --methods cuda,triton,eager,naive ${common[*]} --target-s 0.1"
  grid="trimmed (no compile peer)"
else
  BENCH_ARGS="--device cuda --n 4,16 --d 1e8 --dtype float32 --methods cuda,triton,eager,naive ${common[*]} --target-s 0.05 --no-split"
  grid="minimal (fp32, d = 1e8)"
fi
export BENCH_ARGS
echo "== bench grid: $grid ($left s left)" | tee -a "$OUTDIR/bench.log"
run_step bench 300 10 "$OUTDIR/bench.log" step_bench

# ---------------------------------------------------------------- summary
{
  cat "$WORK/machine.txt"
  echo
  echo "step       status                       seconds   (budget ${GPU_CHECK_BUDGET_S:-460} s, total $(($(date +%s) - START)) s)"
  printf '%s\n' "${STEPS[@]}"
  echo
  timeout 30 "$PY" - "$OUTDIR" <<'EOF' 2>&1
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out = Path(sys.argv[1])
xml = out / "tests.xml"
if xml.exists():
    try:
        root = ET.parse(xml).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        print("tests: {tests} collected, {failures} failed, {errors} errors, {skipped} skipped".format(**count))
        bad = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
               if c.find("failure") is not None or c.find("error") is not None]
        for name in bad[:25]:
            print(f"  FAILED {name}")
        if len(bad) > 25:
            print(f"  ... and {len(bad) - 25} more (tests.log)")
    except Exception as exc:  # noqa: BLE001
        print(f"tests.xml unreadable: {exc}")
js = out / "bench.json"
if js.exists():
    data = json.loads(js.read_text())
    m = data["machine"]
    big = m.get("copy_bandwidth_large", {})
    print(f"\nbench: {m.get('device')} {m.get('gpu', '')}, copy bandwidth (large buffer, read+write) "
          f"{big.get('gbps', float('nan')):.0f} GB/s, {data.get('wall_s', 0):.0f} s")
    print(f"{'n':>3} {'d':>6} {'dtype':>8} {'method':>9} {'status':>9} {'ms':>9} {'GB/s':>7} "
          f"{'%copy':>6} {'x eager':>8} {'x naive':>8} {'x compile':>9}")
    for r in data["rows"]:
        t = r.get("time_s")
        sp = r.get("speedup_over") or {}

        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) else "-"

        print(f"{r['n']:>3} {r['d']:>6.0e} {r['dtype']:>8} {r['method']:>9} {r.get('status', '?'):>9} "
              f"{f(t * 1e3 if t else None, '9.3f'):>9} {f(r.get('gbps'), '7.1f'):>7} "
              f"{f(r.get('pct_copy_bw'), '6.0f'):>6} {f(sp.get('eager'), '8.2f'):>8} "
              f"{f(sp.get('naive'), '8.2f'):>8} {f(sp.get('compile'), '9.2f'):>9}")
    for s in data.get("skipped", []):
        print(f"  skipped n={s['n']} d={s['d']:.0e} {s['dtype']}: {s['reason']}")
EOF
  echo
  echo "files in $OUTDIR: $(find "$OUTDIR" -type f | wc -l) (the device tool brings back 8 at most)"
  if [ "$FAILED" = 0 ]; then echo "RESULT: every step passed"; else echo "RESULT: some step did not pass"; fi
} >"$SUMMARY" 2>&1
echo
cat "$SUMMARY"
exit "$FAILED"
