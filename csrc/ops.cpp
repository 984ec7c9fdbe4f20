// The camegrad operator library: schemas only. Kernels register per device
// (csrc/cpu/register.cpp here; csrc/cuda in camegrad_kernels._cuda), and the
// fake kernels for tracing live in camegrad_kernels/ops.py.
#include <Python.h>
#include <torch/library.h>

// An empty Python module, so that `import camegrad_kernels._C` loads this
// shared library and runs its static registrations (no pybind11 needed).
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(camegrad, m) {
  m.def("gram(Tensor grads) -> Tensor");
  m.def(
      "coefficients(Tensor gram, Tensor weights, float rho, float kappa, float nu, float eps, "
      "int stages) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("combine(Tensor grads, Tensor coeffs, Tensor? skip=None) -> Tensor");
  m.def("combine_out(Tensor grads, Tensor coeffs, Tensor? skip, Tensor(a!) out) -> ()");
  // The baselines of camegrad_kernels/methods/ (same results, same returns).
  m.def(
      "cagrad_coefficients(Tensor gram, Tensor weights, float rho, int rescale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "mgda_coefficients(Tensor gram, Tensor weights, str normalization) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pcgrad_coefficients(Tensor gram, Tensor weights, Tensor order, str reduction) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "step(Tensor grads, Tensor weights, float rho, float kappa, float nu, float eps, int stages) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
