// A one-line description of the build, assembled from the parts that were compiled in (csrc/build_info.cpp).
#pragma once

#include <string>

namespace deltaconv {

// "cpu_compiled=<ISA,...> cpu_runnable=<ISA,...> cuda=<0|1> cuda_archs=<arch,...|->": the instruction sets
// the CPU kernels were compiled for and those this CPU can run (csrc/cpu/isa.def, lowest first), and whether
// the CUDA kernels were compiled and for which architectures (nvcc's __CUDA_ARCH_LIST__, e.g. 800,900).
std::string build_info();

namespace cuda {
// __CUDA_ARCH_LIST__ of the CUDA kernels, e.g. "800,900" (csrc/cuda/arch_list.cu; CUDA builds only).
const char* compiled_archs();
}  // namespace cuda

}  // namespace deltaconv
