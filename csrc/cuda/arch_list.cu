// The GPU architectures the CUDA kernels were compiled for, as nvcc reports them to host code.
#include "deltaconv/build_info.h"

#define DELTACONV_ARCHS_STR_(...) #__VA_ARGS__
#define DELTACONV_ARCHS_STR(...) DELTACONV_ARCHS_STR_(__VA_ARGS__)

namespace deltaconv::cuda {

#if !defined(__CUDA_ARCH_LIST__)
#error "deltaconv needs nvcc 11.5 or newer (for __CUDA_ARCH_LIST__)"
#endif

const char* compiled_archs() { return DELTACONV_ARCHS_STR(__CUDA_ARCH_LIST__); }

}  // namespace deltaconv::cuda
