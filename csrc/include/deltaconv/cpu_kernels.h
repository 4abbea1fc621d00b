// Interface of the CPU kernels (csrc/cpu/kernels.cpp): raw pointers, sizes and strides, no torch types,
// so the vectorised translation unit stays small and the binding (csrc/cpu/ops_cpu.cpp) does all checks.
#pragma once

#include <cstdint>

#include "deltaconv/views.h"

namespace deltaconv::cpu {

using deltaconv::DType;
using deltaconv::View4;

struct Stage {
  double scale = 1.0;
  int64_t K = 1;
  const void* weight = nullptr;  // [K, K, Ci] contiguous, compute dtype (fp32; fp64 for fp64 tensors)
  void* grad_weight = nullptr;   // backward only: [K, K, Ci] contiguous, compute dtype, overwritten
};

struct PyramidArgs {
  DType dtype = DType::f32;  // of u, out / grad_out and grad_u
  View4 u;                   // [B, H, W, Ci]
  View4 out;                 // forward: the concat output [B, H, W, Ci/2 * S]; backward: its gradient
  View4 grad_u;              // backward only: [B, H, W, Ci], overwritten
  const Stage* stages = nullptr;
  int64_t num_stages = 0;
  bool sigmoid_gate = false;
  double gate_scale = 1.0;
};

void pyramid_forward(const PyramidArgs& args);
void pyramid_backward(const PyramidArgs& args);
// mean over H, W of x, written to `mean` [B, C] in the compute dtype.
void spatial_mean(DType dtype, const View4& x, void* mean);

// The instruction set the kernels were compiled for: 0 = portable, 1 = AVX2+FMA, 2 = AVX-512.
int compiled_capability();

}  // namespace deltaconv::cpu
