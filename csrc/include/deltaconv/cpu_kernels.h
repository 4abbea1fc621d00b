// Interface of the CPU kernels (csrc/cpu/kernels.cpp): raw pointers, sizes and strides, no torch types,
// so the vectorised translation unit stays small and the binding (csrc/cpu/ops_cpu.cpp) does all checks.
// kernels.cpp is compiled once per instruction set of csrc/cpu/isa.def; the entry points below run the
// instruction set chosen for the call (csrc/cpu/capability.cpp).
#pragma once

#include <cstdint>
#include <string>

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

// The instruction set the next call runs (raises, naming $DELTACONV_CPU_CAPABILITY, when that variable names
// one this build or this CPU cannot run), and the compiled / runnable ones, lowest first ("DEFAULT,AVX2").
std::string chosen_capability();
std::string compiled_capabilities();
std::string runnable_capabilities();

// One instruction set's entry points (the functions above, compiled for that ISA).
struct Kernels {
  void (*pyramid_forward)(const PyramidArgs&) = nullptr;
  void (*pyramid_backward)(const PyramidArgs&) = nullptr;
  void (*spatial_mean)(DType, const View4&, void*) = nullptr;
};

}  // namespace deltaconv::cpu

// At the end of a per-ISA source, inside namespace deltaconv::cpu::CPU_CAPABILITY: defines that ISA's table
// deltaconv::cpu::<ISA>::kernels, e.g. DELTACONV_REGISTER_CPU_KERNELS(&pyramid_forward, &pyramid_backward,
// &spatial_mean). It is constant-initialised: a per-ISA file must run no code when the library loads (that code
// would carry the ISA's instructions onto every CPU). csrc/cpu/capability.cpp refers to each ISA's table weakly,
// so an ISA that was not compiled in has none.
#define DELTACONV_REGISTER_CPU_KERNELS(...)                                                          \
  extern const ::deltaconv::cpu::Kernels kernels __attribute__((visibility("hidden")));              \
  constinit const ::deltaconv::cpu::Kernels kernels{__VA_ARGS__}
