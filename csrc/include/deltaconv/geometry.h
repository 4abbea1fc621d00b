// Index math of the pyramid stage, shared by the CPU and CUDA kernels (host and device).
// It mirrors deltaconv_kernels/reference.py exactly: adaptive-pool windows in integer math,
// bilinear (align_corners=False) taps with the source coordinate computed in double.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DELTACONV_HD __host__ __device__ inline
#else
#define DELTACONV_HD inline
#endif

namespace deltaconv {

// `max(1, int(size * scale))`, the pooled size of a stage along one axis (docs/DESIGN.md §1): the twin of
// deltaconv_kernels/geometry.py:pooled_size (tests/ops/test_thin_maps.py checks that the two agree).
DELTACONV_HD int64_t pooled_size(int64_t size, double scale) {
  const auto p = static_cast<int64_t>(static_cast<double>(size) * scale);
  return p < 1 ? 1 : p;
}

// Adaptive-pool window [start, end) of output index `o`: floor(o*in/out) .. ceil((o+1)*in/out).
DELTACONV_HD int64_t window_start(int64_t o, int64_t in, int64_t out) { return (o * in) / out; }
DELTACONV_HD int64_t window_end(int64_t o, int64_t in, int64_t out) { return ((o + 1) * in + out - 1) / out; }

// The two source taps of output index `dst` when resizing `in` -> `out` with align_corners=False.
struct BilinearTap {
  int64_t i0;
  int64_t i1;
  double lam;  // weight of i1; i0 gets 1 - lam
};

DELTACONV_HD BilinearTap bilinear_tap(int64_t dst, int64_t in, int64_t out) {
  double src = (static_cast<double>(dst) + 0.5) * (static_cast<double>(in) / static_cast<double>(out)) - 0.5;
  if (src < 0.0) src = 0.0;
  int64_t i0 = static_cast<int64_t>(src);  // src >= 0, so truncation is floor
  if (i0 > in - 1) i0 = in - 1;
  const int64_t i1 = i0 + 1 < in - 1 ? i0 + 1 : in - 1;
  return {i0, i1, src - static_cast<double>(i0)};
}

}  // namespace deltaconv
