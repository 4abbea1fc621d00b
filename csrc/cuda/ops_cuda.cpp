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
#include "deltaconv/tensor_views.h"

namespace deltaconv {
namespace {

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "deltaconv cuda: launching ", what, " failed: ", cudaGetErrorString(err));
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "deltaconv cuda: ", name, " must be a CUDA tensor, got device ", t.device());
}

// [K, K, Ci] -> [K * K][2][Chp] in the compute dtype, each channel half zero-padded (cuda_launchers.h);
// `flip` packs w[K-1-ky, K-1-kx] (the kernel of the transposed correlation).
at::Tensor pack_weight(const at::Tensor& w, at::ScalarType acc, bool flip) {
  const int64_t K = w.size(0), Ch = w.size(2) / 2;
  const int64_t Chp = cuda::packed_channels(kernel_dtype(acc, "cuda"), Ch);
  at::Tensor src = flip ? w.flip({0, 1}) : w;
  return at::constant_pad_nd(src.to(acc).reshape({K * K, 2, Ch}), {0, Chp - Ch}).contiguous();
}

at::Tensor workspace(int64_t bytes, const at::Tensor& like) {
  return at::empty({bytes > 0 ? bytes : 1}, like.options().dtype(at::kByte));
}

at::Tensor pyramid_forward_cuda(const at::Tensor& u_in, at::TensorList weights, at::ArrayRef<double> scales,
                                bool sigmoid_gate, double gate_scale) {
  check_cuda(u_in, "u");
  check_pyramid_args(u_in, weights, scales, "cuda");
  const c10::cuda::CUDAGuard guard(u_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const at::Tensor u = unit_channel_stride(u_in);
  const auto acc = compute_dtype(u.scalar_type());
  const DType dt = kernel_dtype(u.scalar_type(), "cuda");
  const int64_t B = u.size(0), H = u.size(1), W = u.size(2), Ci = u.size(3), Ch = Ci / 2;
  const auto S = static_cast<int64_t>(weights.size());
  at::Tensor out = at::empty({B, H, W, Ch * S}, u.options());
  const View4 uv = view4(u), ov = view4(out);
  for (int64_t i = 0; i < S; ++i) {
    const at::Tensor wp = pack_weight(weights[i], acc, false);
    const int64_t K = weights[i].size(0), Chp = wp.size(2);
    if (scales[i] == 1.0) {
      check(cuda::conv_gate(dt, uv, wp.data_ptr(), K, Chp, ov, i * Ch, false, sigmoid_gate, gate_scale, stream),
            "conv_gate");
      continue;
    }
    const int64_t h = pooled_size(H, scales[i]), wd = pooled_size(W, scales[i]);
    at::Tensor P = at::empty({B, h, wd, Ci}, u.options().dtype(acc));
    at::Tensor Z = at::empty({B, h, wd, Ch}, u.options().dtype(acc));
    check(cuda::pool(dt, uv, h, wd, P.data_ptr(), stream), "pool");
    check(cuda::conv_gate(dt, view4(P), wp.data_ptr(), K, Chp, view4(Z), 0, true, sigmoid_gate, gate_scale, stream),
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
  const DType dt = kernel_dtype(u.scalar_type(), "cuda");
  const int64_t B = u.size(0), H = u.size(1), W = u.size(2), Ci = u.size(3), Ch = Ci / 2;
  const View4 uv = view4(u), gv = view4(g);
  at::Tensor GU = at::zeros({B, H, W, Ci}, u.options().dtype(acc));
  std::vector<at::Tensor> result{at::Tensor()};
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor wp = pack_weight(weights[i], acc, false), wf = pack_weight(weights[i], acc, true);
    const int64_t K = weights[i].size(0), Chp = wp.size(2), off = static_cast<int64_t>(i) * Ch;
    at::Tensor gw = at::empty({K, K, Ci}, u.options().dtype(acc));
    const bool full = scales[i] == 1.0;
    const int64_t h = full ? H : pooled_size(H, scales[i]), wd = full ? W : pooled_size(W, scales[i]);
    at::Tensor P, GZ;
    if (!full) {
      P = at::empty({B, h, wd, Ci}, u.options().dtype(acc));
      GZ = at::empty({B, h, wd, Ch}, u.options().dtype(acc));
      check(cuda::pool(dt, uv, h, wd, P.data_ptr(), stream), "pool");
      check(cuda::upsample_backward(dt, gv, off, Ch, h, wd, GZ.data_ptr(), stream), "upsample_backward");
    }
    const View4 sv = full ? uv : view4(P);  // the stage input
    at::Tensor GD = at::empty({B, h, wd, Ci}, u.options().dtype(acc));
    check(cuda::gate_backward(dt, sv, wp.data_ptr(), K, Chp, full ? gv : view4(GZ), full ? off : 0, !full,
                              GD.data_ptr(), sigmoid_gate, gate_scale, stream), "gate_backward");
    at::Tensor gP = full ? GU : at::zeros({B, h, wd, Ci}, u.options().dtype(acc));
    check(cuda::conv_transpose_add(dt, GD.data_ptr(), B, h, wd, Ci, wf.data_ptr(), K, Chp, gP.data_ptr(), stream),
          "conv_transpose_add");
    if (!full) {
      check(cuda::pool_backward_add(dt, gP.data_ptr(), B, h, wd, Ci, H, W, GU.data_ptr(), stream), "pool_backward_add");
    }
    at::Tensor ws = workspace(cuda::weight_grad_workspace_bytes(dt, sv, K), u);
    check(cuda::weight_grad(dt, sv, !full, GD.data_ptr(), K, ws.data_ptr(), gw.data_ptr(), stream), "weight_grad");
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
  const View4 xv = view4(x);
  const DType dt = kernel_dtype(x.scalar_type(), "cuda");
  at::Tensor ws = workspace(cuda::spatial_mean_workspace_bytes(dt, xv), x);
  check(cuda::spatial_mean(dt, xv, ws.data_ptr(), mean.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
        "spatial_mean");
  return at::addmm(bias.to(acc), mean, weight.to(acc).t()).to(x.scalar_type());
}

}  // namespace
}  // namespace deltaconv

TORCH_LIBRARY_IMPL(deltaconv_C, CUDA, m) {
  m.impl("pyramid_forward", &deltaconv::pyramid_forward_cuda);
  m.impl("pyramid_backward", &deltaconv::pyramid_backward_cuda);
  m.impl("pooled_bias", &deltaconv::pooled_bias_cuda);
}
