// The building blocks of the one-thread-block kernels (solve.cu, pcgrad.cu):
// Team, the reductions of a block of W warps in which thread i owns task i and
// every thread gets the same bits (so data-dependent decisions stay uniform),
// the load of the Gram matrix into shared memory and the launch.
#pragma once

#include <cmath>
#include <cstddef>

#include "camegrad_cuda.cuh"

namespace camegrad {
namespace cuda {
namespace block {

constexpr unsigned kFull = 0xffffffffu;

struct Add {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};
struct Min {
  __device__ double operator()(double a, double b) const { return fmin(a, b); }
};

// W warps: 1 for n <= 32 (warp-synchronous, no block barriers), 2 for n <= 64.
template <int W>
struct Team {
  static constexpr int kThreads = 32 * W;
  int tid, top;  // top: first xor-shuffle offset covering lanes [0, n)
  double* red;   // [2][W][4] ping-pong partials: one barrier per reduction
  int phase;

  __device__ Team(int n, double* red_) : tid(threadIdx.x), top(16), red(red_), phase(0) {
    if (W == 1)
      while (top > 0 && top >= n) top >>= 1;  // smallest top with 2 * top >= n (0 for n = 1)
  }
  __device__ void sync() const {
    if (W == 1)
      __syncwarp();
    else
      __syncthreads();
  }
  __device__ double* slot() {
    double* s = red + phase * W * 4;
    phase ^= 1;
    return s;
  }

  // K values reduced with op over the block, the same result in every thread.
  template <int K, class Op>
  __device__ void reduce(double (&v)[K], Op op) {
    for (int off = top; off > 0; off >>= 1)
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = op(v[k], __shfl_xor_sync(kFull, v[k], off));
    if (W == 1) {
      if (top < 16)  // lanes beyond 2 * top did not take part: broadcast lane 0
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = __shfl_sync(kFull, v[k], 0);
      return;
    }
    double* s = slot();
    if ((tid & 31) == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) s[(tid >> 5) * 4 + k] = v[k];
    sync();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      double a = s[k];
      for (int w = 1; w < W; ++w) a = op(a, s[w * 4 + k]);
      v[k] = a;
    }
  }
  __device__ double sum(double x) {
    double v[1] = {x};
    reduce(v, Add{});
    return v[0];
  }

  // Index of the largest value, the first such index on ties (LAPACK's idamax).
  // Values must not be NaN.
  __device__ int argmax(double v, int i) {
    for (int off = 16; off > 0; off >>= 1) {
      const double ov = __shfl_xor_sync(kFull, v, off);
      const int oi = __shfl_xor_sync(kFull, i, off);
      if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
    }
    if (W == 1) return i;
    double* s = slot();
    if ((tid & 31) == 0) s[(tid >> 5) * 4] = v, s[(tid >> 5) * 4 + 1] = i;
    sync();
    v = s[0], i = int(s[1]);
    for (int w = 1; w < W; ++w)
      if (s[w * 4] > v) v = s[w * 4], i = int(s[w * 4 + 1]);  // earlier warps hold lower indices
    return i;
  }

  __device__ bool all(bool p) {
    if (W == 1) return __all_sync(kFull, p);
    return __syncthreads_and(p);
  }
  __device__ int count(bool p) {
    if (W == 1) return __popc(__ballot_sync(kFull, p));
    return __syncthreads_count(p);
  }
  // Exclusive prefix count of p (in thread order); total gets the count.
  __device__ int prefix(bool p, int& total) {
    const unsigned mask = __ballot_sync(kFull, p);
    int before = __popc(mask & ((1u << (tid & 31)) - 1u));
    if (W == 1) {
      total = __popc(mask);
      return before;
    }
    double* s = slot();
    if ((tid & 31) == 0) s[(tid >> 5) * 4] = __popc(mask);
    sync();
    total = 0;
    for (int w = 0; w < W; ++w) {
      const int c = int(s[w * 4]);
      before += w < (tid >> 5) ? c : 0;
      total += c;
    }
    return before;
  }
};

// M [n, n] as double into the rows of X (row stride ld), times w_i w_j when w
// is given, rounded as torch's M * w[:, None] * w[None, :]. Returns whether the
// entries of M this thread read were all finite.
template <typename A>
__device__ bool load_gram(const A* M, const A* w, double* X, int n, int ld, int tid, int threads) {
  bool finite = true;
  for (int e = tid; e < n * n; e += threads) {
    const int i = e / n, j = e - i * n;
    double v = M[e];
    finite = finite && isfinite(v);
    if (w != nullptr) v = v * double(w[i]) * double(w[j]);
    X[i * ld + j] = v;
  }
  return finite;
}

// kernel<<<1, threads, smem, stream>>>(args...), opting in first when smem is
// above the default 48 KiB (capture safe: not a stream op).
template <typename... P, typename... Args>
cudaError_t launch_block(void (*kernel)(P...), int threads, size_t smem, cudaStream_t stream, Args... args) {
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<1, threads, smem, stream>>>(args...);
  return cudaSuccess;
}

}  // namespace block
}  // namespace cuda
}  // namespace camegrad
