// Pass 2: out = c^T G (docs/camegrad.md §3) in one read of G and one write of out.
// Each thread owns one 128-bit column vector (one column when unaligned) and
// streams the n rows through it in row order, so every output element has one
// fixed summation order whatever the grid.
#include "camegrad_cuda.cuh"
#include "vector_io.cuh"

namespace camegrad {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, typename O, bool kVector>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const T* __restrict__ G, int n, int64_t d, const acc_t<T>* __restrict__ coeffs,
                   const uint8_t* __restrict__ skip, O* __restrict__ out) {
  using A = acc_t<T>;
  constexpr int V = kVector ? kVec<T> : 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* c = reinterpret_cast<A*>(smem_raw);
  for (int i = threadIdx.x; i < n; i += blockDim.x) c[i] = coeffs[i];
  __syncthreads();
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (col >= d) return;  // vectors are whole: d % V == 0
  A acc[V] = {};
  // A skipped step (non-finite Gram) writes zeros without reading G.
  if (skip == nullptr || *skip == 0) {
#pragma unroll 4
    for (int i = 0; i < n; ++i) {
      const T* row = G + i * d + col;
      A x[V];
      if constexpr (kVector)
        load_global(row, x);
      else
        x[0] = to_acc(*row);
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = fma(c[i], x[v], acc[v]);
    }
  }
  if constexpr (kVector)
    store_vec(out + col, acc);
  else
    out[col] = from_acc<O>(acc[0]);
}

}  // namespace

template <typename T, typename O>
cudaError_t launch_combine(const T* G, int64_t n, int64_t d, const acc_t<T>* coeffs, const uint8_t* skip,
                           O* out, cudaStream_t stream) {
  if (n < 1 || n > kCombineMaxN || d < 0) return cudaErrorInvalidValue;
  if (d == 0) return cudaSuccess;
  const size_t smem = size_t(n) * sizeof(acc_t<T>);
  const bool vector = reinterpret_cast<uintptr_t>(G) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(out) % 16 == 0 && d % kVec<T> == 0;
  if (vector) {
    const int64_t blocks = (d / kVec<T> + kThreads - 1) / kThreads;
    combine_kernel<T, O, true><<<unsigned(blocks), kThreads, smem, stream>>>(G, int(n), d, coeffs, skip, out);
  } else {
    const int64_t blocks = (d + kThreads - 1) / kThreads;
    combine_kernel<T, O, false>
        <<<unsigned(blocks), kThreads, smem, stream>>>(G, int(n), d, coeffs, skip, out);
  }
  return cudaSuccess;
}

#define CAMEGRAD_COMBINE(T, O)                                                                               \
  template cudaError_t launch_combine<T, O>(const T*, int64_t, int64_t, const acc_t<T>*, const uint8_t*, O*, \
                                            cudaStream_t);
CAMEGRAD_COMBINE(__half, __half)
CAMEGRAD_COMBINE(__half, float)
CAMEGRAD_COMBINE(__nv_bfloat16, __nv_bfloat16)
CAMEGRAD_COMBINE(__nv_bfloat16, float)
CAMEGRAD_COMBINE(float, float)
CAMEGRAD_COMBINE(double, double)
#undef CAMEGRAD_COMBINE

}  // namespace cuda
}  // namespace camegrad
