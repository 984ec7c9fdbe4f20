// The fused step and the CPU registrations of all camegrad ops.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "kernels.h"

namespace camegrad {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> step(
    const at::Tensor& grads, const at::Tensor& weights, double rho, double kappa, double nu,
    double eps, int64_t stages) {
  at::Tensor M = gram(grads);
  // Weights in the Gram's dtype, as api.camegrad_step hands them to a backend.
  auto [alpha, coeffs, gap, skipped] =
      coefficients(M, weights.to(M.scalar_type()), rho, kappa, nu, eps, stages);
  at::Tensor update = combine(grads, coeffs, skipped);
  return {update, M, alpha, coeffs, gap, skipped};
}

TORCH_LIBRARY_IMPL(camegrad, CPU, m) {
  m.impl("gram", &gram);
  m.impl("coefficients", &coefficients);
  m.impl("cagrad_coefficients", &cagrad_coefficients);
  m.impl("mgda_coefficients", &mgda_coefficients);
  m.impl("pcgrad_coefficients", &pcgrad_coefficients);
  m.impl("combine", &combine);
  m.impl("combine_out", &combine_out);
  m.impl("step", &step);
}

}  // namespace cpu
}  // namespace camegrad
