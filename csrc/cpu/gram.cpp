// Pass 1: the Gram matrix M = G G^T in one read of G, returned in float64 for
// every input dtype.
//
// Precision: the product of two fp32 (or fp16/bf16) values is exact in fp64, so
// every input is converted to double and the products are summed in double: M
// is accurate to ~eps64 relative to |g_i| |g_j|, which an fp32 accumulator is
// not (its error ~eps32 |g_i| |g_j| swamps |g_i|^2 when task norms differ by
// 1e6x and more, and the solver then answers wrongly). Since those products are
// exact, a fused multiply-add and a multiply then add give the same bits: for
// fp16/bf16/fp32 input M does not depend on whether the machine has FMA.
//
// Deterministic whatever the thread count: the column split depends on d only,
// each chunk is reduced by one thread in a fixed order, and the chunk partials
// are summed sequentially in chunk order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels.h"

namespace camegrad {
namespace cpu {
namespace {

constexpr int64_t kTile = 256;        // columns per tile (n converted rows of it stay in L1)
constexpr int64_t kMinChunk = 32768;  // columns per chunk, at least
constexpr int64_t kMaxChunks = 256;   // bounds the partials workspace
// Up to this many tasks fp32 rows are read in place and converted as they are
// loaded: each row feeds one block per tile. Beyond, every row feeds several
// blocks, and a tile is converted to double once, into a buffer.
constexpr int64_t kInPlaceMaxN = 4;

int64_t chunk_columns(int64_t d) {
  const int64_t c = std::max(kMinChunk, (d + kMaxChunks - 1) / kMaxChunks);
  return (c + 63) / 64 * 64;
}

#define CAMEGRAD_INLINE inline __attribute__((always_inline))

// Four doubles in a GCC/clang vector: the lane count, hence the summation order,
// is the same in every clone of CAMEGRAD_CPU_CLONES (one ymm register with AVX2,
// two xmm without).
typedef double v4d __attribute__((vector_size(32)));

CAMEGRAD_INLINE void load4(const double* p, v4d& x) { std::memcpy(&x, p, sizeof x); }
// Element by element, not __builtin_convertvector: GCC 12 lowers that through
// the stack in the AVX2 clone; this becomes one vcvtps2pd from memory.
CAMEGRAD_INLINE void load4(const float* p, v4d& x) {
  x = v4d{static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2]),
          static_cast<double>(p[3])};
}

// out[k][l] = <a[k], b[l]> over w columns, summed in double; kDiag: b == a and
// only l >= k. U independent accumulator sets (U x 4 columns per step) keep
// enough FMA chains in flight for the small blocks; a scalar loop adds the
// last w % 4 columns. Every order here is fixed by (R, C, w).
template <int R, int C, bool kDiag, typename T>
CAMEGRAD_INLINE void block_dots(const T* const* a, const T* const* b, int64_t w, double (*out)[C]) {
  constexpr int kPairs = kDiag ? R * (R + 1) / 2 : R * C;
  constexpr int U = kPairs >= 6 ? 1 : kPairs >= 3 ? 2 : 4;
  v4d s[U][R][C];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int k = 0; k < R; ++k)
#pragma GCC unroll 4
      for (int l = 0; l < C; ++l) s[u][k][l] = v4d{0.0, 0.0, 0.0, 0.0};
  int64_t c = 0;
  for (; c + 4 * U <= w; c += 4 * U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      v4d x[R], y[C];
#pragma GCC unroll 4
      for (int k = 0; k < R; ++k) load4(a[k] + c + 4 * u, x[k]);
      if constexpr (!kDiag) {
#pragma GCC unroll 4
        for (int l = 0; l < C; ++l) load4(b[l] + c + 4 * u, y[l]);
      }
#pragma GCC unroll 4
      for (int k = 0; k < R; ++k)
#pragma GCC unroll 4
        for (int l = 0; l < C; ++l) {
          if (kDiag && l < k) continue;
          s[u][k][l] += x[k] * (kDiag ? x[l] : y[l]);
        }
    }
  }
  for (; c + 4 <= w; c += 4) {
    v4d x[R], y[C];
#pragma GCC unroll 4
    for (int k = 0; k < R; ++k) load4(a[k] + c, x[k]);
    if constexpr (!kDiag) {
#pragma GCC unroll 4
      for (int l = 0; l < C; ++l) load4(b[l] + c, y[l]);
    }
#pragma GCC unroll 4
    for (int k = 0; k < R; ++k)
#pragma GCC unroll 4
      for (int l = 0; l < C; ++l) {
        if (kDiag && l < k) continue;
        s[0][k][l] += x[k] * (kDiag ? x[l] : y[l]);
      }
  }
#pragma GCC unroll 4
  for (int k = 0; k < R; ++k)
#pragma GCC unroll 4
    for (int l = 0; l < C; ++l) {
      if (kDiag && l < k) continue;
      v4d v = s[0][k][l];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) v += s[u][k][l];
      double t = (v[0] + v[1]) + (v[2] + v[3]);
      for (int64_t cc = c; cc < w; ++cc) t += static_cast<double>(a[k][cc]) * static_cast<double>(b[l][cc]);
      out[k][l] = t;
    }
}

CAMEGRAD_INLINE int64_t pair_index(int64_t i, int64_t j, int64_t n) { return i * n - i * (i - 1) / 2 + (j - i); }

