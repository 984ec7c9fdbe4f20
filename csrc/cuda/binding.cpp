// The torch side of the CUDA backend: checks, allocation through torch (its
// caching allocator, so workspaces cost no cudaMalloc and are stream ordered),
// the current stream, dtype dispatch, and the registration of the kernels for
// the camegrad ops (schemas in csrc/ops.cpp). Nothing here waits for the GPU.
#include <Python.h>  // first, as Python asks

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "camegrad_cuda.cuh"

// An empty Python module, so that `import camegrad_kernels._cuda` loads this
// library and runs its static registrations (as camegrad_kernels._C does).
PyMODINIT_FUNC PyInit__cuda(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT, "_cuda", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}

namespace camegrad {
namespace cuda {
namespace {

at::ScalarType accumulate_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Calls f with a value of the kernels' element type for a gradient dtype.
template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kHalf:
      return f(__half{});
    case at::kBFloat16:
      return f(__nv_bfloat16{});
    case at::kFloat:
      return f(float{});
    case at::kDouble:
      return f(double{});
    default:
      TORCH_CHECK(false, "camegrad: gradients must be float16, bfloat16, float32 or float64, got ", t);
  }
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

void check_grads(const at::Tensor& grads) {
  TORCH_CHECK(grads.is_cuda(), "camegrad: grads must be a CUDA tensor");
  TORCH_CHECK(grads.dim() == 2, "camegrad: grads must be [n_tasks, d], got ", grads.sizes());
}

// M in double (gram_t) for every gradient dtype; the solvers then return double.
at::Tensor gram_impl(const at::Tensor& g) {  // g: contiguous
  const int64_t n = g.size(0), d = g.size(1);
  TORCH_CHECK(n >= 1 && n <= kGramMaxN, "camegrad (cuda): gram supports 1 to ", kGramMaxN, " tasks, got ", n);
  const auto options = g.options().dtype(at::kDouble);
  at::Tensor M = at::empty({n, n}, options);
  dispatch(g.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    at::Tensor workspace = at::empty({int64_t(gram_workspace_elems<T>(n, d))}, options);
    C10_CUDA_CHECK(launch_gram(static_cast<const T*>(g.const_data_ptr()), n, d,
                               workspace.mutable_data_ptr<gram_t>(), M.mutable_data_ptr<gram_t>(),
                               current_stream()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return M;
}

void combine_impl(const at::Tensor& g, const at::Tensor& coeffs, const std::optional<at::Tensor>& skip,
                  at::Tensor& out) {  // g: contiguous
  const int64_t n = g.size(0), d = g.size(1);
  TORCH_CHECK(n >= 1 && n <= kCombineMaxN, "camegrad (cuda): combine supports 1 to ", kCombineMaxN,
              " tasks, got ", n);
  TORCH_CHECK(coeffs.numel() == n, "camegrad: coeffs must have ", n, " entries, got ", coeffs.numel());
  TORCH_CHECK(out.device() == g.device() && out.dim() == 1 && out.size(0) == d, "camegrad: out must be a [",
              d, "] tensor on ", g.device());
  const at::ScalarType acc = accumulate_type(g.scalar_type());
  const at::Tensor c = coeffs.to(g.device(), acc).contiguous();
  at::Tensor flag;
  if (skip.has_value() && skip->defined()) {
    flag = skip->to(g.device(), at::kBool).contiguous();
    TORCH_CHECK(flag.numel() == 1, "camegrad: skip must hold one value");
  }
  const uint8_t* skip_ptr = flag.defined() ? static_cast<const uint8_t*>(flag.const_data_ptr()) : nullptr;
  // Written in place when out is contiguous in grads' or the accumulation
  // dtype; otherwise accumulated in acc and copied (one rounding, like the reference).
  const bool direct =
      out.is_contiguous() && (out.scalar_type() == g.scalar_type() || out.scalar_type() == acc);
  at::Tensor dst = direct ? out : at::empty({d}, g.options().dtype(acc));
  dispatch(g.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* G = static_cast<const T*>(g.const_data_ptr());
    if (dst.scalar_type() == g.scalar_type())
      C10_CUDA_CHECK(launch_combine(G, n, d, c.const_data_ptr<A>(), skip_ptr,
                                    static_cast<T*>(dst.mutable_data_ptr()), current_stream()));
    else
      C10_CUDA_CHECK(launch_combine(G, n, d, c.const_data_ptr<A>(), skip_ptr, dst.mutable_data_ptr<A>(),
                                    current_stream()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!direct) out.copy_(dst);
}

at::Tensor gram(const at::Tensor& grads) {
  check_grads(grads);
  const c10::cuda::CUDAGuard guard(grads.device());
  return gram_impl(grads.contiguous());
}

using Solved = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // alpha, coeffs, gap, skipped

// The checks of the one-block solver ops; returns n.
int64_t check_solver_inputs(const at::Tensor& gram, const at::Tensor& weights) {
  TORCH_CHECK(gram.is_cuda(), "camegrad: gram must be a CUDA tensor");
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == gram.size(1), "camegrad: gram must be square, got ",
              gram.sizes());
  TORCH_CHECK(gram.scalar_type() == at::kFloat || gram.scalar_type() == at::kDouble,
              "camegrad: gram must be float32 or float64, got ", gram.scalar_type());
  const int64_t n = gram.size(0);
  TORCH_CHECK(n >= 1 && n <= kSolveMaxN, "camegrad (cuda): the solver supports 1 to ", kSolveMaxN,
              " tasks, got ", n);
  TORCH_CHECK(weights.numel() == n, "camegrad: weights must have ", n, " entries, got ", weights.numel());
  return n;
}

// Runs launch(M, w, n, alpha, coeffs, gap, skipped, stream), a launcher of
// camegrad_cuda.cuh with its options bound, on gram (contiguous) and weights
// (in gram's dtype and on its device); returns the outputs it wrote.
template <typename F>
Solved solve(const at::Tensor& gram, const at::Tensor& weights, int64_t n, F&& launch) {
  const c10::cuda::CUDAGuard guard(gram.device());
  const at::Tensor M = gram.contiguous();
  const at::Tensor w = weights.to(M.device(), M.scalar_type()).contiguous();
  at::Tensor alpha = at::empty({n}, M.options());
  at::Tensor coeffs = at::empty({n}, M.options());
  at::Tensor gap = at::empty({}, M.options());
  at::Tensor skipped = at::empty({}, M.options().dtype(at::kBool));
  auto run = [&](auto tag) {
    using A = decltype(tag);
    C10_CUDA_CHECK(launch(M.const_data_ptr<A>(), w.const_data_ptr<A>(), n, alpha.mutable_data_ptr<A>(),
                          coeffs.mutable_data_ptr<A>(), gap.mutable_data_ptr<A>(),
                          static_cast<uint8_t*>(skipped.mutable_data_ptr()), current_stream()));
  };
  if (M.scalar_type() == at::kDouble)
    run(double{});
  else
    run(float{});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {alpha, coeffs, gap, skipped};
}

Solved coefficients(const at::Tensor& gram, const at::Tensor& weights, double rho, double kappa, double nu,
                    double eps, int64_t stages) {
  const int64_t n = check_solver_inputs(gram, weights);
  return solve(gram, weights, n, [&](auto M, auto w, int64_t n_, auto... out) {
    return launch_solve(M, w, n_, rho, kappa, nu, eps, int(stages), out...);
  });
}

Solved cagrad_coefficients(const at::Tensor& gram, const at::Tensor& weights, double rho, int64_t rescale) {
  const int64_t n = check_solver_inputs(gram, weights);
  TORCH_CHECK(rescale >= 0 && rescale <= 2, "camegrad: rescale must be 0, 1 or 2, got ", rescale);
  return solve(gram, weights, n, [&](auto M, auto w, int64_t n_, auto... out) {
    return launch_cagrad(M, w, n_, rho, int(rescale), out...);
  });
}

Solved mgda_coefficients(const at::Tensor& gram, const at::Tensor& weights, c10::string_view normalization) {
  const int64_t n = check_solver_inputs(gram, weights);
  TORCH_CHECK(normalization == "none" || normalization == "l2",
              "camegrad: normalization must be 'none' or 'l2', got '", normalization, "'");
  const bool l2 = normalization == "l2";
  return solve(gram, weights, n,
               [&](auto M, auto w, int64_t n_, auto... out) { return launch_mgda(M, w, n_, l2, out...); });
}

Solved pcgrad_coefficients(const at::Tensor& gram, const at::Tensor& weights, const at::Tensor& order,
                           c10::string_view reduction) {
  const int64_t n = check_solver_inputs(gram, weights);
  TORCH_CHECK(
      order.dim() == 2 && order.size(0) == n && order.size(1) == n && order.scalar_type() == at::kLong,
      "camegrad: order must be an int64 [", n, ", ", n, "] tensor, got ", order.scalar_type(), " ",
      order.sizes());
  TORCH_CHECK(order.device() == gram.device(), "camegrad: order must be on ", gram.device(), ", got ",
              order.device());
  TORCH_CHECK(reduction == "sum" || reduction == "mean", "camegrad: reduction must be 'sum' or 'mean', got '",
              reduction, "'");
  const bool mean = reduction == "mean";
  return solve(gram, weights, n, [&](auto M, auto w, int64_t n_, auto... out) {
    const at::Tensor o = order.contiguous();  // a copy (if any) is freed in stream order
    return launch_pcgrad(M, w, o.const_data_ptr<int64_t>(), n_, mean, out...);
  });
}

void combine_out(const at::Tensor& grads, const at::Tensor& coeffs, const std::optional<at::Tensor>& skip,
                 at::Tensor& out) {
  check_grads(grads);
  const c10::cuda::CUDAGuard guard(grads.device());
  combine_impl(grads.contiguous(), coeffs, skip, out);
}

at::Tensor combine(const at::Tensor& grads, const at::Tensor& coeffs, const std::optional<at::Tensor>& skip) {
  check_grads(grads);
  const c10::cuda::CUDAGuard guard(grads.device());
  at::Tensor out = at::empty({grads.size(1)}, grads.options());
  combine_impl(grads.contiguous(), coeffs, skip, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> step(
    const at::Tensor& grads, const at::Tensor& weights, double rho, double kappa, double nu, double eps,
    int64_t stages) {
  check_grads(grads);
  const c10::cuda::CUDAGuard guard(grads.device());
  const at::Tensor g = grads.contiguous();
  at::Tensor M = gram_impl(g);
  auto [alpha, coeffs, gap, skipped] = coefficients(M, weights, rho, kappa, nu, eps, stages);
  at::Tensor out = at::empty({g.size(1)}, g.options());
  combine_impl(g, coeffs, skipped, out);
  return {out, M, alpha, coeffs, gap, skipped};
}

}  // namespace

TORCH_LIBRARY_IMPL(camegrad, CUDA, m) {
  m.impl("gram", &gram);
  m.impl("coefficients", &coefficients);
  m.impl("cagrad_coefficients", &cagrad_coefficients);
  m.impl("mgda_coefficients", &mgda_coefficients);
  m.impl("pcgrad_coefficients", &pcgrad_coefficients);
  m.impl("combine", &combine);
  m.impl("combine_out", &combine_out);
  m.impl("step", &step);
}

}  // namespace cuda
}  // namespace camegrad
