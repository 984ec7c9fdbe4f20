// Device helpers shared by the streaming kernels: 128-bit accesses and the
// conversions between the gradient dtypes and the accumulation type.
#pragma once

#include <cstdint>
#include <cstring>

#include "camegrad_cuda.cuh"

namespace camegrad {
namespace cuda {

// Elements of T in one 128-bit access.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename O>
__device__ __forceinline__ O from_acc(float x);
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <typename O>
__device__ __forceinline__ O from_acc(double x) {
  static_assert(sizeof(O) == sizeof(double), "fp64 accumulates fp64 outputs only");
  return x;
}

// kVec<T> elements of T from 16-byte aligned global memory (read-only path),
// converted to the accumulation type.
template <typename T>
__device__ __forceinline__ void load_global(const T* p, acc_t<T> (&out)[kVec<T>]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  T e[kVec<T>];
  memcpy(e, &raw, sizeof(raw));
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) out[i] = to_acc(e[i]);
}

// 16 bytes of A from aligned shared (or any generic) memory, no conversion.
template <typename A>
__device__ __forceinline__ void load16(const A* p, A (&out)[kVec<A>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  memcpy(out, &raw, sizeof(raw));
}

// N accumulated values stored as O with 128-bit stores (N * sizeof(O) is a
// multiple of 16 and p is 16-byte aligned).
template <typename O, typename A, int N>
__device__ __forceinline__ void store_vec(O* p, const A (&v)[N]) {
  static_assert(N * sizeof(O) % 16 == 0, "whole 128-bit stores only");
  alignas(16) O o[N];
#pragma unroll
  for (int i = 0; i < N; ++i) o[i] = from_acc<O>(v[i]);
#pragma unroll
  for (int w = 0; w < int(N * sizeof(O) / 16); ++w)
    reinterpret_cast<uint4*>(p)[w] = reinterpret_cast<const uint4*>(o)[w];
}

}  // namespace cuda
}  // namespace camegrad
