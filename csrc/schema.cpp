// The one schema file: every op of the deltaconv_C library, and the Python module entry point of `_C`.
// Implementations register per dispatch key in csrc/cpu/ops_cpu.cpp (CPU) and csrc/cuda/ops_cuda.cpp (CUDA).
#include <torch/library.h>

#include <string>

#include "deltaconv/build_info.h"
#include "deltaconv/cpu_kernels.h"

TORCH_LIBRARY(deltaconv_C, m) {
  // All pyramid stages, concatenated: u [B, H, W, Ci] -> [B, H, W, Ci/2 * S] in u's dtype.
  m.def("pyramid_forward(Tensor u, Tensor[] weights, float[] scales, bool sigmoid_gate, float gate_scale) -> Tensor");
  // [grad_u, grad_w_0, ..., grad_w_{S-1}]; grad_out may be any strided view with unit channel stride.
  m.def("pyramid_backward(Tensor grad_out, Tensor u, Tensor[] weights, float[] scales, bool sigmoid_gate, "
        "float gate_scale) -> Tensor[]");
  // weight @ mean_{H,W}(x) + bias, x [B, H, W, C] -> [B, C] in x's dtype.
  m.def("pooled_bias(Tensor x, Tensor weight, Tensor bias) -> Tensor");
  // What this build contains (deltaconv/build_info.h), read by deltaconv_kernels/ops/extension.py.
  m.def("build_info() -> str", []() -> std::string { return deltaconv::build_info(); });
  // The instruction set the next CPU call runs (csrc/cpu/capability.cpp); raises on a bad DELTACONV_CPU_CAPABILITY.
  m.def("cpu_capability() -> str", []() -> std::string { return deltaconv::cpu::chosen_capability(); });
}

#if defined(DELTACONV_PYTHON_MODULE)
#include <Python.h>

// `import deltaconv_kernels._C` loads this library, which registers the ops above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "deltaconv_kernels C++/CUDA ops (torch.ops.deltaconv_C)",
                                          -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
#endif
