// Argument checks shared by the CPU and CUDA bindings. The Python layer (validation.py) checks first;
// these guard direct torch.ops.deltaconv_C calls so bad input is an error naming the argument, never a crash.
#pragma once

#include <ATen/ATen.h>

namespace deltaconv {

inline at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// The kernels take any strides for B, H, W but need unit stride over channels.
inline at::Tensor unit_channel_stride(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

inline void check_pyramid_args(const at::Tensor& u, at::TensorList weights, at::ArrayRef<double> scales,
                               const char* backend) {
  TORCH_CHECK(u.dim() == 4, "deltaconv ", backend, ": u must be [B, H, W, Ci], got shape ", u.sizes());
  TORCH_CHECK(is_supported_float(u.scalar_type()), "deltaconv ", backend,
              ": u must be float32, float16, bfloat16 or float64, got ", u.scalar_type());
  const int64_t ci = u.size(3);
  TORCH_CHECK(ci >= 2 && ci % 2 == 0, "deltaconv ", backend, ": u must have an even channel count >= 2, got ", ci);
  TORCH_CHECK(u.size(0) >= 1 && u.size(1) >= 1 && u.size(2) >= 1, "deltaconv ", backend,
              ": u must have B, H, W >= 1, got shape ", u.sizes());
  TORCH_CHECK(!weights.empty(), "deltaconv ", backend, ": weights must hold one [K, K, Ci] kernel per stage");
  TORCH_CHECK(weights.size() == scales.size(), "deltaconv ", backend, ": got ", weights.size(), " weights but ",
              scales.size(), " scales");
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.dim() == 3 && w.size(0) == w.size(1) && w.size(0) % 2 == 1 && w.size(2) == ci, "deltaconv ",
                backend, ": weights[", i, "] must be [K, K, ", ci, "] with odd K, got shape ", w.sizes());
    TORCH_CHECK(is_supported_float(w.scalar_type()), "deltaconv ", backend, ": weights[", i,
                "] must have a floating dtype, got ", w.scalar_type());
    TORCH_CHECK(w.device() == u.device(), "deltaconv ", backend, ": weights[", i, "] is on ", w.device(),
                " but u is on ", u.device());
    const double s = scales[i];
    TORCH_CHECK(s > 0.0 && s <= 1.0, "deltaconv ", backend, ": scales[", i, "] must lie in (0, 1], got ", s);
  }
}

inline void check_grad_out(const at::Tensor& g, const at::Tensor& u, int64_t num_stages) {
  TORCH_CHECK(g.dim() == 4 && g.size(0) == u.size(0) && g.size(1) == u.size(1) && g.size(2) == u.size(2) &&
                  g.size(3) == u.size(3) / 2 * num_stages,
              "deltaconv: grad_out must be [B, H, W, Ci/2 * S] = [", u.size(0), ", ", u.size(1), ", ", u.size(2), ", ",
              u.size(3) / 2 * num_stages, "], got ", g.sizes());
  TORCH_CHECK(g.scalar_type() == u.scalar_type(), "deltaconv: grad_out has dtype ", g.scalar_type(),
              " but u has ", u.scalar_type());
  TORCH_CHECK(g.device() == u.device(), "deltaconv: grad_out is on ", g.device(), " but u is on ", u.device());
}

inline void check_pooled_bias_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   const char* backend) {
  TORCH_CHECK(x.dim() == 4 && x.size(0) >= 1 && x.size(1) >= 1 && x.size(2) >= 1 && x.size(3) >= 1, "deltaconv ",
              backend, ": x must be a non-empty [B, H, W, C], got shape ", x.sizes());
  TORCH_CHECK(is_supported_float(x.scalar_type()), "deltaconv ", backend,
              ": x must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(3), "deltaconv ", backend, ": weight must be [C_out, ",
              x.size(3), "], got shape ", weight.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "deltaconv ", backend, ": bias must be [",
              weight.size(0), "], got shape ", bias.sizes());
  TORCH_CHECK(weight.device() == x.device() && bias.device() == x.device(), "deltaconv ", backend,
              ": weight and bias must be on x's device ", x.device());
}

}  // namespace deltaconv
