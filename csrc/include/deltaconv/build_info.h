// A one-line description of the build, assembled from the parts that were compiled in.
#pragma once

#include <string>

namespace deltaconv {

// "cpu=<ISA> cpu_ok=<0|1> cuda=<0|1>": cpu_ok says whether this machine supports the ISA the CPU kernels
// were compiled for (defined in csrc/cpu/ops_cpu.cpp).
std::string build_info();

}  // namespace deltaconv