// The R rows from i0 against themselves and every later row (pairs i <= j,
// packed row by row in partial): an R x R triangle, then R x 2 blocks.
template <int R, typename T>
CAMEGRAD_INLINE void row_block(const T* const* rows, int64_t i0, int64_t n, int64_t w, double* partial) {
  {
    double o[R][R];
    block_dots<R, R, true>(rows + i0, rows + i0, w, o);
    for (int k = 0; k < R; ++k)
      for (int l = k; l < R; ++l) partial[pair_index(i0 + k, i0 + l, n)] += o[k][l];
  }
  int64_t j0 = i0 + R;
  for (; j0 + 2 <= n; j0 += 2) {
    double o[R][2];
    block_dots<R, 2, false>(rows + i0, rows + j0, w, o);
    for (int k = 0; k < R; ++k)
      for (int l = 0; l < 2; ++l) partial[pair_index(i0 + k, j0 + l, n)] += o[k][l];
  }
  if (j0 < n) {
    double o[R][1];
    block_dots<R, 1, false>(rows + i0, rows + j0, w, o);
    for (int k = 0; k < R; ++k) partial[pair_index(i0 + k, j0, n)] += o[k][0];
  }
}

// partial[pair(i, j)] += <rows[i], rows[j]> over the w columns of a tile, i <= j.
// Each block's tile dot is summed in its own registers, then added to the
// double partial: long rows lose no precision across tiles.
template <typename T>
CAMEGRAD_INLINE void tile_dots(const T* const* rows, int64_t n, int64_t w, double* partial) {
  int64_t i0 = 0;
  for (; i0 + 4 <= n; i0 += 4) row_block<4>(rows, i0, n, w, partial);
  switch (n - i0) {
    case 3:
      row_block<3>(rows, i0, n, w, partial);
      break;
    case 2:
      row_block<2>(rows, i0, n, w, partial);
      break;
    case 1:
      row_block<1>(rows, i0, n, w, partial);
      break;
    default:
      break;
  }
}

// The partial Gram of columns [begin, end), tile by tile. fp64 rows, and fp32
// rows for n <= kInPlaceMaxN, are read in place; otherwise each tile is
// converted (exactly) to double in buf (n x kTile) first.
template <typename scalar_t>
CAMEGRAD_CPU_CLONES void gram_chunk(const scalar_t* G, int64_t n, int64_t d, int64_t begin, int64_t end,
                                    double* buf, const scalar_t** src_rows, const double** rows,
                                    double* partial) {
  constexpr bool kNative = std::is_same_v<scalar_t, double> || std::is_same_v<scalar_t, float>;
  const bool in_place = std::is_same_v<scalar_t, double> || (kNative && n <= kInPlaceMaxN);
  for (int64_t col = begin; col < end; col += kTile) {
    const int64_t w = std::min(kTile, end - col);
    if constexpr (kNative) {
      if (in_place) {
        for (int64_t i = 0; i < n; ++i) src_rows[i] = G + i * d + col;
        tile_dots(src_rows, n, w, partial);
        continue;
      }
    }
    if constexpr (!std::is_same_v<scalar_t, double>) {
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t* src = G + i * d + col;
        double* dst = buf + i * kTile;
#pragma omp simd
        for (int64_t c = 0; c < w; ++c) dst[c] = static_cast<double>(static_cast<float>(src[c]));
        rows[i] = dst;
      }
      tile_dots(rows, n, w, partial);
    }
  }
}

template <typename scalar_t>
void gram_kernel(const scalar_t* G, int64_t n, int64_t d, at::Tensor& out) {
  const int64_t npairs = n * (n + 1) / 2;
  const int64_t chunk = chunk_columns(d);
  const int64_t nchunks = (d + chunk - 1) / chunk;
  std::vector<double> partials(nchunks * npairs, 0.0);

  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> buf(std::is_same_v<scalar_t, double> ? 0 : n * kTile);
    std::vector<const scalar_t*> src_rows(n);
    std::vector<const double*> rows(n);
    for (int64_t ch = begin; ch < end; ++ch)
      gram_chunk(G, n, d, ch * chunk, std::min(d, (ch + 1) * chunk), buf.data(), src_rows.data(),
                 rows.data(), partials.data() + ch * npairs);
  });

  // Fixed-order reduction over chunks, then mirror the upper triangle.
  std::vector<double> total(npairs, 0.0);
  for (int64_t ch = 0; ch < nchunks; ++ch)
    for (int64_t p = 0; p < npairs; ++p) total[p] += partials[ch * npairs + p];
  double* M = out.data_ptr<double>();
  for (int64_t i = 0, p = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j, ++p) M[i * n + j] = M[j * n + i] = total[p];
}

}  // namespace

at::Tensor gram(const at::Tensor& grads) {
  TORCH_CHECK(grads.dim() == 2, "camegrad::gram: expected grads [n, d], got ", grads.sizes());
  TORCH_CHECK(grads.device().is_cpu(), "camegrad::gram (CPU kernel): got a tensor on ", grads.device());
  const at::Tensor G = grads.contiguous();
  const int64_t n = G.size(0), d = G.size(1);
  at::Tensor out = at::empty({n, n}, G.options().dtype(at::kDouble));
  if (d == 0 || n == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "camegrad_gram", [&] {
    gram_kernel<scalar_t>(G.data_ptr<scalar_t>(), n, d, out);
  });
  return out;
}

}  // namespace cpu
}  // namespace camegrad
