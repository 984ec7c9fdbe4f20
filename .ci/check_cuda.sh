#!/usr/bin/env bash
# Compiles every CUDA kernel source (csrc/cuda/*.cu, no torch needed) with
# nvcc -c, warnings as errors, for every architecture of the default
# TORCH_CUDA_ARCH_LIST: the kernels' build check on machines without a GPU or a
# CUDA build of torch. Exits non-zero on any error.
#
# The arch list has one source, setup.py's CUDA_ARCH_LIST_DEFAULT (read here;
# TORCH_CUDA_ARCH_LIST in the environment is ignored: this checks the default).
# "X.Y" gives an sm_XY cubin, "X.Y+PTX" also embeds compute_XY PTX, as
# torch.utils.cpp_extension does.
set -euo pipefail
cd "$(dirname "$0")/.."

arch_list="$(sed -n 's/^CUDA_ARCH_LIST_DEFAULT = "\([^"]*\)"[[:space:]]*$/\1/p' setup.py)"
if [ -z "$arch_list" ]; then
  echo "check_cuda: no CUDA_ARCH_LIST_DEFAULT = \"...\" line in setup.py" >&2
  exit 1
fi

NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [ ! -x "$NVCC" ]; then
  echo "check_cuda: nvcc not found (set NVCC)" >&2
  exit 1
fi

gencode=()
targets=()
for arch in ${arch_list//;/ }; do
  if [[ ! "$arch" =~ ^([0-9]+)\.([0-9])([af]?)(\+PTX)?$ ]]; then
    echo "check_cuda: cannot parse arch '$arch' of CUDA_ARCH_LIST_DEFAULT=\"$arch_list\"" >&2
    exit 1
  fi
  sm="${BASH_REMATCH[1]}${BASH_REMATCH[2]}${BASH_REMATCH[3]}"
  gencode+=(-gencode "arch=compute_$sm,code=sm_$sm")
  targets+=("sm_$sm")
  if [ -n "${BASH_REMATCH[4]}" ]; then
    gencode+=(-gencode "arch=compute_$sm,code=compute_$sm")
    targets+=("compute_$sm PTX")
  fi
done
summary="$(IFS=,; echo "${targets[*]}")"
summary="${summary//,/, }"

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

flags=(-O3 -std=c++17 -I csrc/cpu -I csrc/cuda "${gencode[@]}" -Werror all-warnings)
"$NVCC" --version | tail -n 1
echo "check_cuda: arch list \"$arch_list\" (setup.py CUDA_ARCH_LIST_DEFAULT): $summary"
count=0
for src in csrc/cuda/*.cu; do
  echo "check_cuda: nvcc -c $src"
  "$NVCC" "${flags[@]}" -c "$src" -o "$out/$(basename "$src" .cu).o"
  count=$((count + 1))
done
if [ "$count" -eq 0 ]; then
  echo "check_cuda: no csrc/cuda/*.cu found" >&2
  exit 1
fi
echo "check_cuda: $count sources compiled for $summary, no warnings"
