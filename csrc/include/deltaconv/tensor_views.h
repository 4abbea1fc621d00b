// Torch tensors -> the plain kernel descriptions of views.h: the one conversion the CPU and CUDA bindings
// (csrc/cpu/ops_cpu.cpp, csrc/cuda/ops_cuda.cpp) share. Kernel sources include views.h only.
#pragma once

#include <ATen/ATen.h>

#include "deltaconv/views.h"

namespace deltaconv {

inline DType kernel_dtype(at::ScalarType t, const char* backend) {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    case at::kDouble: return DType::f64;
    default: TORCH_CHECK(false, "deltaconv ", backend, ": unsupported dtype ", t);
  }
  return DType::f32;
}

// A [B, H, W, C] tensor with unit channel stride (checks.h unit_channel_stride) as a View4.
inline View4 view4(const at::Tensor& t) {
  View4 v;
  v.data = t.data_ptr();
  v.B = t.size(0); v.H = t.size(1); v.W = t.size(2); v.C = t.size(3);
  v.sB = t.stride(0); v.sH = t.stride(1); v.sW = t.stride(2);
  return v;
}

}  // namespace deltaconv
