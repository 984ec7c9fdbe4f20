// The torch wrappers of the baseline solvers (methods.h): float64 work, results
// in the Gram's dtype, as camegrad_kernels/methods/ computes them.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <limits>
#include <vector>

#include "kernels.h"
#include "methods.h"

namespace camegrad {
namespace cpu {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

void check_inputs(const char* op, const at::Tensor& gram, const at::Tensor& weights) {
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1) && gram.size(0) >= 1, "camegrad::", op,
              ": expected a square gram [n, n], got ", gram.sizes());
  TORCH_CHECK(gram.scalar_type() == at::kFloat || gram.scalar_type() == at::kDouble, "camegrad::", op,
              ": expected a float32 or float64 gram, got ", gram.scalar_type());
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == gram.size(0), "camegrad::", op, ": expected weights [",
              gram.size(0), "], got ", weights.sizes());
  TORCH_CHECK(gram.device().is_cpu() && weights.device().is_cpu(), "camegrad::", op,
              " (CPU kernel): expected CPU tensors");
}

// Runs solve(M, w, alpha, coeffs, gap, skipped, work) on float64 copies of the
// inputs and returns its outputs in the Gram's dtype.
template <typename Solve>
Result run(const at::Tensor& gram, const at::Tensor& weights, Solve&& solve) {
  const int64_t n = gram.size(0);
  const at::Tensor M = gram.to(at::kDouble).contiguous();
  const at::Tensor w = weights.to(at::kDouble).contiguous();
  const auto f64 = gram.options().dtype(at::kDouble);
  at::Tensor alpha = at::empty({n}, f64), coeffs = at::empty({n}, f64), gap = at::empty({}, f64);
  at::Tensor skipped = at::empty({}, gram.options().dtype(at::kBool));
  std::vector<double> work(methods::workspace_size(n));
  solve(M.data_ptr<double>(), w.data_ptr<double>(), static_cast<int>(n), alpha.data_ptr<double>(),
        coeffs.data_ptr<double>(), gap.data_ptr<double>(), skipped.data_ptr<bool>(), work.data());
  const auto out = gram.scalar_type();
  return {alpha.to(out), coeffs.to(out), gap.to(out), skipped};
}

}  // namespace

Result cagrad_coefficients(const at::Tensor& gram, const at::Tensor& weights, double rho, int64_t rescale) {
  check_inputs("cagrad_coefficients", gram, weights);
  TORCH_CHECK(rescale >= 0 && rescale <= 2, "camegrad::cagrad_coefficients: expected rescale 0, 1 or 2, got ",
              rescale);
  const double gram_eps = gram.scalar_type() == at::kFloat ? std::numeric_limits<float>::epsilon()
                                                          : std::numeric_limits<double>::epsilon();
  return run(gram, weights, [&](const double* M, const double* w, int n, double* alpha, double* coeffs,
                                double* gap, bool* skipped, double* work) {
    methods::cagrad_coefficients(M, w, n, rho, static_cast<int>(rescale), gram_eps, alpha, coeffs, gap, skipped,
                                 work);
  });
}

Result mgda_coefficients(const at::Tensor& gram, const at::Tensor& weights, c10::string_view normalization) {
  check_inputs("mgda_coefficients", gram, weights);
  TORCH_CHECK(normalization == "none" || normalization == "l2",
              "camegrad::mgda_coefficients: expected normalization 'none' or 'l2', got '", normalization, "'");
  const bool l2 = normalization == "l2";
  return run(gram, weights, [&](const double* M, const double* w, int n, double* alpha, double* coeffs,
                                double* gap, bool* skipped, double* work) {
    methods::mgda_coefficients(M, w, n, l2, alpha, coeffs, gap, skipped, work);
  });
}

Result pcgrad_coefficients(const at::Tensor& gram, const at::Tensor& weights, const at::Tensor& order,
                           c10::string_view reduction) {
  check_inputs("pcgrad_coefficients", gram, weights);
  const int64_t n = gram.size(0);
  TORCH_CHECK(order.dim() == 2 && order.size(0) == n && order.size(1) == n && order.scalar_type() == at::kLong &&
                  order.device().is_cpu(),
              "camegrad::pcgrad_coefficients: expected an int64 CPU order [", n, ", ", n, "], got ",
              order.scalar_type(), " ", order.sizes(), " on ", order.device());
  TORCH_CHECK(reduction == "sum" || reduction == "mean",
              "camegrad::pcgrad_coefficients: expected reduction 'sum' or 'mean', got '", reduction, "'");
  const at::Tensor idx = order.contiguous();
  const bool mean = reduction == "mean";
  const int64_t* o = idx.data_ptr<int64_t>();
  return run(gram, weights, [&](const double* M, const double* w, int n_, double* alpha, double* coeffs,
                                double* gap, bool* skipped, double* work) {
    methods::pcgrad_coefficients(M, w, o, n_, mean, alpha, coeffs, gap, skipped, work);
  });
}

}  // namespace cpu
}  // namespace camegrad
