// Pass 1: the Gram matrix M = G G^T in one read of G.
//
// Deterministic whatever the thread count: the column split depends on d only,
// each chunk is reduced by one thread in a fixed order, and the chunk partials
// are summed sequentially in chunk order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels.h"

namespace camegrad {
namespace cpu {
namespace {

constexpr int64_t kTile = 512;        // columns per tile (a converted tile stays in L2)
constexpr int64_t kMinChunk = 32768;  // columns per chunk, at least
constexpr int64_t kMaxChunks = 256;   // bounds the partials workspace

int64_t chunk_columns(int64_t d) {
  const int64_t c = std::max(kMinChunk, (d + kMaxChunks - 1) / kMaxChunks);
  return (c + 63) / 64 * 64;
}

// partial[pair(i, j)] += <rows[i], rows[j]> over the w columns of a tile, for all
// i <= j; pairs are packed row by row. A 4 x 2 block of rows is reduced at once,
// so 6 loads feed 8 independent vector FMA chains.
// Rows outside the triangle are clamped to valid ones: computed, never stored.
// Each tile dot is summed in acc_t, then added to the double partial, so long
// rows lose no precision across tiles.
template <typename acc_t>
inline __attribute__((always_inline)) void tile_dots(const acc_t* const* rows, int64_t n, int64_t w,
                                                     double* partial) {
  auto row = [&](int64_t r) { return rows[std::min(r, n - 1)]; };
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    const acc_t *a0 = row(i0), *a1 = row(i0 + 1), *a2 = row(i0 + 2), *a3 = row(i0 + 3);
    for (int64_t j0 = i0; j0 < n; j0 += 2) {
      const acc_t *b0 = row(j0), *b1 = row(j0 + 1);
      acc_t s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
#pragma omp simd reduction(+ : s00, s01, s10, s11, s20, s21, s30, s31)
      for (int64_t c = 0; c < w; ++c) {
        const acc_t x0 = b0[c], x1 = b1[c];
        s00 += a0[c] * x0;
        s01 += a0[c] * x1;
        s10 += a1[c] * x0;
        s11 += a1[c] * x1;
        s20 += a2[c] * x0;
        s21 += a2[c] * x1;
        s30 += a3[c] * x0;
        s31 += a3[c] * x1;
      }
      const acc_t sums[4][2] = {{s00, s01}, {s10, s11}, {s20, s21}, {s30, s31}};
      for (int64_t k = 0; k < 4; ++k) {
        for (int64_t l = 0; l < 2; ++l) {
          const int64_t i = i0 + k, j = j0 + l;
          if (i <= j && j < n) partial[i * n - i * (i - 1) / 2 + (j - i)] += static_cast<double>(sums[k][l]);
        }
      }
    }
  }
}

// The partial Gram of columns [begin, end), tile by tile. fp16/bf16 tiles are
// converted to fp32 in buf (n x kTile); fp32/fp64 rows are read in place (a
// copy costs more than it saves: the dots keep all row streams moving together).
template <typename scalar_t, typename acc_t>
CAMEGRAD_CPU_CLONES void gram_chunk(const scalar_t* G, int64_t n, int64_t d, int64_t begin, int64_t end,
                                    acc_t* buf, const acc_t** rows, double* partial) {
  for (int64_t col = begin; col < end; col += kTile) {
    const int64_t w = std::min(kTile, end - col);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* src = G + i * d + col;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        rows[i] = src;
      } else {
        acc_t* dst = buf + i * kTile;
        for (int64_t c = 0; c < w; ++c) dst[c] = static_cast<acc_t>(src[c]);
        rows[i] = dst;
      }
    }
    tile_dots(rows, n, w, partial);
  }
}

template <typename scalar_t>
void gram_kernel(const scalar_t* G, int64_t n, int64_t d, at::Tensor& out) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t npairs = n * (n + 1) / 2;
  const int64_t chunk = chunk_columns(d);
  const int64_t nchunks = (d + chunk - 1) / chunk;
  std::vector<double> partials(nchunks * npairs, 0.0);

  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(std::is_same_v<scalar_t, acc_t> ? 0 : n * kTile);
    std::vector<const acc_t*> rows(n);
    for (int64_t ch = begin; ch < end; ++ch)
      gram_chunk(G, n, d, ch * chunk, std::min(d, (ch + 1) * chunk), buf.data(), rows.data(),
                 partials.data() + ch * npairs);
  });

  // Fixed-order reduction over chunks, then mirror the upper triangle.
  std::vector<double> total(npairs, 0.0);
  for (int64_t ch = 0; ch < nchunks; ++ch)
    for (int64_t p = 0; p < npairs; ++p) total[p] += partials[ch * npairs + p];
  acc_t* M = out.data_ptr<acc_t>();
  for (int64_t i = 0, p = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j, ++p) M[i * n + j] = M[j * n + i] = static_cast<acc_t>(total[p]);
}

}  // namespace

at::Tensor gram(const at::Tensor& grads) {
  TORCH_CHECK(grads.dim() == 2, "camegrad::gram: expected grads [n, d], got ", grads.sizes());
  TORCH_CHECK(grads.device().is_cpu(), "camegrad::gram (CPU kernel): got a tensor on ", grads.device());
  const at::Tensor G = grads.contiguous();
  const int64_t n = G.size(0), d = G.size(1);
  const auto acc = G.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({n, n}, G.options().dtype(acc));
  if (d == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "camegrad_gram", [&] {
    gram_kernel<scalar_t>(G.data_ptr<scalar_t>(), n, d, out);
  });
  return out;
}

}  // namespace cpu
}  // namespace camegrad
