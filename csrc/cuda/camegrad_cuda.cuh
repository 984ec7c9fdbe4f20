// Launchers of the CUDA kernels: raw device pointers, sizes and a stream, no
// torch. Host code (csrc/cuda/binding.cpp) includes this with a plain C++
// compiler, so it declares nothing device-only.
//
// Every launch shape depends only on the sizes (never on the device or the
// data), nothing syncs the host and nothing allocates: the whole step can be
// captured in a CUDA graph, and the same input gives the same bits on any GPU.
// A launcher returns cudaErrorInvalidValue for sizes it does not support and
// leaves kernel launch errors to the caller's cudaGetLastError().
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace camegrad {
namespace cuda {

constexpr int kGramMaxN = 256;      // staged rows of G must fit in shared memory
constexpr int kSolveMaxN = 64;      // the solver keeps two n x n double matrices in shared memory
constexpr int kCombineMaxN = 4096;  // coefficients are staged in shared memory

// The combine's accumulation precision: fp32 for __half, __nv_bfloat16 and
// float, fp64 for double (the Gram is gram_t, double, for all four).
template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Accumulate<T>::type;

// The Gram's type for every gradient dtype: products of fp16/bf16/fp32 values
// are exact in double, and summed there (gram.cu), so M is accurate to ~eps64
// |g_i| |g_j| (an fp32 sum is not, once task norms differ by 1e6x). The
// solvers then run on a double M, and the coefficients come back in double.
using gram_t = double;

// Elements of gram_t in the workspace launch_gram needs for G [n, d].
template <typename T>
size_t gram_workspace_elems(int64_t n, int64_t d);

// M [n, n] = G G^T in gram_t for row-major G [n, d]: a deterministic two-stage
// reduction (fixed split of d, fixed summation order, no atomics).
template <typename T>
cudaError_t launch_gram(const T* G, int64_t n, int64_t d, gram_t* workspace, gram_t* M, cudaStream_t stream);

// solver.camegrad_coefficients on the Gram matrix M [n, n] and weights w [n]
// (A = float or double), computed in double by one thread block. Writes alpha
// [n], coeffs [n], the duality gap [1] in A and skipped [1] (0 or 1: M was not
// finite).
template <typename A>
cudaError_t launch_solve(const A* M, const A* w, int64_t n, double rho, double kappa, double nu, double eps,
                         int stages, A* alpha, A* coeffs, A* gap, uint8_t* skipped, cudaStream_t stream);

// The baselines of camegrad_kernels/methods/ on M [n, n] and weights w [n]
// (A = float or double; n up to kSolveMaxN), in double by one thread block,
// with the outputs of launch_solve (alpha and the gap NaN for PCGrad).
// CAGrad (rescale 0, 1 or 2) and MGDA (l2: normalization "l2") run the solve
// kernel; PCGrad visits the tasks in order [n, n] (int64; row i: task i's
// order, entries outside [0, n) and j == i skipped) and sums when !mean.
template <typename A>
cudaError_t launch_cagrad(const A* M, const A* w, int64_t n, double rho, int rescale, A* alpha, A* coeffs,
                          A* gap, uint8_t* skipped, cudaStream_t stream);
template <typename A>
cudaError_t launch_mgda(const A* M, const A* w, int64_t n, bool l2, A* alpha, A* coeffs, A* gap,
                        uint8_t* skipped, cudaStream_t stream);
template <typename A>
cudaError_t launch_pcgrad(const A* M, const A* w, const int64_t* order, int64_t n, bool mean, A* alpha,
                          A* coeffs, A* gap, uint8_t* skipped, cudaStream_t stream);

// out [d] = coeffs^T G, accumulated in acc_t<T>, written as O (T or acc_t<T>);
// zeros when skip (a device byte, may be null) is non-zero.
template <typename T, typename O>
cudaError_t launch_combine(const T* G, int64_t n, int64_t d, const acc_t<T>* coeffs, const uint8_t* skip,
                           O* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace camegrad
