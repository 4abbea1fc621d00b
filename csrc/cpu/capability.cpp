// The one run-time choice of the CPU kernels' instruction set. csrc/cpu/isa.def lists the instruction sets and
// the CPU features each needs; each per-ISA copy of the kernels defines its table deltaconv::cpu::<ISA>::kernels
// (referred to weakly here: null when that ISA was not compiled in), and every call runs
//   - the ISA $DELTACONV_CPU_CAPABILITY names (default|avx2|avx512|avx512bf16, any case), read at each call; naming one
//     that is not compiled in or that this CPU lacks is an error naming the variable, never a fallback;
//   - else the highest compiled ISA whose features this CPU (and its OS) supports.
// This file is compiled without any ISA flags, so it runs on every CPU of the target.
#include <c10/util/Exception.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <string_view>

#include "deltaconv/cpu_kernels.h"

namespace deltaconv::cpu {
namespace {

struct Isa {
  const char* name;
  const char* features;    // comma-separated, as written in isa.def
  const Kernels* kernels;  // null when this ISA was not compiled in
};

}  // namespace

#define DELTACONV_ISA_SOURCE(file)
#define DELTACONV_ISA(name, ...) \
  namespace name {               \
  extern const Kernels kernels __attribute__((weak, visibility("hidden"))); \
  }
#include "isa.def"
#undef DELTACONV_ISA

namespace {

#define DELTACONV_ISA(name, ...) Isa{#name, #__VA_ARGS__, &name::kernels},
const Isa isas[] = {
#include "isa.def"
};
#undef DELTACONV_ISA
#undef DELTACONV_ISA_SOURCE

bool cpu_has(std::string_view feature) {
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports takes string literals only; it also checks that the OS saves the vector state.
  if (feature == "avx2") return __builtin_cpu_supports("avx2");
  if (feature == "fma") return __builtin_cpu_supports("fma");
  if (feature == "f16c") return __builtin_cpu_supports("f16c");
  if (feature == "avx512f") return __builtin_cpu_supports("avx512f");
  if (feature == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (feature == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (feature == "avx512dq") return __builtin_cpu_supports("avx512dq");
  if (feature == "avx512bf16") return __builtin_cpu_supports("avx512bf16");
#endif
  TORCH_CHECK(false, "deltaconv cpu: csrc/cpu/isa.def names the CPU feature '", feature,
              "', which csrc/cpu/capability.cpp cannot detect on this target");
}

// The features of `isa` this CPU lacks, comma-separated ("" when it can run it).
std::string missing_features(const Isa& isa) {
  std::string missing;
  std::string_view rest(isa.features);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    std::string_view f = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    while (!f.empty() && f.front() == ' ') f.remove_prefix(1);
    while (!f.empty() && f.back() == ' ') f.remove_suffix(1);
    if (!f.empty() && !cpu_has(f)) missing += (missing.empty() ? "" : ",") + std::string(f);
  }
  return missing;
}

bool compiled(const Isa& isa) { return isa.kernels != nullptr; }

std::string names(bool (*keep)(const Isa&)) {
  std::string s;
  for (const Isa& isa : isas) {
    if (keep(isa)) s += (s.empty() ? "" : ",") + std::string(isa.name);
  }
  return s;
}

bool runnable(const Isa& isa) { return compiled(isa) && missing_features(isa).empty(); }

const Isa& best() {
  static const Isa* chosen = [] {
    const Isa* b = nullptr;
    for (const Isa& isa : isas) {
      if (runnable(isa)) b = &isa;
    }
    return b;
  }();
  TORCH_CHECK(chosen != nullptr, "deltaconv cpu: no CPU kernels that this CPU can run were compiled in (compiled: ",
              names(compiled), ")");
  return *chosen;
}

const Isa& chosen() {
  const char* env = std::getenv("DELTACONV_CPU_CAPABILITY");
  if (env == nullptr || *env == '\0') return best();
  std::string want(env);
  for (char& c : want) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const Isa& isa : isas) {
    if (want != isa.name) continue;
    TORCH_CHECK(compiled(isa), "DELTACONV_CPU_CAPABILITY=", env, ": this build of deltaconv_kernels._C has no ",
                isa.name, " kernels (it has ", names(compiled), ")");
    const std::string missing = missing_features(isa);
    TORCH_CHECK(missing.empty(), "DELTACONV_CPU_CAPABILITY=", env, ": this CPU lacks ", missing, ", which the ",
                isa.name, " kernels need (it can run ", names(runnable), ")");
    return isa;
  }
  std::string all;
  for (const Isa& isa : isas) {
    std::string lower(isa.name);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    all += (all.empty() ? "" : ", ") + lower;
  }
  TORCH_CHECK(false, "DELTACONV_CPU_CAPABILITY must be one of ", all, " (or unset for the best this CPU runs), got '",
              env, "'");
}

}  // namespace

std::string chosen_capability() { return chosen().name; }
std::string compiled_capabilities() { return names(compiled); }
std::string runnable_capabilities() { return names(runnable); }

void pyramid_forward(const PyramidArgs& args) { chosen().kernels->pyramid_forward(args); }
void pyramid_backward(const PyramidArgs& args) { chosen().kernels->pyramid_backward(args); }
void spatial_mean(DType dtype, const View4& x, void* mean) { chosen().kernels->spatial_mean(dtype, x, mean); }

}  // namespace deltaconv::cpu
