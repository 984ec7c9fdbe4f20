// Pass 2: out = c^T G in one read of G and one write of out.
//
// Columns are cut into fixed blocks; each block sums the rows in a fixed order in
// its own accumulator, so the bits never depend on the thread count.
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

// Columns per block: long runs per row keep the hardware prefetcher on every row
// stream; the accumulator (32 KiB in fp32) stays in L1/L2.
constexpr int64_t kBlock = 8192;

// out[col, col + w) = sum_i c_i G[i, col, col + w). Rows are added four at a
// time (a quarter of the accumulator traffic), always in the same order.
template <typename scalar_t, typename acc_t>
CAMEGRAD_CPU_CLONES void combine_block(const scalar_t* G, const acc_t* c, int64_t n, int64_t d, int64_t col,
                                       int64_t w, acc_t* acc, scalar_t* out) {
  std::fill(acc, acc + w, acc_t(0));
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const scalar_t* r0 = G + i * d + col;
    const scalar_t *r1 = r0 + d, *r2 = r1 + d, *r3 = r2 + d;
    const acc_t c0 = c[i], c1 = c[i + 1], c2 = c[i + 2], c3 = c[i + 3];
#pragma omp simd
    for (int64_t k = 0; k < w; ++k)
      acc[k] += c0 * static_cast<acc_t>(r0[k]) + c1 * static_cast<acc_t>(r1[k]) +
                c2 * static_cast<acc_t>(r2[k]) + c3 * static_cast<acc_t>(r3[k]);
  }
  for (; i < n; ++i) {
    const scalar_t* row = G + i * d + col;
    const acc_t ci = c[i];
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) acc[k] += ci * static_cast<acc_t>(row[k]);
  }
  for (int64_t k = 0; k < w; ++k) out[col + k] = static_cast<scalar_t>(acc[k]);
}

template <typename scalar_t>
void combine_kernel(const scalar_t* G, const at::Tensor& coeffs, int64_t n, int64_t d, scalar_t* out) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  // Coefficients are read once, in the accumulation dtype (as coeffs.to(acc) @ G).
  const at::Tensor c_acc = coeffs.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* c = c_acc.data_ptr<acc_t>();
  const int64_t nblocks = (d + kBlock - 1) / kBlock;
  // Enough blocks per task that tiny problems stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 65536 / (std::max<int64_t>(n, 1) * kBlock));
  at::parallel_for(0, nblocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kBlock);
    for (int64_t blk = begin; blk < end; ++blk)
      combine_block(G, c, n, d, blk * kBlock, std::min(kBlock, d - blk * kBlock), acc.data(), out);
  });
}

void check_inputs(const at::Tensor& grads, const at::Tensor& coeffs) {
  TORCH_CHECK(grads.dim() == 2, "camegrad::combine: expected grads [n, d], got ", grads.sizes());
  TORCH_CHECK(coeffs.dim() == 1 && coeffs.size(0) == grads.size(0),
              "camegrad::combine: expected coeffs [", grads.size(0), "], got ", coeffs.sizes());
  TORCH_CHECK(grads.device().is_cpu() && coeffs.device().is_cpu(),
              "camegrad::combine (CPU kernel): expected CPU tensors");
}

}  // namespace

void combine_out(const at::Tensor& grads, const at::Tensor& coeffs, const std::optional<at::Tensor>& skip,
                 at::Tensor& out) {
  check_inputs(grads, coeffs);
  TORCH_CHECK(out.dim() == 1 && out.size(0) == grads.size(1),
              "camegrad::combine_out: expected out [", grads.size(1), "], got ", out.sizes());
  // Skipped: zeros without reading G, so NaN/Inf in G cannot leak through 0 * x.
  if (skip.has_value() && skip->item<bool>()) {
    out.zero_();
    return;
  }
  const at::Tensor G = grads.contiguous();
  // Write straight into out when it can be; otherwise through a temporary.
  const bool direct = out.is_contiguous() && out.scalar_type() == G.scalar_type();
  at::Tensor dst = direct ? out : at::empty({G.size(1)}, G.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "camegrad_combine", [&] {
    combine_kernel<scalar_t>(G.data_ptr<scalar_t>(), coeffs, G.size(0), G.size(1), dst.data_ptr<scalar_t>());
  });
  if (!direct) out.copy_(dst);
}

at::Tensor combine(const at::Tensor& grads, const at::Tensor& coeffs, const std::optional<at::Tensor>& skip) {
  check_inputs(grads, coeffs);
  at::Tensor out = at::empty({grads.size(1)}, grads.options());
  combine_out(grads, coeffs, skip, out);
  return out;
}

}  // namespace cpu
}  // namespace camegrad
