// PCGrad (methods.pcgrad_coefficients) from the Gram matrix, in double by one
// thread block. g_i' = sum_l A_il g_l is held as row i of A (shared memory) and
// <g_i', g_j> = sum_l A_il Mw_lj, Mw = M w w^T. Thread i owns task i and runs
// its n steps alone: step k reads j = order[i, k], the column j of Mw (shared,
// read only after the load) and row i of A, and writes A_ij only, so the steps
// need no barrier. After one barrier thread j sums column j of A.
#include <cfloat>
#include <cmath>

#include "block_solver.cuh"
#include "camegrad_cuda.cuh"
#include "solver.h"

namespace camegrad {
namespace cuda {
namespace {

using namespace block;
using solver::clamp_min;
using solver::TINY;

// Row stride of Mw and A: odd, so that the rows of a warp's threads start on distinct banks.
__host__ __device__ inline int pcgrad_stride(int n) { return n | 1; }

// Shared memory: Mw, A [n x ld], red [2 W 4] (doubles).
template <int W>
__host__ __device__ inline size_t pcgrad_shared_bytes(int n) {
  return (2 * size_t(n) * pcgrad_stride(n) + 2 * W * 4) * sizeof(double);
}

template <typename A, int W>
__global__ void __launch_bounds__(32 * W)
    pcgrad_kernel(const A* __restrict__ M, const A* __restrict__ w, const int64_t* __restrict__ order, int n,
                  bool mean, A* __restrict__ alpha_out, A* __restrict__ coeffs_out, A* __restrict__ gap_out,
                  uint8_t* __restrict__ skipped) {
  extern __shared__ double smem[];
  const int ld = pcgrad_stride(n);
  double* mw = smem;          // n x ld: Mw
  double* a = mw + n * ld;    // n x ld: row i = the coefficients of g_i'
  Team<W> team(n, a + n * ld);
  const int i = threadIdx.x;
  const bool act = i < n;
  if (!team.all(load_gram(M, w, mw, n, ld, i, Team<W>::kThreads))) {  // uniform: the whole block leaves
    if (act) alpha_out[i] = A(NAN), coeffs_out[i] = A(0);
    if (i == 0) *gap_out = A(NAN), *skipped = 1;
    return;
  }
  team.sync();  // Mw is written
  if (act) {
    double* ai = a + i * ld;
    for (int l = 0; l < n; ++l) ai[l] = l == i ? 1.0 : 0.0;
    for (int k = 0; k < n; ++k) {
      const int64_t j = order[int64_t(i) * n + k];
      if (j < 0 || j >= n || j == i) continue;  // skipped, never read
      const double* col = mw + j;                // Mw_lj = col[l * ld]
      double dot = 0.0;                          // <g_i', g_j>
      for (int l = 0; l < n; ++l) dot += ai[l] * col[l * ld];
      const double sq = col[j * ld];  // ||g_j||^2
      if (dot < 0 && sq > 0) ai[j] -= dot / clamp_min(sq, TINY);
    }
  }
  team.sync();  // every row of A is final
  if (act) {
    double c = 0.0;
    for (int r = 0; r < n; ++r) c += a[r * ld + i];
    if (mean) c /= n;
    alpha_out[i] = A(NAN), coeffs_out[i] = A(double(w[i]) * c);
  }
  if (i == 0) *gap_out = A(NAN), *skipped = 0;
}

}  // namespace

template <typename A>
cudaError_t launch_pcgrad(const A* M, const A* w, const int64_t* order, int64_t n, bool mean, A* alpha,
                          A* coeffs, A* gap, uint8_t* skipped, cudaStream_t stream) {
  if (n < 1 || n > kSolveMaxN) return cudaErrorInvalidValue;
  if (n <= 32)
    return launch_block(pcgrad_kernel<A, 1>, Team<1>::kThreads, pcgrad_shared_bytes<1>(int(n)), stream, M, w,
                        order, int(n), mean, alpha, coeffs, gap, skipped);
  return launch_block(pcgrad_kernel<A, 2>, Team<2>::kThreads, pcgrad_shared_bytes<2>(int(n)), stream, M, w,
                      order, int(n), mean, alpha, coeffs, gap, skipped);
}

#define CAMEGRAD_PCGRAD(A)                                                                             \
  template cudaError_t launch_pcgrad<A>(const A*, const A*, const int64_t*, int64_t, bool, A*, A*, A*, \
                                        uint8_t*, cudaStream_t);
CAMEGRAD_PCGRAD(float)
CAMEGRAD_PCGRAD(double)
#undef CAMEGRAD_PCGRAD

}  // namespace cuda
}  // namespace camegrad
