// CPU implementations of the deltaconv_C ops: argument checks, dtype handling and the calls into the
// vectorised kernels (csrc/cpu/kernels.cpp, in the instruction set csrc/cpu/capability.cpp picks per call).
// The GEMM of the pooled bias stays in ATen (oneDNN / MKL).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "deltaconv/checks.h"
#include "deltaconv/cpu_kernels.h"
#include "deltaconv/tensor_views.h"

namespace deltaconv {
namespace {

struct PreparedStages {
  std::vector<at::Tensor> weights;  // compute dtype, contiguous
  std::vector<cpu::Stage> stages;
};

PreparedStages prepare_stages(const at::Tensor& u, at::TensorList weights, at::ArrayRef<double> scales,
                              at::ScalarType acc) {
  PreparedStages p;
  for (size_t i = 0; i < weights.size(); ++i) {
    p.weights.push_back(weights[i].to(acc).contiguous());
    cpu::Stage s;
    s.scale = scales[i];
    s.K = weights[i].size(0);
    s.weight = p.weights.back().data_ptr();
    p.stages.push_back(s);
  }
  return p;
}

at::Tensor pyramid_forward_cpu(const at::Tensor& u_in, at::TensorList weights, at::ArrayRef<double> scales,
                               bool sigmoid_gate, double gate_scale) {
  check_pyramid_args(u_in, weights, scales, "cpu");
  const at::Tensor u = unit_channel_stride(u_in);
  const auto acc = compute_dtype(u.scalar_type());
  PreparedStages p = prepare_stages(u, weights, scales, acc);
  const int64_t S = static_cast<int64_t>(weights.size());
  at::Tensor out = at::empty({u.size(0), u.size(1), u.size(2), u.size(3) / 2 * S}, u.options());
  cpu::PyramidArgs a;
  a.dtype = kernel_dtype(u.scalar_type(), "cpu");
  a.u = view4(u);
  a.out = view4(out);
  a.stages = p.stages.data();
  a.num_stages = S;
  a.sigmoid_gate = sigmoid_gate;
  a.gate_scale = gate_scale;
  cpu::pyramid_forward(a);
  return out;
}

std::vector<at::Tensor> pyramid_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& u_in,
                                             at::TensorList weights, at::ArrayRef<double> scales, bool sigmoid_gate,
                                             double gate_scale) {
  check_pyramid_args(u_in, weights, scales, "cpu");
  check_grad_out(grad_out_in, u_in, static_cast<int64_t>(weights.size()));
  const at::Tensor u = unit_channel_stride(u_in);
  const at::Tensor grad_out = unit_channel_stride(grad_out_in);
  const auto acc = compute_dtype(u.scalar_type());
  PreparedStages p = prepare_stages(u, weights, scales, acc);
  std::vector<at::Tensor> grad_w;
  for (size_t i = 0; i < weights.size(); ++i) {
    grad_w.push_back(at::empty(weights[i].sizes(), u.options().dtype(acc)));
    p.stages[i].grad_weight = grad_w.back().data_ptr();
  }
  at::Tensor grad_u = at::empty(u.sizes(), u.options().memory_format(at::MemoryFormat::Contiguous));
  cpu::PyramidArgs a;
  a.dtype = kernel_dtype(u.scalar_type(), "cpu");
  a.u = view4(u);
  a.out = view4(grad_out);
  a.grad_u = view4(grad_u);
  a.stages = p.stages.data();
  a.num_stages = static_cast<int64_t>(weights.size());
  a.sigmoid_gate = sigmoid_gate;
  a.gate_scale = gate_scale;
  cpu::pyramid_backward(a);
  std::vector<at::Tensor> result{grad_u};
  for (size_t i = 0; i < weights.size(); ++i) result.push_back(grad_w[i].to(weights[i].scalar_type()));
  return result;
}

at::Tensor pooled_bias_cpu(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias) {
  check_pooled_bias_args(x_in, weight, bias, "cpu");
  const at::Tensor x = unit_channel_stride(x_in);
  const auto acc = compute_dtype(x.scalar_type());
  at::Tensor mean = at::empty({x.size(0), x.size(3)}, x.options().dtype(acc));
  cpu::spatial_mean(kernel_dtype(x.scalar_type(), "cpu"), view4(x), mean.data_ptr());
  return at::addmm(bias.to(acc), mean, weight.to(acc).t()).to(x.scalar_type());
}

}  // namespace
}  // namespace deltaconv

TORCH_LIBRARY_IMPL(deltaconv_C, CPU, m) {
  m.impl("pyramid_forward", &deltaconv::pyramid_forward_cpu);
  m.impl("pyramid_backward", &deltaconv::pyramid_backward_cpu);
  m.impl("pooled_bias", &deltaconv::pooled_bias_cpu);
}
