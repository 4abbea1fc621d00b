// deltaconv::build_info(): what this build of the extension contains (read by deltaconv_kernels/ops/extension.py).
#include "deltaconv/build_info.h"

#include "deltaconv/cpu_kernels.h"

namespace deltaconv {

std::string build_info() {
  std::string s = "cpu_compiled=" + cpu::compiled_capabilities() + " cpu_runnable=" + cpu::runnable_capabilities();
#if defined(DELTACONV_WITH_CUDA)
  s += std::string(" cuda=1 cuda_archs=") + cuda::compiled_archs();
#else
  s += " cuda=0 cuda_archs=-";
#endif
  return s;
}

}  // namespace deltaconv
