#!/usr/bin/env bash
# The CUDA extension's build check against a real CUDA build of torch, on a
# machine without a GPU or a driver:
#   1. a scratch venv (CUDA_BUILD_VENV, default /tmp/cuda-build-venv) with the
#      registry's linux wheel of torch $TORCH_VERSION (default 2.13.0, the pinned
#      torch; a CUDA build, ~0.5 GB) and its nvidia-* libraries;
#   2. a copy of the working tree (CUDA_BUILD_SRC, default /tmp/cuda-build-src)
#      built with FORCE_CUDA=1 for the default arch list (setup.py's
#      CUDA_ARCH_LIST_DEFAULT; TORCH_CUDA_ARCH_LIST is unset for the build);
#   3. checks: no compiler warning from csrc/; every kernel translation unit of
#      camegrad_kernels._cuda embeds exactly the list's cubins and PTX; `ldd -r`
#      finds every library and every symbol but the interpreter's (Py*); both
#      extensions import (CPython dlopens with RTLD_NOW: an undefined symbol
#      fails the import) with no driver; every camegrad:: op with a CPU kernel
#      has a CUDA kernel; a CPU step runs.
# Not part of .ci/run: it downloads ~0.5 GB and takes ~15 min on 2 cores. Run it
# whenever csrc/cuda/, csrc/ops.cpp or setup.py's CUDA build changes.
#
# Knobs: TORCH_VERSION, CUDA_BUILD_VENV, CUDA_BUILD_SRC, PYTHON (the venv's base
# interpreter), CUDA_HOME (default /usr/local/cuda), MAX_JOBS (default 2),
# LOCAL_WHEELS (folders of wheels; default /opt/pypi/files /opt/pypi-more/files:
# where they exist, torch's nvidia-* dependencies come from there, newest local
# version of each, same sonames as torch's exact pins, and only torch itself is
# downloaded; elsewhere pip installs torch's exact pins from the index),
# FRESH=1 (recreate the venv; by default one with the right torch is reused).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
start=$SECONDS
log() { printf 'check_cuda_build [%4ss]: %s\n' "$((SECONDS - start))" "$*"; }
die() {
  log "FAIL: $*" >&2
  exit 1
}

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VENV="${CUDA_BUILD_VENV:-/tmp/cuda-build-venv}"
SRC="${CUDA_BUILD_SRC:-/tmp/cuda-build-src}"
PYTHON="${PYTHON:-python3}"
LOCAL_WHEELS="${LOCAL_WHEELS:-/opt/pypi/files /opt/pypi-more/files}"
export MAX_JOBS="${MAX_JOBS:-2}"
if [ -z "${CUDA_HOME:-}" ]; then
  CUDA_HOME=/usr/local/cuda
