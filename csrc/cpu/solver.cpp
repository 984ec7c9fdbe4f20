// The torch wrapper of the solver (solver.h): float64 work, results in the
// Gram's dtype, exactly as solver.camegrad_coefficients on the CPU.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <limits>
#include <vector>

#include "kernels.h"
#include "solver.h"

namespace camegrad {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients(const at::Tensor& gram,
                                                                       const at::Tensor& weights,
                                                                       double rho, double kappa,
                                                                       double nu, double eps,
                                                                       int64_t stages) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) >= 1,
              "camegrad::coefficients: expected a square gram [n, n], got ", gram.sizes());
  TORCH_CHECK(gram.scalar_type() == at::kFloat || gram.scalar_type() == at::kDouble,
              "camegrad::coefficients: expected a float32 or float64 gram, got ", gram.scalar_type());
  const int64_t n = gram.size(0);
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == n,
              "camegrad::coefficients: expected weights [", n, "], got ", weights.sizes());
  TORCH_CHECK(gram.device().is_cpu() && weights.device().is_cpu(),
              "camegrad::coefficients (CPU kernel): expected CPU tensors");
  const at::Tensor M = gram.to(at::kDouble).contiguous();
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  const bool fp32 = gram.scalar_type() == at::kFloat;
  const solver::Params prm{rho, kappa, nu, eps, static_cast<int>(stages),
                           fp32 ? std::numeric_limits<float>::epsilon()
                                : std::numeric_limits<double>::epsilon()};

  const auto f64 = gram.options().dtype(at::kDouble);
  at::Tensor alpha = at::empty({n}, f64), coeffs = at::empty({n}, f64), gap = at::empty({}, f64);
  at::Tensor skipped = at::empty({}, gram.options().dtype(at::kBool));
  std::vector<double> work(solver::workspace_size(n));
  solver::camegrad_coefficients(M.data_ptr<double>(), w.data_ptr<double>(), static_cast<int>(n), prm,
                                alpha.data_ptr<double>(), coeffs.data_ptr<double>(), gap.data_ptr<double>(),
                                skipped.data_ptr<bool>(), work.data());
  const auto out = gram.scalar_type();
  return {alpha.to(out), coeffs.to(out), gap.to(out), skipped};
}

}  // namespace cpu
}  // namespace camegrad
