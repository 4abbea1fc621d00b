// CUDA implementations of the deltaconv_C ops: checks, compute-dtype work buffers (through the caching
// allocator) and the per-stage sequence of kernel launches on the current stream (csrc/cuda/*.cu).
// Compiled only when the extension is built with CUDA (setup.py / CMake decide).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "deltaconv/checks.h"
#include "deltaconv/cuda_launchers.h"
#include "deltaconv/geometry.h"

namespace deltaconv {
namespace {

DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    case at::kDouble: return DType::f64;
    default: TORCH_CHECK(false, "deltaconv cuda: unsupported dtype ", t);
  }
  return DType::f32;
}

View4 view4(const at::Tensor& t) {
  View4 v;
  v.data = t.data_ptr();
  v.B = t.size(0); v.H = t.size(1); v.W = t.size(2); v.C = t.size(3);
  v.sB = t.stride(0); v.sH = t.stride(1); v.sW = t.stride(2);
  return v;
}

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "deltaconv cuda: launching ", what, " failed: ", cudaGetErrorString(err));
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "deltaconv cuda: ", name, " must be a CUDA tensor, got device ", t.device());
}

at::Tensor pyramid_forward_cuda(const at::Tensor& u_in, at::TensorList weights, at::ArrayRef<double> scales,
                                bool sigmoid_gate, double gate_scale) {
  check_cuda(u_in, "u");
  check_pyramid_args(u_in, weights, scales, "cuda");
  const c10::cuda::CUDAGuard guard(u_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor u = unit_channel_stride(u_in);
  const auto acc = compute_dtype(u.scalar_type());
  const DType dt = kernel_dtype(u.scalar_type());
  const int64_t B = u.size(0), H = u.size(1), W = u.size(2), Ci = u.size(3), Ch = Ci / 2;
  const auto S = static_cast<int64_t>(weights.size());
  at::Tensor out = at::empty({B, H, W, Ch * S}, u.options());
  const View4 uv = view4(u), ov = view4(out);
  for (int64_t i = 0; i < S; ++i) {
    const at::Tensor w = weights[i].to(acc).contiguous();
    const int64_t K = w.size(0);
    if (scales[i] == 1.0) {
      check(cuda::conv_gate(dt, uv, false, w.data_ptr(), K, ov, false, i * Ch, sigmoid_gate, gate_scale, stream),
            "conv_gate");
      continue;
    }
    const int64_t h = pooled_size(H, scales[i]), wd = pooled_size(W, scales[i]);
    at::Tensor P = at::empty({B, h, wd, Ci}, u.options().dtype(acc));
    at::Tensor Z = at::empty({B, h, wd, Ch}, u.options().dtype(acc));
    check(cuda::pool(dt, uv, h, wd, P.data_ptr(), stream), "pool");
    check(cuda::conv_gate(dt, view4(P), true, w.data_ptr(), K, view4(Z), true, 0, sigmoid_gate, gate_scale, stream),
          "conv_gate");
    check(cuda::upsample(dt, Z.data_ptr(), h, wd, Ch, ov, i * Ch, stream), "upsample");
  }
  return out;
}

std::vector<at::Tensor> pyramid_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& u_in,
                                              at::TensorList weights, at::ArrayRef<double> scales, bool sigmoid_gate,
                                              double gate_scale) {
  check_cuda(u_in, "u");
  check_pyramid_args(u_in, weights, scales, "cuda");
  check_grad_out(grad_out_in, u_in, static_cast<int64_t>(weights.size()));
  const c10::cuda::CUDAGuard guard(u_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor u = unit_channel_stride(u_in);
  const at::Tensor g = unit_channel_stride(grad_out_in);
  const auto acc = compute_dtype(u.scalar_type());
  const DType dt = kernel_dtype(u.scalar_type());
  const int64_t B = u.size(0), H = u.size(1), W = u.size(2), Ci = u.size(3), Ch = Ci / 2;
  const View4 uv = view4(u), gv = view4(g);
  at::Tensor GU = at::zeros({B, H, W, Ci}, u.options().dtype(acc));
  std::vector<at::Tensor> result{at::Tensor()};
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor w = weights[i].to(acc).contiguous();
    const int64_t K = w.size(0), off = static_cast<int64_t>(i) * Ch;
    at::Tensor gw = at::empty({K, K, Ci}, u.options().dtype(acc));
    if (scales[i] == 1.0) {
      at::Tensor GD = at::empty({B, H, W, Ci}, u.options().dtype(acc));
      check(cuda::gate_backward(dt, uv, false, w.data_ptr(), K, gv, false, off, GD.data_ptr(), sigmoid_gate,
                                gate_scale, stream), "gate_backward");
      check(cuda::conv_transpose_add(dt, GD.data_ptr(), B, H, W, Ci, w.data_ptr(), K, GU.data_ptr(), stream),
            "conv_transpose_add");
      check(cuda::weight_grad(dt, uv, false, GD.data_ptr(), K, gw.data_ptr(), stream), "weight_grad");
    } else {
      const int64_t h = pooled_size(H, scales[i]), wd = pooled_size(W, scales[i]);
      at::Tensor P = at::empty({B, h, wd, Ci}, u.options().dtype(acc));
      at::Tensor GZ = at::empty({B, h, wd, Ch}, u.options().dtype(acc));
      at::Tensor GD = at::empty({B, h, wd, Ci}, u.options().dtype(acc));
      at::Tensor gP = at::zeros({B, h, wd, Ci}, u.options().dtype(acc));
      const View4 pv = view4(P);
      check(cuda::pool(dt, uv, h, wd, P.data_ptr(), stream), "pool");
      check(cuda::upsample_backward(dt, gv, off, Ch, h, wd, GZ.data_ptr(), stream), "upsample_backward");
      check(cuda::gate_backward(dt, pv, true, w.data_ptr(), K, view4(GZ), true, 0, GD.data_ptr(), sigmoid_gate,
                                gate_scale, stream), "gate_backward");
      check(cuda::conv_transpose_add(dt, GD.data_ptr(), B, h, wd, Ci, w.data_ptr(), K, gP.data_ptr(), stream),
            "conv_transpose_add");
      check(cuda::pool_backward_add(dt, gP.data_ptr(), B, h, wd, Ci, H, W, GU.data_ptr(), stream),
            "pool_backward_add");
      check(cuda::weight_grad(dt, pv, true, GD.data_ptr(), K, gw.data_ptr(), stream), "weight_grad");
    }
    result.push_back(gw.to(weights[i].scalar_type()));
  }
  result[0] = GU.to(u.scalar_type());
  return result;
}

at::Tensor pooled_bias_cuda(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias) {
  check_cuda(x_in, "x");
  check_pooled_bias_args(x_in, weight, bias, "cuda");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = unit_channel_stride(x_in);
  const auto acc = compute_dtype(x.scalar_type());
  at::Tensor mean = at::empty({x.size(0), x.size(3)}, x.options().dtype(acc));
  check(cuda::spatial_mean(kernel_dtype(x.scalar_type()), view4(x), mean.data_ptr(),
                           c10::cuda::getCurrentCUDAStream().stream()), "spatial_mean");
  return at::addmm(bias.to(acc), mean, weight.to(acc).t()).to(x.scalar_type());
}

}  // namespace
}  // namespace deltaconv

TORCH_LIBRARY_IMPL(deltaconv_C, CUDA, m) {
  m.impl("pyramid_forward", &deltaconv::pyramid_forward_cuda);
  m.impl("pyramid_backward", &deltaconv::pyramid_backward_cuda);
  m.impl("pooled_bias", &deltaconv::pooled_bias_cuda);
}