fi
export CUDA_HOME
[ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
for dir in "$VENV" "$SRC"; do
  case "$(realpath -m "$dir")/" in
    "$ROOT"/*) die "$dir is inside the repository; keep the scratch folders out of it" ;;
  esac
done

arch_list="$(sed -n 's/^CUDA_ARCH_LIST_DEFAULT = "\([^"]*\)"[[:space:]]*$/\1/p' setup.py)"
[ -n "$arch_list" ] || die "no CUDA_ARCH_LIST_DEFAULT = \"...\" line in setup.py"
log "torch $TORCH_VERSION, arch list \"$arch_list\", nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n 1)"

# --- 1. the scratch venv -------------------------------------------------------
PY="$VENV/bin/python"
venv_ok() {
  [ -x "$PY" ] && "$PY" - "$TORCH_VERSION" <<'EOF' 2>/dev/null
import sys, torch
assert torch.__version__.split("+")[0] == sys.argv[1] and torch.version.cuda, torch.__version__
EOF
}
if [ "${FRESH:-0}" = 1 ] || ! venv_ok; then
  log "creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  pip_q=(-m pip install -q --progress-bar off)
  # "===" matches the version string exactly: a local "+cpu" wheel does not.
  log "installing torch===$TORCH_VERSION (no deps) from the index"
  "$PY" "${pip_q[@]}" --no-deps "torch===$TORCH_VERSION"
  # torch's own Requires-Dist for this platform, but triton and cuda-bindings
  # (neither is needed to build or import the extension).
  mapfile -t deps < <("$PY" - <<'EOF'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
for line in requires("torch") or []:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name in ("triton", "cuda-bindings"):
        continue
    print(str(r).split(";")[0].strip())
EOF
  )
  tools=(setuptools wheel ninja numpy)
  links=()
  for d in $LOCAL_WHEELS; do
    [ -d "$d" ] && links+=(--find-links "$d")
  done
  installed=0
  if [ "${#links[@]}" -gt 0 ]; then
    # Local wheels: the newest local version of each (exact pins relaxed to the name).
    relaxed=()
    for r in "${deps[@]}"; do
      case "$r" in
        nvidia-* | cuda-*) relaxed+=("${r%%[=<>!~ ]*}") ;;
        *) relaxed+=("$r") ;;
      esac
    done
    log "installing torch's dependencies from local wheels (${links[*]});" \
      "pip then reports torch's exact pins, triton and cuda-bindings as conflicts: expected"
    if "$PY" "${pip_q[@]}" --no-index "${links[@]}" "${relaxed[@]}" "${tools[@]}"; then
      installed=1
    else
      log "local wheels do not cover torch's dependencies; using the index"
    fi
  fi
  if [ "$installed" = 0 ]; then
    "$PY" "${pip_q[@]}" "${deps[@]}" "${tools[@]}"
  fi
  venv_ok || die "torch in $VENV is not a CUDA build of $TORCH_VERSION"
fi
"$PY" -m pip list 2>/dev/null | grep -E '^(torch|nvidia-cuda-runtime|nvidia-cudnn-cu[0-9]+|nvidia-nccl-cu[0-9]+|ninja|setuptools) ' |
  sed 's/^/    /'
read -r torch_version torch_cuda < <("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')
log "venv ready: torch $torch_version (CUDA $torch_cuda), $("$PY" --version)"

# --- 2. build a copy of the working tree ---------------------------------------
rm -rf "$SRC"
mkdir -p "$SRC"
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$SRC"
find "$SRC" -name '*.so' -delete
build_log="$SRC/build.log"
log "building camegrad_kernels._C and ._cuda in $SRC (MAX_JOBS=$MAX_JOBS; log: $build_log)"
build_start=$SECONDS
if ! (cd "$SRC" && env -u TORCH_CUDA_ARCH_LIST FORCE_CUDA=1 \
  "$PY" setup.py -q build_ext --inplace >"$build_log" 2>&1); then
  tail -n 60 "$build_log" >&2
  die "build failed (log: $build_log)"
fi
log "built in $((SECONDS - build_start)) s"
warnings="$(grep -Ei 'warning' "$build_log" | grep -Ev 'SetuptoolsDeprecationWarning|setup\.py install|!!|\*\*\*' || true)"
# Ours: gcc's "csrc/f.cpp:12:3: warning", nvcc's "csrc/f.cu(12): warning", any ptxas warning.
ours="$(grep -E 'csrc/[^ :(]+(\([0-9]+\)|:[0-9]+(:[0-9]+)?)?: *warning|ptxas[^:]*warning' "$build_log" || true)"
if [ -n "$warnings" ]; then
  log "compiler/tool warnings in the build log:"
  printf '%s\n' "$warnings" | head -n 40 | sed 's/^/    /'
fi
[ -z "$ours" ] || die "compiler warnings in csrc/ (log: $build_log)"
log "no compiler warning from csrc/ ($(printf '%s' "$warnings" | grep -c . || true) other warning lines)"

so_c="$(ls "$SRC"/camegrad_kernels/_C.*.so)"
so_cuda="$(ls "$SRC"/camegrad_kernels/_cuda.*.so)"

# --- 3. checks -----------------------------------------------------------------
# 3a. The fat binaries: each .cu is one fatbin; each must hold exactly the
# cubins (sm_XY) and PTX (compute_XY, for "+PTX") of the arch list.
"$PY" - "$so_cuda" "$arch_list" "$(ls "$SRC"/csrc/cuda/*.cu | wc -l)" <<'EOF'
import re, struct, sys
path, arch_list, n_cu = sys.argv[1], sys.argv[2], int(sys.argv[3])
want = set()
for a in arch_list.replace(";", " ").split():
    m = re.fullmatch(r"(\d+)\.(\d)([af]?)(\+PTX)?", a)
    assert m, f"cannot parse arch {a!r}"
    want.add(("sm", int(m[1] + m[2])))
    if m[4]:
        want.add(("compute", int(m[1] + m[2])))
data = open(path, "rb").read()
magic, fatbins, pos = struct.pack("<I", 0xBA55ED50), [], 0
while (pos := data.find(magic, pos)) >= 0:
    version, hsize, fsize = struct.unpack_from("<HHQ", data, pos + 4)
    if version != 1 or hsize != 16:
        pos += 4
        continue
    images, e, end = set(), pos + hsize, pos + hsize + fsize
    while e + 32 <= end:  # image headers: kind (1 PTX, 2 ELF), header size, size, ..., arch
        kind, _, ehsize, size = struct.unpack_from("<HHIQ", data, e)
        if kind not in (1, 2) or ehsize < 32:
            break
        images.add(("compute" if kind == 1 else "sm", struct.unpack_from("<I", data, e + 28)[0]))
        e += ehsize + size
    fatbins.append(images)
    pos = end
fmt = lambda s: ", ".join(f"{k}_{a}" for k, a in sorted(s, key=lambda x: (x[1], x[0] != "sm")))
bad = [f for f in fatbins if f != want]
print(f"    {len(fatbins)} fatbins in {path.rsplit('/', 1)[1]}: "
      + "; ".join(sorted({fmt(f) for f in fatbins})))
if len(fatbins) != n_cu or bad:
    sys.exit(f"expected {n_cu} fatbins (one per .cu), each with exactly {fmt(want)}")
EOF
log "every kernel translation unit embeds exactly the arch list"

# 3b. Libraries and symbols, resolved as the loader would after `import torch`:
# torch/lib and the nvidia-* wheels' lib folders on the search path.
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
libpath="$site/torch/lib"
for d in "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib; do
  [ -d "$d" ] && libpath="$libpath:$d"
done
for so in "$so_c" "$so_cuda"; do
  out="$(LD_LIBRARY_PATH="$libpath" ldd -r "$so" 2>&1 || true)"
  missing="$(printf '%s\n' "$out" | grep 'not found' || true)"
  undefined="$(printf '%s\n' "$out" | grep 'undefined symbol' | grep -Ev 'undefined symbol: _?Py' || true)"
  [ -z "$missing" ] || die "$(basename "$so"): missing libraries:"$'\n'"$missing"
  [ -z "$undefined" ] || die "$(basename "$so"): undefined symbols:"$'\n'"$undefined"
  log "ldd -r $(basename "$so"): all libraries found, no undefined symbol (but the interpreter's Py*)"
done
LD_LIBRARY_PATH="$libpath" ldd "$so_cuda" | grep -E 'torch|c10|cudart' | sed 's/^/    /'

# 3c. Import with no driver, dispatch table, a CPU step.
(cd "$SRC" && PYTHONPATH="$SRC" "$PY" - "$SRC" <<'EOF')
import os, sys
assert sys.getdlopenflags() & os.RTLD_NOW, "extensions must load with RTLD_NOW"
import torch
import camegrad_kernels as ck
from camegrad_kernels import ops
import camegrad_kernels._C as C
import camegrad_kernels._cuda as CU

src = sys.argv[1]
assert ops.HAS_CPU_OPS and ops.HAS_CUDA_OPS, ops.LOAD_ERRORS
for m in (C, CU):
    assert os.path.realpath(m.__file__).startswith(os.path.realpath(src)), m.__file__
print(f"    imported {os.path.basename(C.__file__)} and {os.path.basename(CU.__file__)}; "
      f"torch.cuda.is_available() = {torch.cuda.is_available()}")
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("camegrad::"))
assert names, "no camegrad:: op registered"
has = torch._C._dispatch_has_kernel_for_dispatch_key
rows = [(n, has(n, "CPU"), has(n, "CUDA")) for n in names]
for n, cpu, cuda in rows:
    print(f"    {n:34s} CPU={'yes' if cpu else 'NO'}  CUDA={'yes' if cuda else 'NO'}")
missing = [n for n, cpu, cuda in rows if cpu and not cuda]
assert not missing, f"ops with a CPU kernel but no CUDA kernel: {missing}"
assert all(cpu for _, cpu, _ in rows), "an op has no CPU kernel"
print(f"    available_backends() = {ck.available_backends()}")
out = ck.camegrad_step(torch.randn(4, 100, generator=torch.Generator().manual_seed(0)))
print(f"    CPU camegrad_step(randn(4, 100)): shape {tuple(out.shape)}, "
      f"all finite: {bool(torch.isfinite(out).all())}")
EOF
log "both extensions import without a driver; every camegrad:: op has CPU and CUDA kernels"
log "PASS (torch $torch_version, arch list \"$arch_list\") in $((SECONDS - start)) s"
