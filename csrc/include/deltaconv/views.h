// Plain descriptions of tensors handed from the torch bindings to the kernels (CPU and CUDA), so the
// kernel sources need no torch headers.
#pragma once

#include <cstdint>

namespace deltaconv {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

// A channels-last [B, H, W, C] view with unit channel stride; strides are in elements (64-bit).
struct View4 {
  void* data = nullptr;
  int64_t B = 0, H = 0, W = 0, C = 0;
  int64_t sB = 0, sH = 0, sW = 0;
};

// A contiguous [B, H, W, C] view of `data`.
inline View4 contiguous_view(void* data, int64_t B, int64_t H, int64_t W, int64_t C) {
  View4 v;
  v.data = data;
  v.B = B; v.H = H; v.W = W; v.C = C;
  v.sW = C; v.sH = W * C; v.sB = H * W * C;
  return v;
}

}  // namespace deltaconv
