#!/usr/bin/env bash
# Compiles every CUDA kernel source (csrc/cuda/*.cu, no torch needed) for sm_86
# and sm_90 with nvcc -c, warnings as errors: the kernels' build check on
# machines without a GPU or a CUDA build of torch. Exits non-zero on any error.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [ ! -x "$NVCC" ]; then
  echo "check_cuda: nvcc not found (set NVCC)" >&2
  exit 1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

flags=(-O3 -std=c++17 -I csrc/cpu -I csrc/cuda
  -gencode arch=compute_86,code=sm_86 -gencode arch=compute_90,code=sm_90
  -Werror all-warnings)
"$NVCC" --version | tail -n 1
count=0
for src in csrc/cuda/*.cu; do
  echo "check_cuda: nvcc -c $src (sm_86, sm_90)"
  "$NVCC" "${flags[@]}" -c "$src" -o "$out/$(basename "$src" .cu).o"
  count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
  echo "check_cuda: no csrc/cuda/*.cu found" >&2
  exit 1
fi
echo "check_cuda: $count sources compiled for sm_86 and sm_90, no warnings"
