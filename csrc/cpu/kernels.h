// The CPU kernels behind torch.ops.camegrad (schemas in csrc/ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

// The hot loops are compiled twice, for AVX2+FMA (x86-64-v3) and for the
// baseline, and the loader picks one per machine (GCC function multiversioning):
// wheels stay portable, and the choice never depends on the thread count.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define CAMEGRAD_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CAMEGRAD_CPU_CLONES
#endif

namespace camegrad {
namespace cpu {

// M = G G^T for contiguous G [n, d], in fp64 for every input dtype (products of
// fp16/bf16/fp32 values are exact in fp64 and summed there; gram.cpp).
at::Tensor gram(const at::Tensor& grads);

// (alpha, coeffs, duality_gap, skipped) from the Gram matrix (solver.h).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> coefficients(const at::Tensor& gram,
                                                                       const at::Tensor& weights,
                                                                       double rho, double kappa,
                                                                       double nu, double eps,
                                                                       int64_t stages);

// The baselines (methods.h): (alpha, coeffs, gap, skipped) as coefficients.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cagrad_coefficients(const at::Tensor& gram,
                                                                              const at::Tensor& weights,
                                                                              double rho, int64_t rescale);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mgda_coefficients(const at::Tensor& gram,
                                                                            const at::Tensor& weights,
                                                                            c10::string_view normalization);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pcgrad_coefficients(const at::Tensor& gram,
                                                                              const at::Tensor& weights,
                                                                              const at::Tensor& order,
                                                                              c10::string_view reduction);

// out = coeffs @ grads in grads' dtype; zeros when skip is given and true.
at::Tensor combine(const at::Tensor& grads, const at::Tensor& coeffs,
                   const std::optional<at::Tensor>& skip);
void combine_out(const at::Tensor& grads, const at::Tensor& coeffs,
                 const std::optional<at::Tensor>& skip, at::Tensor& out);

// gram -> coefficients -> combine: (update, gram, alpha, coeffs, gap, skipped).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> step(
    const at::Tensor& grads, const at::Tensor& weights, double rho, double kappa, double nu,
    double eps, int64_t stages);

}  // namespace cpu
}  // namespace camegrad
