// Device-side helpers shared by the .cu files: dtype conversions, strided loads, launch shapes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "deltaconv/views.h"

namespace deltaconv::cuda {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

template <typename acc_t, typename T> __device__ __forceinline__ acc_t to_acc(T v) { return static_cast<acc_t>(v); }
template <> __device__ __forceinline__ float to_acc<float, __half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T, typename acc_t> __device__ __forceinline__ T from_acc(acc_t v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// Element (b, y, x, c) of a View4 whose storage type is T.
template <typename T>
__device__ __forceinline__ T* at(const View4& v, int64_t b, int64_t y, int64_t x, int64_t c) {
  return static_cast<T*>(v.data) + b * v.sB + y * v.sH + x * v.sW + c;
}

__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid(acc_t g) {
  return acc_t(1) / (acc_t(1) + exp(-g));
}

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);  // grid-stride beyond that
}

// Calls f(T{}) with T the storage type of dt.
template <typename F>
void dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: f(float{}); break;
    case DType::f16: f(__half{}); break;
    case DType::bf16: f(__nv_bfloat16{}); break;
    case DType::f64: f(double{}); break;
  }
}

}  // namespace deltaconv::cuda
